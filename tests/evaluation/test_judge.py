"""`alpaca-eval judge` is dependable: each vote reaches the store as soon as its pair is judged, a
rerun judges only what is left, busy servers are waited out, and pairs are judged several at once.

The store is the session's server on the scripted engine; the judge is a small OpenAI-compatible
HTTP server in this process whose replies, failures and pace each test scripts."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from alpaca_serve.client.api import AlpacaClient, Retries
from alpaca_serve.evaluation.cli import main
from alpaca_serve.evaluation.comparison import (
    attach_generation_ids,
    build_comparison,
    save_comparison,
    votes_in_store,
)
from tests.fake_judge import JudgeScript, running_judge
from tests.support import start_server

JUDGE_SESSION = "judge-fake-judge"


@pytest.fixture
def judge():
    """The fake judge's URL and its script."""
    script = JudgeScript()
    with running_judge(script) as url:
        yield url, script


def make_comparison(store_url: str, folder: Path, pairs: int, api_key: str | None = None):
    """A comparison file of `pairs` instructions (new ones: the store may be shared), both sides
    imported into the store; returns its path and the instructions in pair order."""
    tag = uuid.uuid4().hex[:8]
    ours = [
        {"instruction": f"Question {i} ({tag})", "input": "", "output": f"ours {i}"}
        for i in range(pairs)
    ]
    theirs = [{**answer, "output": f"theirs {i}"} for i, answer in enumerate(ours)]
    comparison = build_comparison(ours, theirs, "ours", "theirs", seed=3)
    with AlpacaClient(store_url, api_key) as store:
        attach_generation_ids(comparison, store)
    path = folder / f"comparison-{tag}.json"
    save_comparison(path, comparison)
    return path, [pair["instruction"] for pair in comparison["pairs"]]


def machine_votes(store_url: str, path: Path, api_key: str | None = None) -> dict[str, str]:
    """This judge's votes in the store on the comparison's pairs: pair id -> winner."""
    comparison = json.loads(path.read_text())
    with AlpacaClient(store_url, api_key, retries=Retries(attempts=6)) as store:
        votes = votes_in_store(store, comparison)
    return {
        v.pair_id: v.winner for v in votes if (v.voter, v.session_id) == ("machine", JUDGE_SESSION)
    }


def alpaca_eval_judge(path: Path, judge_url: str, *options: str, capsys) -> tuple[int, str, str]:
    status = main(
        ["judge", "--comparison", str(path), "--judge-url", judge_url, "--no-progress", *options]
    )
    captured = capsys.readouterr()
    return status, captured.out.strip(), captured.err.strip()


def test_a_run_that_fails_keeps_the_votes_cast_so_far_and_a_rerun_judges_only_the_rest(
    scripted_server, judge, tmp_path, capsys
):
    judge_url, script = judge
    path, instructions = make_comparison(scripted_server.url, tmp_path, 6)
    script.respond = lambda prompt, number: 500 if instructions[3] in prompt else "A"

    status, out, err = alpaca_eval_judge(
        path, judge_url, "--one-order", "--concurrency", "1", capsys=capsys
    )

    assert status == 2 and out == ""
    [line] = err.splitlines()
    assert line.startswith("alpaca-eval judge: error: pair-003: ")
    assert line.endswith(
        "3 votes of this run are in the store, 3 pairs are not judged: run the command again "
        "to judge them"
    )
    # Each vote was sent as its pair was decided: the three before the failure are kept.
    assert machine_votes(scripted_server.url, path) == {
        "pair-000": "left",
        "pair-001": "left",
        "pair-002": "left",
    }
    script.respond = lambda prompt, number: "B"
    script.requests.clear()

    status, out, err = alpaca_eval_judge(path, judge_url, "--one-order", capsys=capsys)

    assert status == 0, err
    assert sorted(script.asked()) == sorted(instructions[3:])
    assert out == (
        f"recorded 3 machine votes in the feedback store at {scripted_server.url}; 3 pairs "
        f"judged earlier by {JUDGE_SESSION} were skipped (--rejudge asks again)"
    )
    assert machine_votes(scripted_server.url, path) == {
        **{f"pair-00{i}": "left" for i in range(3)},
        **{f"pair-00{i}": "right" for i in range(3, 6)},
    }

    # Everything judged: a third run asks nothing; --rejudge asks every pair again.
    script.requests.clear()
    assert alpaca_eval_judge(path, judge_url, "--one-order", capsys=capsys)[0] == 0
    assert script.asked() == []
    assert alpaca_eval_judge(path, judge_url, "--one-order", "--rejudge", capsys=capsys)[0] == 0
    assert sorted(script.asked()) == sorted(instructions)
    assert set(machine_votes(scripted_server.url, path).values()) == {"right"}


def test_a_busy_judge_is_asked_again_after_the_wait_its_retry_after_asks_for(
    scripted_server, judge, tmp_path, capsys
):
    judge_url, script = judge
    path, instructions = make_comparison(scripted_server.url, tmp_path, 3)
    script.retry_after = "2"  # more than the client's own first back-off of 1 s
    # The first two requests, asked at once, are refused: one busy (429), one unavailable (503).
    script.gather = 2
    script.respond = lambda prompt, number: {0: 429, 1: 503}.get(number, "A")

    status, out, err = alpaca_eval_judge(path, judge_url, "--concurrency", "2", capsys=capsys)

    assert status == 0, err
    assert out.startswith("recorded 3 machine votes")
    refusals = [r for r in script.requests if r[2] != 200]
    assert sorted(status for _, _, status in refusals) == [429, 503]
    for refused_at, refused, _ in refusals:
        retried_at = min(
            t for t, instruction, s in script.requests if instruction == refused and s == 200
        )
        assert retried_at - refused_at >= 1.9
    assert len(machine_votes(scripted_server.url, path)) == 3


def test_a_judge_that_stays_busy_is_given_up_after_the_attempts_in_one_line(
    scripted_server, judge, tmp_path, capsys
):
    judge_url, script = judge
    path, _ = make_comparison(scripted_server.url, tmp_path, 2)
    script.respond = lambda prompt, number: 429

    status, out, err = alpaca_eval_judge(
        path, judge_url, "--attempts", "2", "--concurrency", "1", capsys=capsys
    )

    assert status == 2
    [line] = err.splitlines()
    assert line.startswith(
        f"alpaca-eval judge: error: pair-000: the server at {judge_url.removesuffix('/v1')} still "
        "answered 429 to POST /v1/chat/completions after 2 attempts"
    )
    assert "0 votes of this run are in the store, 2 pairs are not judged" in line
    assert len(script.requests) == 2  # two attempts at the first pair, then no new pair started
    assert machine_votes(scripted_server.url, path) == {}


@pytest.mark.slow  # waits out a real rate limit: several seconds
def test_a_rate_limited_store_is_waited_out_and_gets_every_vote(request, judge, tmp_path, capsys):
    judge_url, _ = judge
    store = start_server(
        request,
        "scripted",
        {"ALPACA_ADMIN_KEYS": "judge-key", "ALPACA_RATE_LIMIT_PER_MINUTE": "60"},
        tmp_path,
    )
    try:
        path, _ = make_comparison(store.url, tmp_path, 3, api_key="judge-key")
        # Use up the key's burst: from here on the store allows about one request a second.
        headers = {"Authorization": "Bearer judge-key"}
        for _ in range(100):
            if store.client.get("/info", headers=headers).status_code == 429:
                break
        else:
            pytest.fail("the store never answered 429")

        status, out, err = alpaca_eval_judge(
            path, judge_url, "--server-url", store.url, "--api-key", "judge-key", capsys=capsys
        )

        assert status == 0, err
        assert out.startswith("recorded 3 machine votes")
        assert len(machine_votes(store.url, path, api_key="judge-key")) == 3
        assert '"path": "/feedback", "status": 429' in store.log_text()
    finally:
        store.stop()


def test_several_pairs_are_judged_at_once_and_never_more_than_asked(
    scripted_server, judge, tmp_path, capsys
):
    judge_url, script = judge
    path, _ = make_comparison(scripted_server.url, tmp_path, 6)
    script.gather = 3  # the first three requests wait for each other

    status, out, err = alpaca_eval_judge(path, judge_url, "--concurrency", "3", capsys=capsys)

    assert status == 0, err
    assert out.startswith("recorded 6 machine votes")
    assert script.most_in_flight == 3
    assert script.gather_timeouts == 0  # the first three were in flight together, none waited out
    assert len(script.asked()) == 12  # each pair both ways round


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--concurrency", "0"], "--concurrency must be at least 1, got 0"),
        (["--attempts", "0"], "--attempts must be at least 1, got 0"),
    ],
)
def test_bad_judge_options_are_one_error_line(
    scripted_server, judge, tmp_path, capsys, options, message
):
    judge_url, script = judge
    path, _ = make_comparison(scripted_server.url, tmp_path, 1)

    status, out, err = alpaca_eval_judge(path, judge_url, *options, capsys=capsys)

    assert (status, out, err) == (2, "", f"alpaca-eval judge: error: {message}")
    assert script.requests == []


def test_the_judge_store_is_reachable_before_anything_is_asked(judge, tmp_path, capsys):
    judge_url, script = judge
    path = tmp_path / "comparison.json"
    unreachable = "http://127.0.0.1:9"
    comparison = build_comparison(
        [{"instruction": "Say hi.", "input": "", "output": "Hi.", "generation_id": "gen-a"}],
        [{"instruction": "Say hi.", "input": "", "output": "Hello.", "generation_id": "gen-b"}],
        "ours",
        "theirs",
        seed=1,
    )
    save_comparison(path, {**comparison, "server_url": unreachable})

    status, _, err = alpaca_eval_judge(path, judge_url, capsys=capsys)

    assert status == 2
    assert err == (
        f"alpaca-eval judge: error: The server at {unreachable} cannot be reached "
        "(ConnectError). Is it running?"
    )
    assert script.requests == []
