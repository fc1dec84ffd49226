"""Near-duplicate instructions out, decided as Stanford Alpaca did, without comparing all pairs.

Usage:
    from alpaca_serve.generation.dedup import Deduplicator
    dedup = Deduplicator()                 # ROUGE-L > 0.7 rejects; reports the 10 most similar
    for seed in seed_instructions:
        dedup.add(seed)                    # the pool: seeds, and what an earlier run kept
    decision = dedup.offer("Give three tips for staying healthy.")   # kept ones join the pool
    decision.kept, decision.max_score, decision.most_similar[0].instruction

Alpaca's generate_instruction.py rejected a new instruction when its ROUGE-L F-measure
(`rouge.rouge_l`: rouge_score's floats, to the bit) against ANY instruction of the pool (the 175
seeds and every instruction kept before it) was > 0.7, and otherwise kept it, adding it to the
pool; it scored each new instruction against the whole pool. `Deduplicator` makes the same
decisions, exactly (`exact_decisions` is that all-pairs reference; the tests and
`python -m benchmarks.dedup` compare the two), and scores only the few pool instructions that
could score high enough.

Which pairs can score >= s. With a and b the token counts of two instructions and L the length of
their longest common subsequence, F = 2 * L / (a + b) (precision L / b, recall L / a). L is at
most the multiset overlap m of their tokens (common tokens, counted with repeats), itself at most
min(a, b). So F >= s needs 2 * m >= s * (a + b), and, as b >= L, 2 * L >= s * (a + L), which is
L >= s / (2 - s) * a; the same for b:

    m >= need(a, b) = ceil(s * (a + b) / 2)
    m >= t(n) = ceil(s / (2 - s) * n)          for n = a and n = b
    s / (2 - s) <= a / b <= (2 - s) / s        (from 2 * min(a, b) >= s * (a + b))

For Alpaca's s = 0.7: t(n) = ceil(7 * n / 13), lengths within a factor 13 / 7. The scores are
floats (a few roundings: relative error below 2**-50), so the bounds are computed exactly
(fractions) for s * (1 - 2**-40): a pair whose float score equals s, or passes it by rounding
only, still passes them. No pair that can score >= s in floats is left out.

The candidates: prefix filtering (AllPairs, PPJoin). Each instruction's tokens become a set of
(token, occurrence) pairs, spelled "the", "the#2", ...: the overlap of two such sets is m. Put all
pairs in one fixed order. Let the first pair two sets share be at position i (from 0) of one, of
size n, and j of the other, of size k: every shared pair comes at or after those, so
m <= min(n - i, k - j), and m >= need(n, k) puts it within the first n - need + 1 pairs of one and
k - need + 1 of the other; need >= t(n) and t(k) for lengths within the ratio. So each pool
instruction is filed under the first k - t(k) + 1 pairs of its set (its prefix), with its length
k and each pair's position j; a new instruction looks up the first n - t(n) + 1 of its own and
takes the pool instructions filed under (k, j) only where need(n, k) <= min(n - i, k - j) and k
is within the ratio (the positional filter: a shared pair failing it is not the first one of a
pair that can score >= s). Then the overlap of the two sets must reach need(n, k); then the
exact score (bit-parallel LCS and rouge_score's float formula).

Any fixed order is correct; rarest first makes prefixes that find few. The order is frozen from
the pool's pair frequencies, rarest first (`reindex`: done again each time the pool has doubled).
A pair first seen after that goes before all others, the newest first, so the place of every pair
already ranked, and with it every filed prefix, stays the same between rebuilds. A new
instruction's pairs that no pool instruction holds count as its rarest (they find nothing).

What a Decision reports. The search floor is min(threshold, similar_from), 0.5 by default: the
filters above run with s = the floor, so every pool instruction scoring >= the floor is scored.
`most_similar` is exactly the pool's `keep_similar` highest-scoring instructions among those
scoring >= the floor, highest first, ties in pool order (none is missing; none below the floor
is listed); `max_score` is then the pool's maximum when that is >= the floor (always when
rejected), else 0.0. Alpaca listed the 10 highest over the whole pool, low ones included: that
needs every pair; a lower `similar_from` lists lower ones, at a cost (benchmarks/dedup.py
measures it).
"""

from __future__ import annotations

import heapq
import math
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from fractions import Fraction

from alpaca_serve.generation.rouge import (
    f_measure,
    lcs_length_masked,
    lcs_length_table,
    position_masks,
    tokenize,
)

THRESHOLD = 0.7  # Alpaca's: a ROUGE-L F-measure above it rejects
KEEP_SIMILAR = 10  # Alpaca kept each instruction's 10 most similar
SIMILAR_FROM = 0.5  # every pool instruction scoring at least this is scored and can be listed
ROUNDING_MARGIN = Fraction(1, 2**40)  # relative: float scores are within 2**-50 of exact ones
FIRST_REINDEX = 64  # the pool size of the first rebuild; then each time the pool has doubled


@dataclass(frozen=True)
class Similar:
    """A pool instruction and its ROUGE-L F-measure against the instruction decided."""

    instruction: str
    score: float


@dataclass(frozen=True)
class Decision:
    """Whether an instruction is kept, and the pool instructions most similar to it."""

    kept: bool
    most_similar: tuple[Similar, ...]  # up to keep_similar, highest score first

    @property
    def max_score(self) -> float:
        """The highest score in `most_similar`; 0.0 when it is empty."""
        return self.most_similar[0].score if self.most_similar else 0.0


class Deduplicator:
    """A pool of instructions that decides, as Alpaca did, whether a new one is too similar:
    rejected when its ROUGE-L against any pool instruction is > threshold."""

    def __init__(
        self,
        threshold: float = THRESHOLD,
        keep_similar: int = KEEP_SIMILAR,
        *,
        similar_from: float = SIMILAR_FROM,
    ) -> None:
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"threshold must be above 0 and at most 1, got {threshold}")
        if keep_similar < 1:
            raise ValueError(f"keep_similar must be at least 1, got {keep_similar}")
        if not 0.0 < similar_from <= 1.0:
            raise ValueError(f"similar_from must be above 0 and at most 1, got {similar_from}")
        self.threshold = threshold
        self.keep_similar = keep_similar
        self.floor = min(threshold, similar_from)  # every score >= it is found
        self._bounds = _Bounds(self.floor)
        self._instructions: list[str] = []
        self._tokens: list[list[str]] = []
        self._pairs: list[frozenset[str]] = []  # each one's (token, occurrence) pairs
        self._ranks: dict[str, int] = {}  # pair -> its place in the order
        self._next_rank = -1  # pairs first seen since the last freeze go first, newest first
        # pair -> (length k, position j in the prefix) -> the pool instructions filed there
        self._postings: dict[str, dict[tuple[int, int], list[int]]] = {}
        self._reindex_at = FIRST_REINDEX

    def __len__(self) -> int:
        return len(self._instructions)

    def add(self, instruction: str) -> None:
        """Put an instruction in the pool unchecked (the seeds; what an earlier run kept)."""
        self._append(instruction, tokenize(instruction))

    def check(self, instruction: str) -> Decision:
        """The decision for an instruction against the pool; adds nothing."""
        return self._decide(tokenize(instruction))

    def offer(self, instruction: str) -> Decision:
        """Check an instruction and, when kept, add it to the pool."""
        tokens = tokenize(instruction)
        decision = self._decide(tokens)
        if decision.kept:
            self._append(instruction, tokens)
        return decision

    def reindex(self) -> None:
        """Freeze the order of pairs from the pool's frequencies, rarest first, and file the pool
        again (done automatically each time the pool has doubled; decisions never change)."""
        counts = Counter(pair for pairs in self._pairs for pair in pairs)
        order = sorted(counts, key=lambda pair: (counts[pair], pair))
        self._ranks = {pair: rank for rank, pair in enumerate(order)}
        self._next_rank = -1
        self._postings = {}
        for index, pairs in enumerate(self._pairs):
            self._file(index, pairs)
        self._reindex_at = max(FIRST_REINDEX, 2 * len(self))

    def _append(self, instruction: str, tokens: list[str]) -> None:
        self._instructions.append(instruction)
        self._tokens.append(tokens)
        pairs = occurrence_pairs(tokens)
        self._pairs.append(frozenset(pairs))
        if len(self) >= self._reindex_at:
            self.reindex()
        else:
            self._file(len(self) - 1, pairs)

    def _file(self, index: int, pairs: Collection[str]) -> None:
        """File pool instruction `index` under each pair of its prefix, with its length and the
        pair's position. Pairs not ranked yet are ranked in the order given."""
        ranks = self._ranks
        for pair in pairs:
            if pair not in ranks:
                ranks[pair] = self._next_rank
                self._next_rank -= 1
        length = len(pairs)
        prefix = sorted(pairs, key=ranks.__getitem__)[: self._bounds.prefix_length(length)]
        for position, pair in enumerate(prefix):
            places = self._postings.setdefault(pair, {})
            places.setdefault((length, position), []).append(index)

    def _decide(self, tokens: list[str]) -> Decision:
        floor = self.floor
        scored = [found for found in self._score_candidates(tokens) if found[0] >= floor]
        kept = not scored or max(scored)[0] <= self.threshold
        top = heapq.nlargest(self.keep_similar, scored)  # (score, -index): ties, earlier first
        similar = tuple(Similar(self._instructions[-negative], score) for score, negative in top)
        return Decision(kept, similar)

    def _score_candidates(self, tokens: list[str]) -> list[tuple[float, int]]:
        """(score, -index) of the pool instructions that pass the filters: all those that can
        score >= the floor, and some that cannot."""
        n = len(tokens)
        if n == 0:
            return []
        # 1. Its prefix: its pairs in the order, those the pool does not hold first.
        ranks = self._ranks
        pairs = occurrence_pairs(tokens)
        known = [pair for pair in pairs if pair in ranks]
        first = n - len(known)  # the position of its first pair that the pool holds
        take = self._bounds.prefix_length(n) - first
        if take <= 0:
            return []
        known.sort(key=ranks.__getitem__)
        # 2. The pool instructions filed under it, by length and positions (positional filter).
        low, needs = self._bounds.needs(n)
        high = low + len(needs) - 1
        candidates: set[int] = set()
        for position, pair in enumerate(known[:take], start=first):
            rest = n - position
            for (length, place), found in self._postings.get(pair, {}).items():
                if low <= length <= high:
                    need = needs[length - low]
                    if need <= rest and need <= length - place:
                        candidates.update(found)
        # 3. Enough overlap, then the exact score.
        own = frozenset(pairs)
        pool_pairs = self._pairs
        pool_tokens = self._tokens
        masks = position_masks(tokens)
        scored = []
        for index in candidates:
            other = pool_pairs[index]
            length = len(other)
            if len(own & other) >= needs[length - low]:
                lcs = lcs_length_masked(masks, n, pool_tokens[index])
                scored.append((f_measure(lcs, n, length), -index))
        return scored


def occurrence_pairs(tokens: Sequence[str]) -> list[str]:
    """The tokens as (token, occurrence) pairs, spelled "tok", "tok#2", "tok#3", ...: sets whose
    overlap is the multiset overlap of the token lists ('#' is never part of a token)."""
    seen: dict[str, int] = {}
    pairs = []
    for token in tokens:
        count = seen.get(token, 0) + 1
        seen[token] = count
        pairs.append(token if count == 1 else f"{token}#{count}")
    return pairs


class _Bounds:
    """The filters' integer bounds for scores >= s, less the rounding margin, per length."""

    def __init__(self, s: float) -> None:
        self._s = Fraction(s) * (1 - ROUNDING_MARGIN)
        self._ratio = self._s / (2 - self._s)  # least overlap / length, and shorter / longer
        self._prefix: dict[int, int] = {}
        self._needs: dict[int, tuple[int, list[int]]] = {}

    def prefix_length(self, n: int) -> int:
        """n - t(n) + 1, t(n) = ceil(s / (2 - s) * n): the prefix of a set of n pairs that
        shares a pair with that of every set it overlaps enough."""
        found = self._prefix.get(n)
        if found is None:
            found = self._prefix[n] = n - math.ceil(self._ratio * n) + 1
        return found

    def needs(self, n: int) -> tuple[int, list[int]]:
        """The shortest length k that can score >= s against length n, and for each k from it
        to the longest, the overlap it needs: ceil(s * (n + k) / 2)."""
        found = self._needs.get(n)
        if found is None:
            low = max(1, math.ceil(self._ratio * n))
            high = math.floor(n / self._ratio)
            needs = [math.ceil(self._s * (n + k) / 2) for k in range(low, high + 1)]
            found = self._needs[n] = (low, needs)
        return found


def exact_decisions(
    seeds: Sequence[str], candidates: Sequence[str], threshold: float = THRESHOLD
) -> list[bool]:
    """The reference: each candidate scored against every seed and every candidate kept before
    it, all pairs, by the plain LCS table and rouge_score's float formula; True = kept."""
    pool = [tokenize(seed) for seed in seeds]
    decisions = []
    for candidate in candidates:
        tokens = tokenize(candidate)
        kept = all(_table_score(tokens, other) <= threshold for other in pool)
        decisions.append(kept)
        if kept:
            pool.append(tokens)
    return decisions


def _table_score(target: list[str], prediction: list[str]) -> float:
    if not target or not prediction:
        return 0.0
    return f_measure(lcs_length_table(target, prediction), len(target), len(prediction))
