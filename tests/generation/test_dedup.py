"""Alpaca's ROUGE-L deduplication: the tokenizer and the score as rouge_score computes them, the
bit-parallel LCS, and the Deduplicator's decisions against the exact all-pairs check, on the
shipped instructions, near-duplicates of them, and pairs crafted at the 0.7 boundary."""

from __future__ import annotations

import random
import re

import pytest
from rouge_score import rouge_scorer, tokenizers

from alpaca_serve.generation.dedup import Decision, Deduplicator, Similar, exact_decisions
from alpaca_serve.generation.rouge import (
    f_measure,
    lcs_length,
    lcs_length_table,
    rouge_l,
    tokenize,
)
from benchmarks.dedup import read_material

TRICKY_TEXTS = [
    "Give three tips for staying healthy.",
    "  What's 2+2?\tAnswer:\n4!  ",
    "snake_case, kebab-case & CamelCase; e-mail@host.com 3.14 1,000,000",
    "Ünïcödé naïve café: ÀÉÎ ß straße İstanbul KELVIN \u212a 2\u00b2 \u0660\u0661 ﬁne",
    "",
    "!!! ??? ...",
    "don't   can't won’t — “quoted” «guillemets» 『括弧』 中文 テスト",
]


# --- the material: shipped instructions, near-duplicates, crafted boundary pairs ------------


def shipped_instructions() -> list[str]:
    """The distinct instructions of the data the project ships (about 1,400): the benchmark's
    material, read one way for both."""
    return read_material()[0]


def near_duplicate(text: str, donor: str, rng: random.Random) -> str:
    """A variant of text: words swapped or dropped, a spliced half, or case and punctuation."""
    words = text.split()
    edit = rng.randrange(5)
    if edit == 0 and len(words) > 1:
        at = rng.randrange(len(words) - 1)
        words[at], words[at + 1] = words[at + 1], words[at]
    elif edit == 1 and len(words) > 2:
        del words[rng.randrange(len(words))]
    elif edit == 2:
        other = donor.split()
        words = words[: len(words) // 2] + other[len(other) // 2 :]
    elif edit == 3:
        words = [word.upper() if rng.random() < 0.3 else word + "," for word in words]
    else:
        cut = max(1, round(len(words) * 0.8))
        words = words[:cut] + donor.split()[-2:]
    return " ".join(words)


def crafted(lcs: int, length: int, other_length: int, name: str) -> tuple[str, str]:
    """Two instructions of the given token counts whose LCS is exactly `lcs`: the first's words
    are distinct, the second keeps `lcs` of them in order and adds words of its own."""
    first = [f"{name}w{i}" for i in range(length)]
    kept = first[:lcs]
    added = [f"{name}x{i}" for i in range(other_length - lcs)]
    second = [word for pair in zip(kept, added, strict=False) for word in pair]
    second += kept[len(added) :] + added[len(kept) :]
    return " ".join(first), " ".join(second)


# (LCS, new instruction's length, pool instruction's length) at and around F = 0.7
AT_07_ROUNDED_UP = [(7, 7, 13), (7, 8, 12), (7, 9, 11), (14, 15, 25), (21, 22, 38)]
AT_07_ROUNDED_DOWN = [(7, 10, 10), (14, 17, 23), (21, 23, 37), (21, 30, 30), (28, 33, 47)]
JUST_BELOW = [(7, 10, 11), (6, 6, 12), (13, 20, 18)]
JUST_ABOVE = [(8, 10, 12), (7, 7, 12), (6, 6, 11)]
BOUNDARY = AT_07_ROUNDED_UP + AT_07_ROUNDED_DOWN + JUST_BELOW + JUST_ABOVE


def mixed_stream(size: int, seed: int) -> tuple[list[str], list[str]]:
    """Seeds and a stream of `size`: shipped instructions (then splices of two, once all are
    used), near-duplicates of what came before, and the boundary pairs (the pool side of each
    among the seeds, the other in the stream)."""
    rng = random.Random(seed)
    real = shipped_instructions()
    rng.shuffle(real)
    seeds = real[:60]
    stream: list[str] = []
    for number, (lcs, length, other_length) in enumerate(BOUNDARY):
        new, pooled = crafted(lcs, length, other_length, f"b{number}")
        seeds += [pooled, new.replace(f"b{number}", f"s{number}")]  # and the other way round
        stream += [new, pooled.replace(f"b{number}", f"s{number}")]
    rest = real[60:]
    while len(stream) < size:
        if rng.random() < 0.45:
            stream.append(near_duplicate(rng.choice(stream), rng.choice(real), rng))
        elif rest:
            stream.append(rest.pop())
        else:  # a new one: the head of one instruction, the tail of another
            head, tail = rng.choice(real).split(), rng.choice(real).split()
            stream.append(" ".join(head[: len(head) // 2] + tail[len(tail) // 2 :]))
    rng.shuffle(stream)
    return seeds, stream


def brute_force(seeds: list[str], stream: list[str], floor: float, keep: int) -> list[Decision]:
    """The decisions and their lists by scoring every pair with rouge_l (a reference faster than
    exact_decisions; rouge_l is checked against rouge_score and the LCS table below): the list
    is the top `keep` scores >= floor, ties in pool order."""
    pool = [(text, tokenize(text)) for text in seeds]
    decisions = []
    for text in stream:
        tokens = tokenize(text)
        scores = [(rouge_l(tokens, other), index) for index, (_, other) in enumerate(pool)]
        kept = all(score <= 0.7 for score, _ in scores)
        listed = sorted((s for s in scores if s[0] >= floor), key=lambda s: (-s[0], s[1]))[:keep]
        decisions.append(Decision(kept, tuple(Similar(pool[i][0], s) for s, i in listed)))
        if kept:
            pool.append((text, tokens))
    return decisions


def offer_all(dedup: Deduplicator, seeds: list[str], stream: list[str]) -> list[Decision]:
    for seed in seeds:
        dedup.add(seed)
    return [dedup.offer(text) for text in stream]


# --- the tokenizer and the score, as rouge_score computes them --------------------------------


def test_the_tokenizer_splits_as_rouge_scores_default_tokenizer():
    tokenizer = tokenizers.DefaultTokenizer(use_stemmer=False)

    for text in TRICKY_TEXTS + shipped_instructions():
        assert tokenize(text) == tokenizer.tokenize(text), text


def test_the_tokenizer_lowercases_and_keeps_runs_of_ascii_letters_and_digits():
    assert tokenize("What's 2+2? Use CamelCase, e-mail; café") == [
        *("what", "s", "2", "2", "use", "camelcase", "e", "mail", "caf"),
    ]
    assert tokenize("!!! ...") == []


def test_the_score_is_rouge_scores_f_measure_to_the_bit_in_both_argument_orders():
    rng = random.Random(1)
    texts = shipped_instructions()
    pairs = [(rng.choice(texts), rng.choice(texts)) for _ in range(1500)]
    pairs += [(text, near_duplicate(text, rng.choice(texts), rng)) for text in texts[:500]]
    pairs += [crafted(*case, name="c") for case in BOUNDARY] + [(TRICKY_TEXTS[0], "")]

    for a, b in pairs:
        new, other = tokenize(a), tokenize(b)
        expected = rouge_scorer._score_lcs(new, other).fmeasure  # Alpaca's call: new = target
        assert rouge_l(new, other) == expected, (a, b)
        assert rouge_l(other, new) == expected  # the same float with the arguments swapped


def test_the_boundary_pairs_score_0_7_rounded_as_rouge_score_rounds_it():
    for lcs, length, other_length in AT_07_ROUNDED_UP:
        new, pooled = (tokenize(text) for text in crafted(lcs, length, other_length, "t"))
        assert lcs_length(new, pooled) == lcs and 20 * lcs == 7 * (length + other_length)
        assert rouge_l(new, pooled) > 0.7  # exactly 0.7, but the floats land just above
    for lcs, length, other_length in AT_07_ROUNDED_DOWN:
        new, pooled = (tokenize(text) for text in crafted(lcs, length, other_length, "t"))
        assert rouge_l(new, pooled) <= 0.7


def test_an_empty_side_scores_zero():
    assert rouge_l([], ["a"]) == rouge_l(["a"], []) == rouge_l([], []) == 0.0
    assert f_measure(0, 3, 4) == 0.0


# --- the LCS --------------------------------------------------------------------------------


def test_the_bit_parallel_lcs_equals_the_dynamic_programming_table_on_random_sequences():
    rng = random.Random(7)
    for _ in range(3000):
        alphabet = [f"t{i}" for i in range(rng.randint(1, 6))]
        a = [rng.choice(alphabet) for _ in range(rng.randint(0, 90))]  # past 64 bits too
        b = [rng.choice(alphabet) for _ in range(rng.randint(0, 90))]
        assert lcs_length(a, b) == lcs_length_table(a, b) == lcs_length(b, a), (a, b)


def test_the_lcs_table_is_rouge_scores():
    rng = random.Random(8)
    for _ in range(300):
        a = [rng.choice("abcd") for _ in range(rng.randint(1, 30))]
        b = [rng.choice("abcd") for _ in range(rng.randint(1, 30))]
        assert lcs_length_table(a, b) == rouge_scorer._lcs_table(a, b)[-1][-1]


# --- the Deduplicator's decisions -------------------------------------------------------------


@pytest.mark.parametrize("similar_from", [0.7, 0.5])  # 0.7: the filters at the threshold
def test_decisions_equal_the_exact_all_pairs_check(similar_from):
    seeds, stream = mixed_stream(400, seed=3)

    decisions = offer_all(Deduplicator(similar_from=similar_from), seeds, stream)

    exact = exact_decisions(seeds, stream)
    assert [decision.kept for decision in decisions] == exact
    assert 0.15 < exact.count(False) / len(exact) < 0.6  # near-duplicates were rejected


@pytest.mark.slow
def test_decisions_equal_the_exact_all_pairs_check_on_fifteen_hundred_instructions():
    seeds, stream = mixed_stream(1500, seed=4)  # 2,500 and more: python -m benchmarks.dedup

    decisions = offer_all(Deduplicator(), seeds, stream)

    assert [decision.kept for decision in decisions] == exact_decisions(seeds, stream)


@pytest.mark.parametrize("floor", [0.7, 0.5, 0.3])
def test_the_most_similar_lists_are_every_pairs_top_scores_from_the_floor(floor):
    seeds, stream = mixed_stream(1000, seed=5)

    decisions = offer_all(Deduplicator(similar_from=floor), seeds, stream)

    assert decisions == brute_force(seeds, stream, floor, keep=10)


@pytest.mark.parametrize("similar_from", [0.7, 0.5])  # 0.7: the filters at the threshold
@pytest.mark.parametrize("longer_in_pool", [True, False])
def test_the_boundary_pairs_are_decided_as_alpaca_did(similar_from, longer_in_pool):
    cases = [(case, False) for case in AT_07_ROUNDED_UP + JUST_ABOVE]
    cases += [(case, True) for case in AT_07_ROUNDED_DOWN + JUST_BELOW]
    for (lcs, length, other_length), kept in cases:
        new, pooled = crafted(lcs, length, other_length, "d")
        if (len(tokenize(pooled)) > len(tokenize(new))) is not longer_in_pool:
            new, pooled = pooled, new
        dedup = Deduplicator(similar_from=similar_from)
        dedup.add(pooled)

        decision = dedup.check(new)

        assert decision.kept is kept, (lcs, length, other_length)
        score = rouge_l(tokenize(new), tokenize(pooled))
        listed = score >= similar_from  # the floor: min(threshold, similar_from)
        assert decision.most_similar == ((Similar(pooled, score),) if listed else ())


def test_a_near_duplicate_is_rejected_with_its_original_as_the_most_similar():
    dedup = Deduplicator()
    original = "Give three tips for staying healthy."
    for text in [original, "Describe a process of making crepes.", "Give three tips for a trip."]:
        assert dedup.offer(text).kept

    decision = dedup.offer("give 3 tips for staying healthy!")

    assert not decision.kept
    assert decision.most_similar[0].instruction == original
    assert decision.max_score == decision.most_similar[0].score == pytest.approx(2 * 5 / 12)
    assert len(dedup) == 3


def test_the_list_is_highest_first_ties_in_pool_order_and_at_most_keep_similar():
    dedup = Deduplicator(keep_similar=2)
    for text in ["red green blue one", "red green blue two", "red green blue", "red green"]:
        dedup.add(text)

    decision = dedup.check("red green blue three")

    assert decision.most_similar == (
        Similar(
            "red green blue", rouge_l(["red", "green", "blue", "three"], ["red", "green", "blue"])
        ),
        Similar("red green blue one", 0.75),  # tied with "... two": the earlier first
    )


def test_add_files_unconditionally_and_check_adds_nothing():
    dedup = Deduplicator()
    dedup.add("Write a poem about the sea.")
    dedup.add("Write a poem about the sea.")  # seeds are not checked
    assert len(dedup) == 2

    decision = dedup.check("Write a short poem about the sea.")

    assert not decision.kept and len(dedup) == 2
    assert [similar.instruction for similar in decision.most_similar] == [
        "Write a poem about the sea."
    ] * 2
    assert dedup.check("Translate this sentence into French.").kept
    assert dedup.check("Translate this sentence into French.").kept  # still not in the pool


def test_an_instruction_without_tokens_scores_zero_and_is_kept():
    dedup = Deduplicator()
    dedup.add("Give three tips for staying healthy.")

    for text in ["", "!!! ???", "— «»"]:
        decision = dedup.offer(text)
        assert decision == Decision(kept=True, most_similar=())
        assert decision.max_score == 0.0
    assert len(dedup) == 4
    assert exact_decisions(["!!!"], ["???", "Give three tips."]) == [True, True]


def test_rebuilding_the_index_mid_stream_changes_no_decision():
    seeds, stream = mixed_stream(600, seed=6)
    dedup = Deduplicator()
    for seed in seeds:
        dedup.add(seed)

    decisions = []
    for number, text in enumerate(stream):
        if number % 37 == 0:
            dedup.reindex()  # another order of pairs, other prefixes and postings each time
        decisions.append(dedup.offer(text))

    assert decisions == brute_force(seeds, stream, floor=0.5, keep=10)


def test_a_pool_grown_one_at_a_time_past_many_rebuilds_decides_as_all_pairs():
    _, stream = mixed_stream(800, seed=9)

    decisions = offer_all(Deduplicator(), [], stream)  # rebuilt at 64, 128, 256 instructions

    assert decisions == brute_force([], stream, floor=0.5, keep=10)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"threshold": 0.0}, "threshold must be above 0 and at most 1, got 0.0"),
        ({"threshold": 1.5}, "threshold must be above 0 and at most 1, got 1.5"),
        ({"keep_similar": 0}, "keep_similar must be at least 1, got 0"),
        ({"similar_from": 0.0}, "similar_from must be above 0 and at most 1, got 0.0"),
    ],
)
def test_settings_out_of_range_are_refused(arguments, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        Deduplicator(**arguments)


@pytest.mark.parametrize("threshold", [0.4, 0.9, 1.0])
def test_other_thresholds_decide_as_the_exact_check(threshold):
    seeds, stream = mixed_stream(250, seed=10)

    decisions = offer_all(Deduplicator(threshold=threshold), seeds, stream)

    assert [d.kept for d in decisions] == exact_decisions(seeds, stream, threshold=threshold)
