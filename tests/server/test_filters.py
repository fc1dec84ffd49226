"""Content filters on their own: the blocklist format, the guard, and how failures are handled."""

from __future__ import annotations

import asyncio
import random

import pytest

from alpaca_serve.server.filters import (
    BLOCKLIST_REASON,
    FILTER_ERROR_CATEGORY,
    BlocklistFilter,
    FilterChain,
    FilterConfigError,
    FilterInput,
    LengthRepetitionGuard,
    LoadedFilter,
    Verdict,
    load_filter,
    parse_blocklist,
)
from alpaca_serve.server.settings import FilterSettings


def request(instruction: str, input: str = "") -> FilterInput:
    return FilterInput(instruction=instruction, input=input, prompt=f"...{instruction}...")


def test_blocklist_lines_give_phrases_categories_and_patterns():
    entries = parse_blocklist(
        "# a comment line\n"
        "\n"
        "bad word\n"
        "violence: kill them   # trailing comment\n"
        "pii: re:\\b\\d{3}-\\d{2}-\\d{4}\\b\n"
    )
    assert [(e.category, e.text) for e in entries] == [
        ("blocklist", "bad word"),
        ("violence", "kill them"),
        ("pii", "re:\\b\\d{3}-\\d{2}-\\d{4}\\b"),
    ]


def test_a_bad_pattern_is_reported_with_file_and_line():
    with pytest.raises(FilterConfigError, match=r"list.txt:2: bad pattern '\('"):
        parse_blocklist("ok\nx: re:(\n", "list.txt")


def test_phrases_match_whole_words_ignoring_case(tmp_path):
    path = tmp_path / "blocklist.txt"
    path.write_text("violence: kill them\n")
    blocklist = BlocklistFilter(path)
    assert blocklist.check_input(request("Please KILL   them now")) == Verdict.block(
        "violence", BLOCKLIST_REASON, "blocklist entry 'kill them'"
    )
    # What reaches the client names the category, not the entry (the log's detail does).
    assert "kill" not in BLOCKLIST_REASON
    assert blocklist.check_input(request("skill themes")).allowed
    assert not blocklist.check_output("and then kill them all").allowed


def test_many_phrases_block_exactly_what_each_phrase_would_on_its_own(tmp_path):
    """The blocklist checks its phrases in one pass (a trie-built regex); on any text it must
    reach the verdict that trying each entry in turn gives. Seeded random phrases and texts over
    a small alphabet, so that prefixes are shared and near-misses are common."""
    rng = random.Random(18)
    letters = "abAB-é"
    for case in range(300):
        phrases = {
            " ".join(
                "".join(rng.choice(letters) for _ in range(rng.randint(1, 3)))
                for _ in range(rng.randint(1, 3))
            )
            for _ in range(rng.randint(1, 12))
        }
        lines = [f"c{i}: {phrase}" for i, phrase in enumerate(sorted(phrases))]
        path = tmp_path / f"blocklist-{case}.txt"
        path.write_text("\n".join(lines) + "\n")
        blocklist = BlocklistFilter(path)
        for _ in range(20):
            text = "".join(rng.choice(letters + " \t.x") for _ in range(rng.randint(0, 14)))
            expected = next(
                (
                    Verdict.block(
                        entry.category, BLOCKLIST_REASON, f"blocklist entry {entry.text!r}"
                    )
                    for entry in blocklist.entries
                    if entry.regex.search(text)
                ),
                Verdict.allow(),
            )
            assert blocklist.check_output(text) == expected, (lines, text)


def test_a_thousand_phrases_are_checked_in_one_pass(tmp_path):
    path = tmp_path / "blocklist.txt"
    path.write_text("".join(f"zqx phrase {i:04d} vrk\n" for i in range(1000)))
    blocklist = BlocklistFilter(path)
    assert blocklist._phrases is not None and blocklist._patterns == []
    assert blocklist.check_output("a zqx PHRASE  0999 vrk.").category == "blocklist"
    assert blocklist.check_output("a zqx phrase 0999 vrkx").allowed


def test_patterns_match_in_the_input_field_too(tmp_path):
    path = tmp_path / "blocklist.txt"
    path.write_text("pii: re:\\d{3}-\\d{2}-\\d{4}\n")
    verdict = BlocklistFilter(path).check_input(request("Summarize.", "SSN 123-45-6789"))
    assert verdict.category == "pii"


def test_the_blocklist_file_is_reread_when_it_changes(tmp_path):
    path = tmp_path / "blocklist.txt"
    path.write_text("alpha\n")
    blocklist = BlocklistFilter(path)
    assert blocklist.check_output("beta").allowed
    path.write_text("beta\n")
    import os

    os.utime(path, (1, 1))  # a different mtime, however fast the edit
    assert not blocklist.check_output("beta").allowed
    assert blocklist.check_output("alpha").allowed


def test_a_broken_edit_keeps_the_previous_blocklist(tmp_path):
    path = tmp_path / "blocklist.txt"
    path.write_text("alpha\n")
    blocklist = BlocklistFilter(path)
    path.write_text("x: re:(\n")
    import os

    os.utime(path, (2, 2))
    assert not blocklist.check_output("alpha").allowed


def test_guard_blocks_long_inputs_and_degenerate_repetition():
    guard = LengthRepetitionGuard(max_input_chars=10, max_repeats=4, max_ngram=3)
    assert guard.check_input(request("x" * 11)).category == "length"
    assert guard.check_input(request("short")).allowed
    assert guard.check_output("one two three four five").allowed
    assert guard.check_output("la la la la").category == "repetition"
    assert guard.check_output("I said: go on go on go on go on").category == "repetition"
    assert guard.check_output("go on go on go on").allowed


class Raising:
    def check_input(self, request):
        raise RuntimeError("boom")


class Hanging:
    async def check_output(self, text):
        await asyncio.sleep(10)
        return Verdict.allow()


class Blocking:
    def check_input(self, request):
        return Verdict.block("custom", "always")


def test_a_raising_filter_blocks_and_is_counted():
    failures, blocks = [], []
    chain = FilterChain(
        [LoadedFilter("raising", Raising(), fail_open=False, timeout_s=1)],
        on_block=lambda hook, category: blocks.append((hook, category)),
        on_failure=lambda name, hook, kind: failures.append((name, hook, kind)),
    )
    verdict, outcomes = asyncio.run(chain.check_input(request("hi")))
    assert not verdict.allowed
    assert verdict.category == FILTER_ERROR_CATEGORY
    assert "RuntimeError: boom" in verdict.reason
    assert failures == [("raising", "input", "error")]
    assert blocks == [("input", FILTER_ERROR_CATEGORY)]
    assert outcomes[0].failed


def test_a_filter_that_times_out_blocks():
    failures = []
    chain = FilterChain(
        [LoadedFilter("hanging", Hanging(), fail_open=False, timeout_s=0.05)],
        on_failure=lambda name, hook, kind: failures.append((name, hook, kind)),
    )
    verdict, _ = asyncio.run(chain.check_output("text"))
    assert verdict.category == FILTER_ERROR_CATEGORY
    assert failures == [("hanging", "output", "timeout")]


def test_a_fail_open_filter_allows_when_it_fails_but_is_still_counted():
    failures = []
    chain = FilterChain(
        [LoadedFilter("raising", Raising(), fail_open=True, timeout_s=1)],
        on_failure=lambda name, hook, kind: failures.append((name, hook, kind)),
    )
    verdict, _ = asyncio.run(chain.check_input(request("hi")))
    assert verdict.allowed
    assert failures == [("raising", "input", "error")]


def test_the_first_block_wins_and_later_filters_are_not_asked():
    chain = FilterChain(
        [
            LoadedFilter("blocking", Blocking(), False, 1),
            LoadedFilter("raising", Raising(), False, 1),
        ]
    )
    verdict, outcomes = asyncio.run(chain.check_input(request("hi")))
    assert verdict.category == "custom"
    assert [o.filter for o in outcomes] == ["blocking"]


def test_filters_are_built_from_an_import_path_with_options():
    loaded = load_filter(
        FilterSettings(
            factory="tests.server.filter_plugins:keyword",
            options={"keyword": "secret", "category": "leak"},
        )
    )
    assert loaded.name == "keyword"
    assert loaded.impl.check_input(request("the secret plan")).category == "leak"


@pytest.mark.parametrize(
    ("factory", "options", "message"),
    [
        ("no_such_module:x", {}, "cannot import filter factory 'no_such_module:x'"),
        (
            "alpaca_serve.server.filters:nope",
            {},
            "cannot import filter factory 'alpaca_serve.server.filters:nope'",
        ),
        ("tests.server.filter_plugins:keyword", {"wrong": 1}, "failed"),
        (
            "alpaca_serve.server.filters:length_repetition_guard",
            {"max_repeats": 1},
            "max_repeats >= 2",
        ),
    ],
)
def test_a_filter_that_cannot_be_built_says_why(factory, options, message):
    with pytest.raises(FilterConfigError, match=message):
        load_filter(FilterSettings(factory=factory, options=options))
