"""ROUGE-L as Stanford Alpaca scored instruction similarity, bit for bit, with a fast LCS.

Usage:
    from alpaca_serve.generation.rouge import lcs_length, rouge_l, tokenize
    new = tokenize("Give three tips for staying healthy.")  # ["give", "three", "tips", ...]
    other = tokenize("Give three health tips")
    lcs_length(new, other)              # 3 ("give three tips"), bit-parallel
    rouge_l(new, other)                 # 0.6, rouge_score's rougeL fmeasure

Alpaca's generate_instruction.py scored a new instruction against each other one with Google's
`rouge_score`: `rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)`, its default tokenizer,
and `rouge_scorer._score_lcs(new_tokens, other_tokens).fmeasure`. This module computes the same
numbers with the standard library only:

- `tokenize`: lower-case, every run of characters outside [a-z0-9] becomes a space, split, keep
  the tokens of [a-z0-9]+ (no stemming). That leaves exactly the maximal runs of [a-z0-9] of the
  lower-cased text, which is what it returns.
- `rouge_l(target, prediction)`: rouge_score's argument order; Alpaca passed the new instruction
  as the target (recall = LCS / its length) and the pool's instruction as the prediction
  (precision = LCS / its length). F = 2 * precision * recall / (precision + recall), in floats,
  in that order; 0.0 when either side has no token. The value is the same, to the bit, with the
  arguments swapped: 2 * p is exact, a product and a sum of two floats do not depend on their
  order, so swapping only swaps p and r.
- `lcs_length`: the length of the longest common subsequence, by the bit-parallel algorithm of
  Allison-Dix / Hyyrö over Python ints: one bit per position of one sequence, a few integer
  operations per token of the other, instead of a table of len(a) x len(b) cells
  (`lcs_length_table`, the textbook table that rouge_score fills, is kept as the reference).

For many comparisons against one sequence, build its masks once with `position_masks` and call
`lcs_length_masked`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_TOKEN = re.compile(r"[a-z0-9]+")


def tokenize(text: str) -> list[str]:
    """rouge_score's default tokenizer without stemming: the runs of [a-z0-9] of text.lower()."""
    return _TOKEN.findall(text.lower())


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """The length of the longest common subsequence of two token sequences (bit-parallel)."""
    if len(a) < len(b):
        a, b = b, a  # the masks of the shorter one: smaller ints
    return lcs_length_masked(position_masks(b), len(b), a)


def position_masks(tokens: Sequence[str]) -> dict[str, int]:
    """For each distinct token, an int whose bit i is set where tokens[i] is that token."""
    masks: dict[str, int] = {}
    for position, token in enumerate(tokens):
        masks[token] = masks.get(token, 0) | (1 << position)
    return masks


def lcs_length_masked(masks: dict[str, int], length: int, other: Sequence[str]) -> int:
    """LCS length of a sequence, given as its `position_masks` and its length, and `other`.

    Allison-Dix / Hyyrö: V starts with the sequence's `length` low bits set; each token of
    `other` updates it to (V + U) | (V - U) with U = V & mask(token); the LCS length is the
    number of those low bits that end up cleared. Carries only move upward, so the bits above
    `length` never disturb the count."""
    full = (1 << length) - 1
    v = full
    get = masks.get
    for token in other:
        u = v & get(token, 0)
        v = (v + u) | (v - u)
    return length - (v & full).bit_count()


def lcs_length_table(a: Sequence[str], b: Sequence[str]) -> int:
    """The LCS length by the plain dynamic-programming table, as rouge_score computes it (the
    reference for `lcs_length`; O(len(a) * len(b)))."""
    previous = [0] * (len(b) + 1)
    for token in a:
        row = [0]
        for j, other in enumerate(b):
            row.append(previous[j] + 1 if token == other else max(previous[j + 1], row[j]))
        previous = row
    return previous[-1]


def rouge_l(target: Sequence[str], prediction: Sequence[str]) -> float:
    """ROUGE-L F-measure of two token sequences, as `rouge_scorer._score_lcs(target,
    prediction).fmeasure` computes it (Alpaca: target = the new instruction)."""
    if not target or not prediction:
        return 0.0
    return f_measure(lcs_length(target, prediction), len(target), len(prediction))


def f_measure(lcs: int, target_length: int, prediction_length: int) -> float:
    """rouge_score's F-measure from an LCS length and the two (non-zero) lengths, with its
    operations in its order: the same float, to the bit, for the same integers."""
    precision = lcs / prediction_length
    recall = lcs / target_length
    if precision + recall > 0:
        return 2 * precision * recall / (precision + recall)
    return 0.0
