"""Blind pairwise comparisons of two answer files, and the votes cast on them.

Usage:
    comparison = build_comparison(load_answers(a), load_answers(b), "ours", "davinci", seed=7)
    with AlpacaClient("http://127.0.0.1:8000") as store:  # alpaca_serve.client.api: the server's
    API
        attach_generation_ids(comparison, store)  # imports the answers the server did not give
        save_comparison(Path("comparison.json"), comparison)
        pair = find_pair(comparison, "pair-000")
        cast_vote(store, pair, Vote("pair-000", "left", "human", "alice"))
        votes = votes_in_store(store, comparison)
        left_out, sessions = excluded_in_store(store)  # excluded sessions' votes, not listed
    judged = judge_comparison(comparison, "http://127.0.0.1:8001", "http://127.0.0.1:8000")

A comparison file is `{"labels": [label_a, label_b], "seed", "server_url", "pairs": [{"pair_id",
"instruction", "input", "motivation_app", "left": {"output", "generation_id"}, "right": {...},
"left_is": "a"|"b"}], "unmatched": {"a", "b"}}`: the pairs are shuffled and each one's sides are
put left or right at random, both from `seed`, so the order is reproducible. Whoever shows a pair
to a voter shows `left` and `right` only; `left_is` says afterwards which file each side came
from.

Votes live in the server's feedback store, as pairwise feedback on the generation ids of the two
sides, written and read through `alpaca_serve.client.api.AlpacaClient`. Answers the server did not
give itself (another model's file) are imported into the store first, so every side has an id
there. A session voting again on a pair replaces its earlier vote. The store leaves the votes of
excluded sessions out of what it lists (`excluded_in_store` says how many there are).

The automatic judge (`judge_comparison`) asks several pairs at once, sends each pair's vote to the
store as soon as it is decided, and skips the pairs its session has already voted on, so a run
that stops half-way (an error, a restart) loses nothing and a rerun judges only the rest. A busy
(429) or unavailable (503) judge or store is asked again, up to `attempts` times per request,
after the wait its Retry-After asks for.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alpaca_serve.client.api import RETRY_STATUSES, AsyncAlpacaClient, Retries
from alpaca_serve.client.errors import APIRequestError
from alpaca_serve.evaluation.answers import MAX_ATTEMPTS, EvaluationError, join_instruction

if TYPE_CHECKING:
    from alpaca_serve.client.api import AlpacaClient, AsyncAlpacaClient
    from alpaca_serve.client.errors import APIRequestError

WINNERS = ("left", "right", "tie", "both_bad")
VOTERS = ("human", "machine")

JUDGE_PROMPT = """\
You are judging two answers to the same instruction. Decide which answer follows the \
instruction better: helpful, correct, complete and to the point.

### Instruction:
{instruction}
{input_section}
### Answer A:
{left}

### Answer B:
{right}

Reply with exactly one word: A if answer A is better, B if answer B is better, or tie if \
they are equally good or equally bad."""


@dataclass
class Vote:
    """One judgement of one pair."""

    pair_id: str
    winner: str  # left, right, tie or both_bad
    voter: str = "human"  # human, or machine for an automatic judge
    session_id: str = "cli"  # a later vote of the same session on the same pair replaces it

    def __post_init__(self) -> None:
        if self.winner not in WINNERS:
            raise EvaluationError(
                f"winner must be one of {', '.join(WINNERS)}, got {self.winner!r}"
            )
        if self.voter not in VOTERS:
            raise EvaluationError(f"voter must be human or machine, got {self.voter!r}")


def match_key(instruction: str, input_text: str) -> str:
    """What makes two answers answers to the same question: the instruction and input as one
    text (`join_instruction`, so an AlpacaEval file's joined instruction meets the same
    instruction and input of an answer file), with white space runs collapsed (the davinci
    file's spacing differs from the eval set's)."""
    return " ".join(join_instruction(instruction, input_text or "").split())


def build_comparison(
    answers_a: list[dict[str, Any]],
    answers_b: list[dict[str, Any]],
    label_a: str,
    label_b: str,
    seed: int,
) -> dict[str, Any]:
    """Pair the answers of A and B to the same instruction (+ input, `match_key`), in a
    shuffled order with sides placed at random; answers with no partner are counted under
    `unmatched`."""
    by_key_b: dict[str, dict[str, Any]] = {}
    for answer in answers_b:
        by_key_b.setdefault(match_key(answer["instruction"], answer["input"]), answer)
    matched: list[tuple[dict[str, Any], dict[str, Any]]] = []
    seen: set[str] = set()
    for answer in answers_a:
        key = match_key(answer["instruction"], answer["input"])
        if key in by_key_b and key not in seen:
            seen.add(key)
            matched.append((answer, by_key_b[key]))
    rng = random.Random(seed)
    rng.shuffle(matched)
    pairs = []
    for number, (a, b) in enumerate(matched):
        left_is = rng.choice(("a", "b"))
        left, right = (a, b) if left_is == "a" else (b, a)
        pairs.append(
            {
                "pair_id": f"pair-{number:03d}",
                "instruction": a["instruction"],
                "input": a["input"],
                "motivation_app": a.get("motivation_app") or b.get("motivation_app"),
                "left": _side(left),
                "right": _side(right),
                "left_is": left_is,
            }
        )
    return {
        "labels": [label_a, label_b],
        "seed": seed,
        "pairs": pairs,
        "unmatched": {"a": len(answers_a) - len(matched), "b": len(answers_b) - len(matched)},
    }


def save_comparison(path: Path, comparison: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(comparison, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")


def load_comparison(path: Path) -> dict[str, Any]:
    """A comparison file written by `save_comparison`, checked enough to report on."""
    try:
        comparison = json.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise EvaluationError(f"cannot read {path}: {err.strerror or err}") from err
    except json.JSONDecodeError as err:
        raise EvaluationError(f"{path} is not valid JSON: {err}") from err
    if (
        not isinstance(comparison, dict)
        or not isinstance(comparison.get("pairs"), list)
        or len(comparison.get("labels", [])) != 2
    ):
        raise EvaluationError(f"{path} is not a comparison file (made by `alpaca-eval compare`)")
    return comparison


def find_pair(comparison: dict[str, Any], pair_id: str) -> dict[str, Any]:
    for pair in comparison["pairs"]:
        if pair["pair_id"] == pair_id:
            return pair
    raise EvaluationError(
        f"no pair {pair_id!r} in the comparison ({len(comparison['pairs'])} pairs)"
    )


def attach_generation_ids(comparison: dict[str, Any], store: AlpacaClient) -> int:
    """Import into the store every side of `comparison` that has no generation id yet (answers
    from another model's file), under its side's label; returns how many were imported."""
    imported = 0
    for origin, label in zip(("a", "b"), comparison["labels"], strict=True):
        sides = [(pair, _side_of(pair, origin)) for pair in comparison["pairs"]]
        missing = [(pair, side) for pair, side in sides if side.get("generation_id") is None]
        if not missing:
            continue
        ids = store.import_generations(
            label,
            [
                {
                    "instruction": pair["instruction"],
                    "input": pair["input"],
                    "output": side["output"],
                }
                for pair, side in missing
            ],
        )
        for (_, side), generation_id in zip(missing, ids, strict=True):
            side["generation_id"] = generation_id
        imported += len(missing)
    comparison["server_url"] = store.server_url
    return imported


def pairwise_feedback(pair: dict[str, Any], winner: str) -> tuple[list[str], str]:
    """The generation ids of `pair` (left, right) and the server's name for `winner` (left or
    right become that side's id; tie and both_bad stay), as `POST /feedback` takes them."""
    ids = [pair["left"].get("generation_id"), pair["right"].get("generation_id")]
    if None in ids:
        raise EvaluationError(
            f"{pair['pair_id']} has an answer without a generation id: build the comparison "
            "against a server (`alpaca-eval compare --server-url`)"
        )
    return ids, {"left": ids[0], "right": ids[1]}.get(winner, winner)


def cast_vote(store: AlpacaClient, pair: dict[str, Any], vote: Vote) -> bool:
    """Send `vote` on `pair` to the store as pairwise feedback; True when it is a new vote,
    False when it replaced the session's earlier one."""
    ids, winner = pairwise_feedback(pair, vote.winner)
    return bool(store.send_comparison(ids, winner, vote.session_id, vote.voter)["created"])


def votes_in_store(store: AlpacaClient, comparison: dict[str, Any]) -> list[Vote]:
    """The store's votes on the pairs of `comparison` (one per session and pair), as left /
    right / tie / both_bad; votes on other generations are left out."""
    pairs = _pairs_by_generation_ids(comparison)
    votes = []
    for row in store.comparisons():
        pair = pairs.get(tuple(row["generation_ids"]))
        if pair is None:
            continue
        winner = {
            pair["left"]["generation_id"]: "left",
            pair["right"]["generation_id"]: "right",
        }.get(row["winner"], row["winner"])
        votes.append(
            Vote(
                pair["pair_id"], winner, row["voter"], row["session_id"] or f"anonymous-{row['id']}"
            )
        )
    return votes


def excluded_in_store(store: AlpacaClient) -> tuple[int, int]:
    """(votes, sessions): how many votes the store leaves out of every listing because their
    session is excluded, on any pair, and how many sessions are excluded; (0, 0) from a server
    older than exclusion."""
    page = store.comparisons_page(limit=1)
    return page.get("excluded_votes", 0), page.get("excluded_sessions", 0)


@dataclass
class Judgement:
    """What an automatic judge made of a comparison in one run."""

    model: str  # the judge's model; its votes are session `judge-MODEL`
    votes: list[Vote]  # cast in this run, each sent to the store as soon as it was decided
    unreadable: list[str]  # pairs whose reply was not A, B or tie (no vote: a rerun asks again)
    inconsistent: list[str]  # pairs judged differently once the sides were swapped (now ties)
    skipped: list[str]  # pairs this judge had voted on already, not asked again


def judge_comparison(
    comparison: dict[str, Any],
    judge_url: str,
    store_url: str,
    *,
    model: str | None = None,
    api_key: str | None = None,
    store_api_key: str | None = None,
    both_orders: bool = True,
    max_tokens: int = 8,
    concurrency: int = 4,
    attempts: int = MAX_ATTEMPTS,
    rejudge: bool = False,
    progress: bool = True,
) -> Judgement:
    """Ask an OpenAI-compatible chat endpoint which side of each pair is better, `concurrency`
    pairs at a time, and send each verdict at once to the feedback store at `store_url` as a
    machine vote of session `judge-MODEL`. Pairs that session has voted on are skipped unless
    `rejudge`. Requests answered 429 or 503 are asked again, `attempts` times in all.

    With `both_orders` each pair is asked twice, the second time with the answers swapped, since
    judges favour one position: a side wins only if it wins both times, and a pair judged
    differently in the two orders counts as a tie.

    A request that still fails stops the run: pairs in progress finish and cast their votes,
    no new pair starts, and EvaluationError says what failed and how many votes were kept."""
    if concurrency < 1:
        raise EvaluationError(f"--concurrency must be at least 1, got {concurrency}")
    if attempts < 1:
        raise EvaluationError(f"--attempts must be at least 1, got {attempts}")
    for pair in comparison["pairs"]:
        pairwise_feedback(pair, "tie")  # every side has a generation id, before any question
    return asyncio.run(
        _judge_all(
            comparison,
            judge_url,
            store_url,
            model=model,
            api_key=api_key,
            store_api_key=store_api_key,
            both_orders=both_orders,
            max_tokens=max_tokens,
            concurrency=concurrency,
            attempts=attempts,
            rejudge=rejudge,
            progress=progress,
        )
    )


async def _judge_all(
    comparison: dict[str, Any],
    judge_url: str,
    store_url: str,
    *,
    model: str | None,
    api_key: str | None,
    store_api_key: str | None,
    both_orders: bool,
    max_tokens: int,
    concurrency: int,
    attempts: int,
    rejudge: bool,
    progress: bool,
) -> Judgement:
    from tqdm import tqdm  # type: ignore[import-untyped]  # no types-tqdm installed

    retries = Retries(attempts=attempts)
    async with (
        AsyncAlpacaClient(_api_root(judge_url), api_key, timeout_s=300, retries=retries) as judge,
        AsyncAlpacaClient(store_url, store_api_key, timeout_s=60, retries=retries) as store,
    ):
        try:
            # The store first: reachable, key accepted, and what is judged already.
            await store.comparisons_page(limit=1)
            model = model or await _first_model(judge)
            session = f"judge-{model}"
            done = set() if rejudge else await _judged_pairs(store, comparison, session)
        except APIRequestError as err:
            raise EvaluationError(_failure(err, attempts)) from err
        judgement = Judgement(model, [], [], [], [])
        judgement.skipped = [p["pair_id"] for p in comparison["pairs"] if p["pair_id"] in done]
        todo = [pair for pair in comparison["pairs"] if pair["pair_id"] not in done]
        slots = asyncio.Semaphore(concurrency)
        failures: list[tuple[str, APIRequestError]] = []
        bar = tqdm(total=len(todo), desc="judging", unit="pair", disable=not progress)

        async def judge_pair(pair: dict[str, Any]) -> None:
            async with slots:
                if failures:
                    return  # the run is stopping: start nothing new
                try:
                    winner = await _verdict(judge, model, pair, both_orders, max_tokens, judgement)
                    if winner is not None:
                        ids, stored_winner = pairwise_feedback(pair, winner)
                        await store.send_comparison(ids, stored_winner, session, "machine")
                        judgement.votes.append(Vote(pair["pair_id"], winner, "machine", session))
                except APIRequestError as err:
                    failures.append((pair["pair_id"], err))
                bar.update(1)

        try:
            await asyncio.gather(*(judge_pair(pair) for pair in todo))
        finally:
            bar.close()
    if failures:
        pair_id, failure = failures[0]
        left = len(todo) - len(judgement.votes) - len(judgement.unreadable)
        raise EvaluationError(
            f"{pair_id}: {_failure(failure, attempts)}; {len(judgement.votes)} votes of this run "
            f"are in the store, {left} pairs are not judged: run the command again to judge them"
        )
    return judgement


async def _verdict(
    judge: AsyncAlpacaClient,
    model: str,
    pair: dict[str, Any],
    both_orders: bool,
    max_tokens: int,
    judgement: Judgement,
) -> str | None:
    """The judge's winner for `pair` (left, right or tie), or None when a reply was unreadable;
    notes unreadable and inconsistent pairs in `judgement`."""
    winner = await ask_judge(judge, model, pair, "left", "right", max_tokens)
    if winner is not None and both_orders:
        swapped = await ask_judge(judge, model, pair, "right", "left", max_tokens)
        if swapped is None:
            winner = None
        elif swapped != winner:
            judgement.inconsistent.append(pair["pair_id"])
            winner = "tie"
    if winner is None:
        judgement.unreadable.append(pair["pair_id"])
    return winner


async def _judged_pairs(
    store: AsyncAlpacaClient, comparison: dict[str, Any], session: str
) -> set[str]:
    """The ids of the pairs of `comparison` that `session` has a machine vote on in the store."""
    pairs = _pairs_by_generation_ids(comparison)
    judged = set()
    async for row in store.comparisons():
        pair = pairs.get(tuple(row["generation_ids"]))
        if pair is not None and row["voter"] == "machine" and row["session_id"] == session:
            judged.add(pair["pair_id"])
    return judged


def _failure(err: APIRequestError, attempts: int) -> str:
    """A failed request, in words; a busy or unavailable server says that it was asked again."""
    if err.status in RETRY_STATUSES:
        return (
            f"the server at {err.server_url} still answered {err.status} to {err.request} "
            f"after {attempts} attempts ({err.message})"
        )
    return str(err)


async def ask_judge(
    judge: AsyncAlpacaClient,
    model: str,
    pair: dict[str, Any],
    first: str,
    second: str,
    max_tokens: int = 8,
) -> str | None:
    """Which side of `pair` the judge prefers when shown side `first` as A and `second` as B:
    "left", "right", "tie", or None when its reply says none of them."""
    prompt = JUDGE_PROMPT.format(
        instruction=pair["instruction"],
        input_section=f"\n### Input:\n{pair['input']}\n" if pair["input"] else "",
        left=pair[first]["output"],
        right=pair[second]["output"],
    )
    reply = await judge.chat_completion(
        [{"role": "user", "content": prompt}], model, temperature=0, max_tokens=max_tokens
    )
    verdict = parse_judgement(reply["choices"][0]["message"]["content"] or "")
    # The verdict is about the order shown; turn it into left / right of the pair.
    sides: dict[str | None, str | None] = {"left": first, "right": second}
    return sides.get(verdict, verdict)


def parse_judgement(reply: str) -> str | None:
    """`left` for A, `right` for B, `tie`, or None when the reply says none of them."""
    word = reply.strip().strip(".*:\"'` ").lower()
    if word in ("a", "answer a"):
        return "left"
    if word in ("b", "answer b"):
        return "right"
    if word.startswith("tie"):
        return "tie"
    found = re.search(r"\b(?:answer\s+)?(A|B)\b(?:\s+is\s+better)?|\btie\b", reply)
    if found is None:
        return None
    if found.group(1) is None:
        return "tie"
    return "left" if found.group(1) == "A" else "right"


def _api_root(judge_url: str) -> str:
    """The server root of an OpenAI-compatible base URL given with or without `/v1`."""
    return judge_url.rstrip("/").removesuffix("/v1")


async def _first_model(judge: AsyncAlpacaClient) -> str:
    try:
        models = await judge.models()
    except APIRequestError as err:
        if err.status is None:  # not reachable: say so, not that it lists no models
            raise
        models = []
    if not models:
        raise EvaluationError("the judge lists no models at /v1/models; pass --judge-model")
    return models[0]["id"]


def _pairs_by_generation_ids(comparison: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    """The pairs of `comparison` by their two generation ids, sorted (as the store lists votes)."""
    pairs = {}
    for pair in comparison["pairs"]:
        ids = (pair["left"].get("generation_id"), pair["right"].get("generation_id"))
        if None not in ids:
            pairs[tuple(sorted(ids))] = pair
    return pairs


def _side(answer: dict[str, Any]) -> dict[str, Any]:
    return {"output": answer["output"], "generation_id": answer.get("generation_id")}


def _side_of(pair: dict[str, Any], origin: str) -> dict[str, Any]:
    """The side of `pair` that came from answer file `origin` ("a" or "b")."""
    return pair["left"] if pair["left_is"] == origin else pair["right"]
