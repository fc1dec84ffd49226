"""The Gradio demo: chat with ratings, and a blind side-by-side Compare tab.

Usage:
    blocks = build_demo(DemoSettings(server_url="http://127.0.0.1:8000"))
    blocks.launch()                                    # or: alpaca-demo --server-url URL

Everything goes through the server's HTTP API (`POST /generate` streamed, `POST /feedback`).
"""

# No `from __future__ import annotations`: Gradio reads the `gr.Request` hints at run time.

import asyncio
import json
import random
from pathlib import Path

import gradio as gr

from demo.client import DemoError, ServerClient
from demo.settings import CompareArm, DemoSettings
from evaluation.comparison import load_comparison, pairwise_feedback

DISCLAIMER = (
    "**Before you start.** The answers come from a language model: they can be wrong, made up, "
    "biased or offensive, and must not be relied on. Your instructions, the answers and your "
    "ratings are recorded by this server to evaluate the model; no account and no network "
    "address is kept. Please do not type personal information."
)

# What the user may flag an answer as, and the server's category for it.
FLAGS = {"harmful": "harmful", "false information": "incorrect", "other": "other"}
VOTES = {"a": "A is better", "b": "B is better", "tie": "Tie", "both_bad": "Both are bad"}


def load_examples(path: Path | None, limit: int) -> list[list[str]]:
    """[instruction, input] pairs from a JSON-lines file of the evaluation set's shape."""
    if path is None or limit == 0:
        return []
    examples = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        instances = record.get("instances") or [{}]
        examples.append([record["instruction"], instances[0].get("input", "")])
        if len(examples) == limit:
            break
    return examples


def _session(request: gr.Request | None) -> str:
    return f"ui-{request.session_hash}" if request is not None and request.session_hash else "ui"


def build_demo(settings: DemoSettings) -> gr.Blocks:
    client = ServerClient(settings.server_url, settings.api_key)
    arm_clients = [ServerClient(arm.server_url or settings.server_url, settings.api_key)
                   for arm in settings.compare_arms]
    examples = load_examples(settings.example_source(), settings.max_examples)
    comparison = load_comparison(settings.comparison_file) if settings.comparison_file else None

    async def respond(instruction, input_text, temperature, top_p, max_new_tokens, history, ids,
                      request: gr.Request):
        history = list(history or [])
        ids = dict(ids or {})
        if not instruction or not instruction.strip():
            yield history, ids, instruction
            return
        shown = instruction if not input_text else f"{instruction}\n\n{input_text}"
        history += [{"role": "user", "content": shown}, {"role": "assistant", "content": ""}]
        answer_index = len(history) - 1
        yield history, ids, ""
        body = {"instruction": instruction, "input": input_text or "",
                "temperature": float(temperature), "top_p": float(top_p),
                "max_new_tokens": int(max_new_tokens)}
        try:
            async for event in client.stream_generate(body):
                ids[answer_index] = event["id"]
                if event.get("text"):
                    history[answer_index]["content"] += event["text"]
                    yield history, ids, ""
                if event.get("finish_reason") == "content_filter":
                    category = event.get("filter", {}).get("category", "unknown")
                    history[answer_index]["content"] += (
                        f"\n\n*[The rest of this answer was withheld by the content filter: "
                        f"{category}.]*"
                    )
        except DemoError as err:
            history[answer_index]["content"] = f"⚠️ {err}"
        if not history[answer_index]["content"]:
            history[answer_index]["content"] = "*(the model gave an empty answer)*"
        yield history, ids, ""

    async def on_like(ids, data: gr.LikeData, request: gr.Request):
        generation_id = (ids or {}).get(data.index)
        if generation_id is None:
            return "Only answers that finished can be rated."
        rating = "up" if data.liked is True or data.liked == "Like" else "down"
        try:
            await client.send_rating(generation_id, rating, _session(request))
        except DemoError as err:
            return f"⚠️ Your rating was not saved: {err}"
        return f"Thanks: your {'like' if rating == 'up' else 'dislike'} was saved."

    async def on_flag(choice, ids, request: gr.Request):
        if not choice:
            return "Choose what is wrong with the answer first."
        if not ids:
            return "There is no answer to flag yet."
        generation_id = ids[max(ids)]
        try:
            await client.send_rating(generation_id, "down", _session(request),
                                     flag=FLAGS[choice])
        except DemoError as err:
            return f"⚠️ Your flag was not saved: {err}"
        return f"Thanks: the last answer was flagged as {choice}."

    async def compare(instruction, request: gr.Request):
        hidden = [gr.update(interactive=False)] * len(VOTES)
        if not instruction or not instruction.strip():
            yield "", "", *hidden, "Type an instruction first.", {}
            return
        order = random.sample(range(2), 2)  # which arm is shown as A, which as B
        arms: list[CompareArm] = [settings.compare_arms[i] for i in order]
        clients = [arm_clients[i] for i in order]
        texts, ids, failed = ["", ""], [None, None], [False, False]
        queue: asyncio.Queue = asyncio.Queue()

        async def run(slot: int) -> None:
            arm = arms[slot]
            body = {"instruction": instruction, "temperature": arm.temperature,
                    "top_p": arm.top_p, "max_new_tokens": arm.max_new_tokens}
            try:
                async for event in clients[slot].stream_generate(body):
                    await queue.put((slot, event))
            except DemoError as err:
                await queue.put((slot, err))
            finally:
                await queue.put((slot, None))

        tasks = [asyncio.create_task(run(slot)) for slot in range(2)]
        try:
            yield "", "", *hidden, "Generating both answers…", {}
            finished = 0
            while finished < 2:
                slot, item = await queue.get()
                if item is None:
                    finished += 1
                    continue
                if isinstance(item, DemoError):
                    texts[slot], failed[slot] = f"⚠️ {item}", True
                else:
                    ids[slot] = item["id"]
                    texts[slot] += item.get("text", "")
                yield texts[0], texts[1], *hidden, "Generating both answers…", {}
        finally:
            for task in tasks:
                task.cancel()
        if any(failed) or None in ids:
            message = "One answer failed, so there is nothing to vote on."
            yield texts[0], texts[1], *hidden, message, {}
            return
        state = {"ids": ids, "labels": [arm.label for arm in arms]}
        shown = [gr.update(interactive=True)] * len(VOTES)
        message = "Which answer is better? Vote to see where each came from."
        yield texts[0], texts[1], *shown, message, state

    def next_pair(request: gr.Request):
        """A random pair of the comparison file, shown as A (left) and B (right)."""
        pair = random.choice(comparison["pairs"])
        shown = [gr.update(interactive=True)] * len(VOTES)
        message = "Which answer is better? Vote to see where each came from."
        instruction = pair["instruction"] + (f"\n\n{pair['input']}" if pair["input"] else "")
        return (instruction, pair["left"]["output"], pair["right"]["output"], *shown, message,
                {"pair": pair})

    def make_vote(choice: str):
        async def vote(state, request: gr.Request):
            keep = [gr.update()] * len(VOTES)
            if not state:
                return *keep, "Get two answers first.", state
            if "pair" in state:
                return await vote_on_pair(state["pair"], request)
            first, second = state["ids"]
            winner = {"a": first, "b": second}.get(choice, choice)
            try:
                await arm_clients[0].send_comparison([first, second], winner, _session(request))
            except DemoError as err:
                return *keep, f"⚠️ Your vote was not saved: {err}", state
            labels = state["labels"]
            reveal = (f"Vote saved ({VOTES[choice]}). **A** was {labels[0]}; "
                      f"**B** was {labels[1]}.")
            return *[gr.update(interactive=False)] * len(VOTES), reveal, {}
        async def vote_on_pair(pair, request):
            ids, winner = pairwise_feedback(pair, {"a": "left", "b": "right"}.get(choice, choice))
            try:  # the comparison was built against the demo's own server
                await client.send_comparison(ids, winner, _session(request))
            except DemoError as err:
                return *[gr.update()] * len(VOTES), f"⚠️ Your vote was not saved: {err}", {}
            labels = comparison["labels"]
            left, right = labels if pair["left_is"] == "a" else labels[::-1]
            reveal = f"Vote saved ({VOTES[choice]}). **A** was {left}; **B** was {right}."
            return *[gr.update(interactive=False)] * len(VOTES), reveal, {}

        return vote

    with gr.Blocks(title="Alpaca demo") as blocks:
        gr.Markdown("# Alpaca: instruction following")
        gr.Markdown(DISCLAIMER, elem_id="disclaimer")
        with gr.Tab("Chat", elem_id="chat-tab"):
            chatbot = gr.Chatbot(label="Conversation", elem_id="chatbot", height=420,
                                 feedback_options=("Like", "Dislike"))
            ids = gr.State({})  # message index -> generation id
            instruction = gr.Textbox(label="Instruction", elem_id="instruction", lines=2,
                                     placeholder="Tell the model what to do")
            input_box = gr.Textbox(label="Input (optional context)", elem_id="input", lines=1)
            with gr.Row():
                send = gr.Button("Send", variant="primary", elem_id="send")
                stop = gr.Button("Stop", elem_id="stop")
                clear = gr.Button("Clear", elem_id="clear")
            with gr.Accordion("Sampling", open=False):
                temperature = gr.Slider(0, 2, value=0.1, step=0.05, label="Temperature")
                top_p = gr.Slider(0.05, 1, value=0.75, step=0.05, label="Top-p")
                max_new_tokens = gr.Slider(1, 1024, value=256, step=1, label="Max new tokens")
            with gr.Row():
                flag_choice = gr.Radio(list(FLAGS), label="Flag the last answer as",
                                       elem_id="flag-choice")
                flag = gr.Button("Flag", elem_id="flag")
            status = gr.Markdown(elem_id="feedback-status")
            if examples:
                gr.Examples(examples, inputs=[instruction, input_box],
                            label="Examples from the Alpaca evaluation set")
            inputs = [instruction, input_box, temperature, top_p, max_new_tokens, chatbot, ids]
            outputs = [chatbot, ids, instruction]
            sent = send.click(respond, inputs, outputs)
            submitted = instruction.submit(respond, inputs, outputs)
            stop.click(None, None, None, cancels=[sent, submitted])
            clear.click(lambda: ([], {}, ""), None, [chatbot, ids, status])
            chatbot.like(on_like, [ids], [status])
            flag.click(on_flag, [flag_choice, ids], [status])
        with gr.Tab("Compare", elem_id="compare-tab"):
            gr.Markdown("One instruction, two answers from different models or settings, shown "
                        "as A and B in random order. Vote, then see which was which.")
            compare_instruction = gr.Textbox(label="Instruction", elem_id="compare-instruction")
            go = gr.Button("Get two answers", variant="primary", elem_id="compare-go")
            if comparison:
                next_button = gr.Button("Next pair from the evaluation set",
                                        elem_id="compare-next")
            with gr.Row():
                answer_a = gr.Textbox(label="A", elem_id="answer-a", lines=8, interactive=False)
                answer_b = gr.Textbox(label="B", elem_id="answer-b", lines=8, interactive=False)
            with gr.Row():
                votes = [gr.Button(label, interactive=False, elem_id=f"vote-{key}")
                         for key, label in VOTES.items()]
            reveal = gr.Markdown(elem_id="compare-reveal")
            compare_state = gr.State({})
            go.click(compare, [compare_instruction],
                     [answer_a, answer_b, *votes, reveal, compare_state])
            if comparison:
                next_button.click(next_pair, None, [compare_instruction, answer_a, answer_b,
                                                    *votes, reveal, compare_state])
            for key, button in zip(VOTES, votes, strict=True):
                button.click(make_vote(key), [compare_state], [*votes, reveal, compare_state])
    return blocks
