"""Blind pairwise comparisons of two answer files, and the votes cast on them.

Usage:
    comparison = build_comparison(load_answers(a), load_answers(b), "ours", "davinci", seed=7)
    save_comparison(Path("comparison.json"), comparison)
    comparison = load_comparison(Path("comparison.json"))
    record_vote(Path("votes.jsonl"), Vote("pair-000", "left", "human", "alice"))
    send_pairwise("http://127.0.0.1:8000", pair, "left", session_id="alice")  # both sides served
    votes, skipped = judge_comparison(comparison, "http://127.0.0.1:8001", model="judge")

A comparison file is `{"labels": [label_a, label_b], "seed", "pairs": [{"pair_id", "instruction",
"input", "motivation_app", "left": {"output", "generation_id"}, "right": {...}, "left_is":
"a"|"b"}], "unmatched": {"a", "b"}}`: the pairs are shuffled and each one's sides are put left
or right at random, both from `seed`, so the order is reproducible. Whoever shows a pair to a
voter shows `left` and `right` only; `left_is` says afterwards which file each side came from.

A votes file is JSON lines `{"pair_id", "winner": "left"|"right"|"tie"|"both_bad",
"voter": "human"|"machine", "session_id", "time"}`. A session voting again on the same pair
replaces its earlier vote, as the server's feedback store does.
"""

from __future__ import annotations

import json
import random
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from evaluation.answers import EvaluationError

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
    session_id: str = "cli"
    time: float | None = None  # unix seconds

    def __post_init__(self) -> None:
        if self.winner not in WINNERS:
            raise EvaluationError(f"winner must be one of {', '.join(WINNERS)}, "
                                  f"got {self.winner!r}")
        if self.voter not in VOTERS:
            raise EvaluationError(f"voter must be human or machine, got {self.voter!r}")


def match_key(instruction: str, input_text: str) -> tuple[str, str]:
    """What makes two answers answers to the same question: the instruction and input text,
    with white space runs collapsed (the davinci file's spacing differs from the eval set's)."""
    return (" ".join(instruction.split()), " ".join((input_text or "").split()))


def build_comparison(
    answers_a: list[dict[str, Any]],
    answers_b: list[dict[str, Any]],
    label_a: str,
    label_b: str,
    seed: int,
) -> dict[str, Any]:
    """Pair the answers of A and B to the same instruction (+ input), in a shuffled order with
    sides placed at random; answers with no partner are counted under `unmatched`."""
    by_key_b: dict[tuple[str, str], dict[str, Any]] = {}
    for answer in answers_b:
        by_key_b.setdefault(match_key(answer["instruction"], answer["input"]), answer)
    matched: list[tuple[dict[str, Any], dict[str, Any]]] = []
    seen: set[tuple[str, str]] = set()
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
        pairs.append({
            "pair_id": f"pair-{number:03d}",
            "instruction": a["instruction"],
            "input": a["input"],
            "motivation_app": a.get("motivation_app") or b.get("motivation_app"),
            "left": _side(left),
            "right": _side(right),
            "left_is": left_is,
        })
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
    if (not isinstance(comparison, dict) or not isinstance(comparison.get("pairs"), list)
            or len(comparison.get("labels", [])) != 2):
        raise EvaluationError(f"{path} is not a comparison file (made by `alpaca-eval compare`)")
    return comparison


def find_pair(comparison: dict[str, Any], pair_id: str) -> dict[str, Any]:
    for pair in comparison["pairs"]:
        if pair["pair_id"] == pair_id:
            return pair
    raise EvaluationError(f"no pair {pair_id!r} in the comparison "
                          f"({len(comparison['pairs'])} pairs)")


def record_vote(path: Path, vote: Vote) -> None:
    """Append `vote` to the votes file, creating it if needed."""
    if vote.time is None:
        vote.time = time.time()
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as out:
        out.write(json.dumps(asdict(vote), ensure_ascii=False) + "\n")


def load_votes(path: Path) -> list[Vote]:
    """The votes in `path`, latest per (pair, session, voter) only; a missing file has none."""
    if not path.exists():
        return []
    latest: dict[tuple[str, str, str], Vote] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            vote = Vote(record["pair_id"], record["winner"], record.get("voter", "human"),
                        record.get("session_id") or "cli", record.get("time"))
        except (json.JSONDecodeError, KeyError, TypeError, EvaluationError) as err:
            raise EvaluationError(f"{path}, line {number}: not a vote ({err})") from err
        latest[(vote.pair_id, vote.session_id, vote.voter)] = vote
    return list(latest.values())


def send_pairwise(server_url: str, pair: dict[str, Any], winner: str, session_id: str,
                  api_key: str | None = None) -> bool:
    """POST the vote to the server's pairwise feedback when both sides carry a generation id;
    returns whether it was sent. Raises EvaluationError if the server refuses it."""
    import httpx

    ids = [pair["left"].get("generation_id"), pair["right"].get("generation_id")]
    if None in ids:
        return False
    server_winner = {"left": ids[0], "right": ids[1]}.get(winner, winner)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    body = {"generation_ids": ids, "winner": server_winner, "session_id": session_id}
    try:
        response = httpx.post(server_url.rstrip("/") + "/feedback", json=body, headers=headers,
                              timeout=30, trust_env=False)
    except httpx.TransportError as err:
        raise EvaluationError(f"cannot reach {server_url} ({type(err).__name__})") from err
    if response.status_code not in (200, 201):
        raise EvaluationError(f"the server refused the vote ({response.status_code}: "
                              f"{response.text[:200]})")
    return True


def judge_comparison(
    comparison: dict[str, Any],
    judge_url: str,
    *,
    model: str | None = None,
    api_key: str | None = None,
    max_tokens: int = 8,
    progress: bool = True,
) -> tuple[list[Vote], list[str]]:
    """Ask an OpenAI-compatible chat endpoint which side of each pair is better. Returns the
    machine votes and the ids of pairs whose reply could not be read as A, B or tie."""
    import httpx
    from tqdm import tqdm

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    base = judge_url.rstrip("/")
    if not base.endswith("/v1"):
        base += "/v1"
    votes: list[Vote] = []
    unreadable: list[str] = []
    with httpx.Client(base_url=base, headers=headers, timeout=300, trust_env=False) as client:
        model = model or _first_model(client)
        session_id = f"judge-{model}"
        for pair in tqdm(comparison["pairs"], desc="judging", unit="pair", disable=not progress):
            prompt = JUDGE_PROMPT.format(
                instruction=pair["instruction"],
                input_section=f"\n### Input:\n{pair['input']}\n" if pair["input"] else "",
                left=pair["left"]["output"],
                right=pair["right"]["output"],
            )
            body = {"model": model, "messages": [{"role": "user", "content": prompt}],
                    "temperature": 0, "max_tokens": max_tokens}
            try:
                response = client.post("/chat/completions", json=body)
            except httpx.TransportError as err:
                raise EvaluationError(f"cannot reach the judge at {judge_url} "
                                      f"({type(err).__name__})") from err
            if response.status_code != 200:
                raise EvaluationError(f"the judge answered {response.status_code}: "
                                      f"{response.text[:200]}")
            winner = parse_judgement(response.json()["choices"][0]["message"]["content"] or "")
            if winner is None:
                unreadable.append(pair["pair_id"])
                continue
            votes.append(Vote(pair["pair_id"], winner, "machine", session_id, time.time()))
    return votes, unreadable


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


def _first_model(client) -> str:
    response = client.get("/models")
    if response.status_code != 200 or not response.json().get("data"):
        raise EvaluationError("the judge lists no models at /v1/models; pass --judge-model")
    return response.json()["data"][0]["id"]


def _side(answer: dict[str, Any]) -> dict[str, Any]:
    return {"output": answer["output"], "generation_id": answer.get("generation_id")}
