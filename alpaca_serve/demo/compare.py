"""What the demo's Compare tab does: two answers shown blind as A and B, a vote, the reveal.

Usage:
    handlers = CompareHandlers(client, arms=settings.compare_arms,
                               arm_clients=[AsyncAlpacaClient(url_a), AsyncAlpacaClient(url_b)],
                               comparison=load_comparison(path))   # or comparison=None
    handlers = CompareHandlers(client)   # arms unset: the pair is chosen as each comparison starts
    async for answer_a, answer_b, *votes, message, state in handlers.compare("Write a poem.",
                                                                            request): ...
    answer_a, answer_b, ... = handlers.next_pair()       # a pair of the comparison file
    *votes, message, state = await handlers.vote("a", state, request)

Every handler returns (or yields) the new values of its outputs: the two answers, one update per
vote button (VOTES, in order), the message under them and the tab's state. The state says what a
vote is about: `{"ids": [id_a, id_b], "labels": [label_a, label_b]}` after `compare`,
`{"pair": pair}` after `next_pair`, `{}` when there is nothing to vote on.

Without configured arms, each comparison asks the demo's server what it serves (`GET /info`) as it
starts and pits the base against the newest LoRA adapter
(`alpaca_serve.demo.settings.default_arms`), so an
adapter copied in while the demo runs is compared from the next comparison on; with no adapter,
greedy decoding against sampling of the base.
"""

# No `from __future__ import annotations`: Gradio reads the `gr.Request` hints at run time.

import asyncio
import random
from collections.abc import AsyncIterator
from typing import Any

import gradio as gr

from alpaca_serve.client.api import AsyncAlpacaClient
from alpaca_serve.client.errors import APIRequestError
from alpaca_serve.demo.chat import sentence, session_of, visitor_of
from alpaca_serve.demo.settings import DEFAULT_ARMS, CompareArm, default_arms
from alpaca_serve.evaluation.comparison import pairwise_feedback

VOTES = {"a": "A is better", "b": "B is better", "tie": "Tie", "both_bad": "Both are bad"}
ASK_FOR_VOTE = "Which answer is better? Vote to see where each came from."
GENERATING = "Generating both answers…"


def _votes(interactive: bool | None) -> list[dict[str, Any]]:
    """One update per vote button: enabled, disabled, or (None) left as it is."""
    update = gr.update() if interactive is None else gr.update(interactive=interactive)
    return [update] * len(VOTES)


class CompareHandlers:
    """The Compare tab's event handlers."""

    def __init__(
        self,
        client: AsyncAlpacaClient,
        arms: list[CompareArm] | None = None,
        arm_clients: list[AsyncAlpacaClient] | None = None,
        comparison: dict[str, Any] | None = None,
        rng: random.Random | None = None,
    ):
        self.client = client  # the demo's own server: votes on the comparison file's pairs
        self.arms = arms  # None: chosen for what the demo's server serves (arms_now)
        # One per arm, in the same order; without configured arms both are the demo's server.
        self.arm_clients = arm_clients if arm_clients is not None else [client, client]
        self.comparison = comparison
        self.rng = rng or random.Random()

    async def compare(self, instruction: str, request: gr.Request) -> AsyncIterator[tuple]:
        """Ask both arms for an answer at once, in a random order as A and B; yields the tab as
        the answers grow, and enables the votes once both are complete."""
        if not instruction or not instruction.strip():
            yield "", "", *_votes(False), "Type an instruction first.", {}
            return
        both = await self.arms_now()
        order = self.rng.sample(range(2), 2)  # which arm is shown as A, which as B
        arms = [both[i] for i in order]
        clients = [self.arm_clients[i] for i in order]
        texts, ids, failed = ["", ""], [None, None], [False, False]
        queue: asyncio.Queue = asyncio.Queue()
        tasks = [
            asyncio.create_task(
                _stream_into(
                    queue, slot, clients[slot], arms[slot], instruction, session_of(request)
                )
            )
            for slot in range(2)
        ]
        try:
            yield "", "", *_votes(False), GENERATING, {}
            finished = 0
            while finished < 2:
                slot, item = await queue.get()
                if item is None:
                    finished += 1
                    continue
                if isinstance(item, APIRequestError):
                    texts[slot], failed[slot] = f"⚠️ {sentence(item)}", True
                else:
                    ids[slot] = item["id"]
                    texts[slot] += item.get("text", "")
                yield texts[0], texts[1], *_votes(False), GENERATING, {}
        finally:
            for task in tasks:
                task.cancel()
        if any(failed) or None in ids:
            message = "One answer failed, so there is nothing to vote on."
            yield texts[0], texts[1], *_votes(False), message, {}
            return
        state = {"ids": ids, "labels": [arm.label for arm in arms]}
        yield texts[0], texts[1], *_votes(True), ASK_FOR_VOTE, state

    async def arms_now(self) -> list[CompareArm]:
        """The two arms of a comparison starting now: the configured ones, else the base against
        the newest adapter the demo's server serves (greedy against sampling of the base when it
        serves none, or cannot say: the answers then show what is wrong)."""
        if self.arms is not None:
            return self.arms
        try:
            info = await self.client.info()
        except APIRequestError:
            return list(DEFAULT_ARMS)
        return default_arms(info)

    def next_pair(self) -> tuple:
        """A random pair of the comparison file, shown as A (left) and B (right); the instruction
        box shows its instruction."""
        assert self.comparison is not None  # only wired up when there is a comparison file
        pair = self.rng.choice(self.comparison["pairs"])
        instruction = pair["instruction"] + (f"\n\n{pair['input']}" if pair["input"] else "")
        return (
            instruction,
            pair["left"]["output"],
            pair["right"]["output"],
            *_votes(True),
            ASK_FOR_VOTE,
            {"pair": pair},
        )

    async def vote(self, choice: str, state: dict[str, Any] | None, request: gr.Request) -> tuple:
        """Store the vote `choice` (a key of VOTES) on what `state` shows, then reveal which
        side was which; the vote buttons, the message and the new state."""
        if not state:
            return *_votes(None), "Get two answers first.", state
        if "pair" in state:
            pair = state["pair"]
            assert self.comparison is not None  # a "pair" state comes from next_pair
            ids, winner = pairwise_feedback(pair, {"a": "left", "b": "right"}.get(choice, choice))
            client = self.client  # the comparison was built against the demo's own server
            labels = self.comparison["labels"]
            labels = labels if pair["left_is"] == "a" else labels[::-1]
        else:
            ids = state["ids"]
            winner = {"a": ids[0], "b": ids[1]}.get(choice, choice)
            client = self.arm_clients[0]  # both arms' answers are in its store
            labels = state["labels"]
        try:
            await client.send_comparison(
                ids, winner, session_of(request), visitor=visitor_of(request)
            )
        except APIRequestError as err:
            # The state stays, so the same vote can be sent again.
            return *_votes(None), f"⚠️ Your vote was not saved: {sentence(err)}", state
        reveal = f"Vote saved ({VOTES[choice]}). **A** was {labels[0]}; **B** was {labels[1]}."
        return *_votes(False), reveal, {}

    def vote_on(self, choice: str):
        """The click handler of the vote button for `choice`."""

        async def vote(state: dict[str, Any] | None, request: gr.Request) -> tuple:
            return await self.vote(choice, state, request)

        return vote


async def _stream_into(
    queue: asyncio.Queue,
    slot: int,
    client: AsyncAlpacaClient,
    arm: CompareArm,
    instruction: str,
    session_id: str,
) -> None:
    """Put `(slot, event)` for each event of the arm's answer (asked under the tab's feedback
    session), `(slot, error)` if it fails, and `(slot, None)` at the end."""
    try:
        async for event in client.stream_generate(
            instruction,
            temperature=arm.temperature,
            top_p=arm.top_p,
            max_new_tokens=arm.max_new_tokens,
            model=arm.model,
            session_id=session_id,
        ):
            await queue.put((slot, event))
    except APIRequestError as err:
        await queue.put((slot, err))
    finally:
        await queue.put((slot, None))
