"""What the prefer stage trains on, read from a real feedback store: people's pairwise votes as
DPO pairs when there are no thumbs; when people also gave thumbs, KTO's labelled answers, the
thumbs and the votes (each pair unpaired into a desirable and an undesirable answer) together.
The training itself is tests/training/test_dpo.py's and test_kto.py's; the stage end to end,
test_loop_e2e.py's."""

from __future__ import annotations

import json

import pytest

from alpaca_serve.core.prompts import format_prompt
from alpaca_serve.feedback import open_store
from alpaca_serve.feedback.records import ComparisonFeedback, GenerationRecord, RatingFeedback
from alpaca_serve.loop.settings import LoopSettings
from alpaca_serve.loop.stages import LoopContext, LoopError, _export_preferences
from alpaca_serve.loop.state import LoopState


def answer(id: str, instruction: str, response: str) -> GenerationRecord:
    return GenerationRecord(
        id=id,
        created_at=1_700_000_000.0 + int(id[-1]),
        model="loop-sft",
        params={"temperature": 0.0},
        instruction=instruction,
        input="",
        prompt=format_prompt(instruction),
        response=response,
        finish_reason="stop",
        prompt_tokens=30,
        completion_tokens=3,
        latency_s=0.1,
        filter_verdicts=[],
    )


@pytest.fixture
def store_url(tmp_path):
    """A SQLite store with one pair voted on by a person and one by the judge."""
    url = f"sqlite:///{tmp_path / 'alpaca.sqlite3'}"
    with open_store(url) as store:
        store.record_generations(
            [
                answer("gen-1", "Name a planet.", "Mars."),
                answer("gen-2", "Name a planet.", "I don't know."),
                answer("gen-3", "Name a river.", "The Nile."),
                answer("gen-4", "Name a river.", "No."),
            ]
        )
        store.save_comparison(ComparisonFeedback(("gen-1", "gen-2"), "gen-1", "alice"))
        store.save_comparison(ComparisonFeedback(("gen-3", "gen-4"), "gen-3", "judge", "machine"))
    return url


def export(tmp_path, url: str, auto: bool) -> tuple[list[dict], str, str]:
    ctx = LoopContext(LoopSettings(database=url, auto=auto), LoopState(tmp_path / "work"))
    path = tmp_path / "prefs.jsonl"
    count, source, method = _export_preferences(ctx, path)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert count == len(rows)
    return rows, source, method


def test_without_thumbs_the_votes_become_dpo_pairs(tmp_path, store_url):
    rows, source, method = export(tmp_path, store_url, auto=False)

    assert method == "dpo"
    assert rows == [
        {"prompt": format_prompt("Name a planet."), "chosen": "Mars.", "rejected": "I don't know."}
    ]
    assert source.startswith("1 from human votes")


def test_with_thumbs_every_vote_and_thumb_becomes_a_labelled_answer_for_kto(tmp_path, store_url):
    with open_store(store_url) as store:
        store.save_rating(RatingFeedback("gen-4", "down", "bob"))
        store.save_rating(RatingFeedback("gen-3", "up", "bob", preferred_response="The Amazon."))

    rows, source, method = export(tmp_path, store_url, auto=True)

    planet, river = format_prompt("Name a planet."), format_prompt("Name a river.")
    assert method == "kto"
    assert rows == [
        {"prompt": river, "completion": "The Nile.", "label": True},  # thumbs first
        {"prompt": river, "completion": "The Amazon.", "label": True},
        {"prompt": river, "completion": "No.", "label": False},
        {"prompt": planet, "completion": "Mars.", "label": True},  # then the votes, unpaired
        {"prompt": planet, "completion": "I don't know.", "label": False},
    ]  # the judge's river pair adds nothing the thumbs had not said
    assert (
        source.startswith("3 from thumbs (")
        and "2 more from 3 pairs (2 from human votes, 1 from MACHINE votes" in source
    )


def test_with_no_vote_and_no_thumb_the_stage_says_what_to_do(tmp_path):
    url = f"sqlite:///{tmp_path / 'empty.sqlite3'}"
    state = LoopState(tmp_path / "work")
    state.stages["compare"] = type("Done", (), {"outputs": {"comparison": "c.json"}})()

    with pytest.raises(LoopError, match="no preference pair in the feedback store"):
        _export_preferences(LoopContext(LoopSettings(database=url), state), tmp_path / "p.jsonl")
