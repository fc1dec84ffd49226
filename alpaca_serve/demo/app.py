"""The Gradio demo: chat with ratings, a blind side-by-side Compare tab, and a Leaderboard.

Usage:
    blocks = build_demo(DemoSettings(server_url="http://127.0.0.1:8000"))
    blocks.launch()                                    # or: alpaca-demo --server-url URL

`build_demo` lays the page out and wires its events to the handlers of `alpaca_serve.demo.chat`,
`alpaca_serve.demo.compare` and `alpaca_serve.demo.leaderboard`. Everything goes through the
server's HTTP API (`alpaca_serve.client.api`): `POST /generate` streamed, `POST /feedback`,
`GET /feedback/leaderboard`.
"""

import gradio as gr

from alpaca_serve.client.api import AsyncAlpacaClient
from alpaca_serve.demo.chat import FLAGS, ChatHandlers
from alpaca_serve.demo.compare import VOTES, CompareHandlers
from alpaca_serve.demo.leaderboard import EXPLANATION, TABLE_HEADERS, LeaderboardHandlers
from alpaca_serve.demo.settings import DemoSettings, load_examples
from alpaca_serve.evaluation.comparison import load_comparison

DISCLAIMER = (
    "**Before you start.** The answers come from a language model: they can be wrong, made up, "
    "biased or offensive, and must not be relied on. Your instructions, the answers and your "
    "ratings are recorded by this server to evaluate the model; no account and no network "
    "address is kept. Please do not type personal information."
)
REQUEST_TIMEOUT_S = 300.0  # a long answer on a slow machine still arrives


def build_handlers(settings: DemoSettings) -> tuple[ChatHandlers, CompareHandlers]:
    """The two tabs' handlers, with a client of each server they talk to."""
    client = _client_of(settings.server_url, settings)
    arm_clients = None  # unset arms: both sides on the demo's server, chosen per comparison
    if settings.compare_arms is not None:
        arm_clients = [
            _client_of(arm.server_url or settings.server_url, settings)
            for arm in settings.compare_arms
        ]
    comparison = load_comparison(settings.comparison_file) if settings.comparison_file else None
    return (
        ChatHandlers(client),
        CompareHandlers(client, settings.compare_arms, arm_clients, comparison),
    )


def build_demo(settings: DemoSettings) -> gr.Blocks:
    """The page: the Chat, Compare and Leaderboard tabs, wired to their handlers."""
    chat, compare = build_handlers(settings)
    leaderboard = LeaderboardHandlers(_client_of(settings.server_url, settings))
    examples = load_examples(settings.example_source(), settings.max_examples)

    with gr.Blocks(title="Alpaca demo") as blocks:
        gr.Markdown("# Alpaca: instruction following")
        gr.Markdown(DISCLAIMER, elem_id="disclaimer")
        with gr.Tab("Chat", elem_id="chat-tab"):
            # Filled when the page loads: the base and every LoRA adapter the server serves.
            model = gr.Dropdown(label="Model", elem_id="model", choices=[], allow_custom_value=True)
            chatbot = gr.Chatbot(
                label="Conversation",
                elem_id="chatbot",
                height=420,
                feedback_options=("Like", "Dislike"),
            )
            ids = gr.State({})  # message index -> generation id
            instruction = gr.Textbox(
                label="Instruction",
                elem_id="instruction",
                lines=2,
                placeholder="Tell the model what to do",
            )
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
                flag_choice = gr.Radio(
                    list(FLAGS), label="Flag the last answer as", elem_id="flag-choice"
                )
                flag = gr.Button("Flag", elem_id="flag")
            status = gr.Markdown(elem_id="feedback-status")
            if examples:
                gr.Examples(
                    examples,
                    inputs=[instruction, input_box],
                    label="Examples from the Alpaca evaluation set",
                )
            inputs = [
                *(instruction, input_box, temperature, top_p, max_new_tokens),
                *(chatbot, ids, model),
            ]
            outputs = [chatbot, ids, instruction]
            sent = send.click(chat.respond, inputs, outputs)
            submitted = instruction.submit(chat.respond, inputs, outputs)
            stop.click(None, None, None, cancels=[sent, submitted])
            clear.click(lambda: ([], {}, ""), None, [chatbot, ids, status])
            chatbot.like(chat.on_like, [ids], [status])
            flag.click(chat.on_flag, [flag_choice, ids], [status])
            blocks.load(chat.model_choices, None, [model])
        with gr.Tab("Compare", elem_id="compare-tab"):
            gr.Markdown(
                "One instruction, two answers from different models or settings, shown "
                "as A and B in random order. Vote, then see which was which."
            )
            compare_instruction = gr.Textbox(label="Instruction", elem_id="compare-instruction")
            go = gr.Button("Get two answers", variant="primary", elem_id="compare-go")
            if compare.comparison:
                next_button = gr.Button("Next pair from the evaluation set", elem_id="compare-next")
            with gr.Row():
                answer_a = gr.Textbox(label="A", elem_id="answer-a", lines=8, interactive=False)
                answer_b = gr.Textbox(label="B", elem_id="answer-b", lines=8, interactive=False)
            with gr.Row():
                votes = [
                    gr.Button(label, interactive=False, elem_id=f"vote-{key}")
                    for key, label in VOTES.items()
                ]
            reveal = gr.Markdown(elem_id="compare-reveal")
            compare_state = gr.State({})
            go.click(
                compare.compare,
                [compare_instruction],
                [answer_a, answer_b, *votes, reveal, compare_state],
            )
            if compare.comparison:
                next_button.click(
                    compare.next_pair,
                    None,
                    [compare_instruction, answer_a, answer_b, *votes, reveal, compare_state],
                )
            for key, button in zip(VOTES, votes, strict=True):
                button.click(compare.vote_on(key), [compare_state], [*votes, reveal, compare_state])
        with gr.Tab("Leaderboard", elem_id="leaderboard-tab"):
            gr.Markdown(EXPLANATION)
            board = gr.Dataframe(
                headers=TABLE_HEADERS,
                datatype=["number", "str", "number", "str", "number"],
                interactive=False,
                elem_id="leaderboard-table",
            )
            board_status = gr.Markdown(elem_id="leaderboard-status")
            refresh = gr.Button("Refresh", elem_id="leaderboard-refresh")
            refresh.click(leaderboard.refresh, None, [board, board_status])
            blocks.load(leaderboard.refresh, None, [board, board_status])
    # A bounded queue: past max_queue waiting events, Gradio answers "queue full" at once.
    blocks.queue(max_size=settings.max_queue)
    return blocks


def _client_of(server_url: str, settings: DemoSettings) -> AsyncAlpacaClient:
    return AsyncAlpacaClient(server_url, settings.api_key, timeout_s=REQUEST_TIMEOUT_S)
