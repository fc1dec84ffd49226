"""A leaderboard of every model from pairwise votes: Bradley-Terry scores on Chatbot Arena's
Elo-like scale, with bootstrap 95% intervals and the vote counts.

Usage:
    excluded = Counter()            # votes of excluded sessions, left out, by voter
    battles = store.battles(excluded=excluded)  # (model of a, model of b, outcome, voter) per vote
    board = compute_leaderboard(battles, voter="human", rounds=200, seed=0,
                                excluded_votes=excluded["human"])
    for row in board.rows:          # best first
        print(row.rank, row.model, round(row.score), row.lower, row.upper, row.votes)
    board.as_dict()                 # what GET /feedback/leaderboard answers

How the scores are computed, as Chatbot Arena's notebook does it:
- Only one kind of voter at a time: people's and an automatic judge's votes are never mixed.
- Votes of excluded sessions (`alpaca-export --exclude-session`) never reach the board: the store
  leaves them out, and the board says how many (`excluded_votes`).
- A vote between two answers of the same model says nothing about ranking models: it is left out
  (counted in `same_model_votes`).
- Bradley-Terry: P(i beats j) = 1 / (1 + 10 ** ((score_j - score_i) / 400)), that is
  score = 1000 + 400 / ln(10) * beta for a logistic model with strengths beta. A win counts 1
  for the winner; a tie or a "both bad" counts half a win each way.
- The fit is maximum likelihood by Newton's method, with a very weak L2 penalty (L2_STRENGTH)
  on beta. The penalty keeps the scores finite when a model won (or lost) every vote, and puts
  the mean score of each group of models connected by votes at 1000, so groups that never met
  each other get scores on the same footing; scores of models in different groups are not
  comparable (`groups` says how many there are). With any real amount of data the penalty
  moves a score by well under a point.
- Intervals: the votes are resampled with replacement `rounds` times (seeded) and refitted; the
  interval is the 2.5th to 97.5th percentile of each model's scores, over the rounds in which
  it has at least one vote. With rounds=0 there are no intervals.
- Rank, as Arena's: 1 + the number of models whose interval lies wholly above this one's (the
  models statistically better); without intervals, 1 + the number of higher scores.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

import numpy as np

SCALE = 400.0  # points per factor of 10 in the odds of winning
BASE = 10.0
INIT_SCORE = 1000.0  # the score of a model of average strength (each group's mean)
L2_STRENGTH = 1e-2  # penalty on beta (natural-log units); one vote weighs 1
DEFAULT_ROUNDS = 200
MAX_ROUNDS = 1000
NEWTON_STEPS = 100  # most iterations of one fit; it converges in a handful
STEP_TOLERANCE = 1e-10  # a fit has converged when no beta moves more than this in a step
MIN_STEP = 1e-6  # the smallest fraction of a Newton step the line search tries

# What a stored winner means for the Bradley-Terry fit: (weight of a beating b, of b beating a).
OUTCOME_WEIGHTS = {"a": (1.0, 0.0), "b": (0.0, 1.0), "tie": (0.5, 0.5), "both_bad": (0.5, 0.5)}


@dataclass(frozen=True)
class LeaderboardRow:
    rank: int
    model: str
    score: float
    lower: float | None  # the 95% interval; None without bootstrap rounds
    upper: float | None
    votes: int  # votes between this model and another one
    wins: int
    losses: int
    ties: int  # ties and "both bad" together


@dataclass
class Leaderboard:
    voter: str
    rounds: int
    seed: int
    votes: int  # votes between two different models: what the scores are made from
    same_model_votes: int  # votes between two answers of one model, left out
    groups: int  # groups of models connected by votes; scores compare within a group only
    excluded_votes: int  # votes of excluded sessions, left out by the store
    rows: list[LeaderboardRow] = field(default_factory=list)
    message: str | None = None  # why the board is empty, or what to keep in mind reading it

    def as_dict(self) -> dict:
        return asdict(self)


def compute_leaderboard(
    battles: Iterable[tuple[str, str, str, str]],
    voter: str = "human",
    rounds: int = DEFAULT_ROUNDS,
    seed: int = 0,
    excluded_votes: int = 0,
) -> Leaderboard:
    """The leaderboard of `voter`'s battles (model_a, model_b, outcome "a"/"b"/"tie"/"both_bad",
    voter); the other voter's battles are ignored. Rows are sorted by score, best first.
    `excluded_votes`: how many of `voter`'s votes the store left out (excluded sessions'), which
    the board reports."""
    if not 0 <= rounds <= MAX_ROUNDS:
        raise ValueError(f"rounds must be 0 to {MAX_ROUNDS}, got {rounds}")
    mine = [(a, b, outcome) for a, b, outcome, who in battles if who == voter]
    between = [(a, b, outcome) for a, b, outcome in mine if a != b]
    board = Leaderboard(
        voter, rounds, seed, len(between), len(mine) - len(between), 0, excluded_votes
    )
    if not between:
        board.message = _empty_message(voter, board.same_model_votes, excluded_votes)
        return board

    # 1. The models, and the battles as categories (a, b, outcome) with how often each occurred.
    models = sorted({m for a, b, _ in between for m in (a, b)})
    index = {model: i for i, model in enumerate(models)}
    categories: dict[tuple[int, int, str], int] = {}
    for a, b, outcome in between:
        key = (index[a], index[b], outcome)
        categories[key] = categories.get(key, 0) + 1
    keys = list(categories)
    counts = np.array([categories[key] for key in keys], dtype=float)
    first = np.array([i for i, _, _ in keys])
    second = np.array([j for _, j, _ in keys])
    weights = np.array([OUTCOME_WEIGHTS[outcome] for _, _, outcome in keys])

    # 2. The point scores, from every battle.
    scores = _scores(_win_matrix(len(models), first, second, weights, counts))

    # 3. The bootstrap: resample the battles with replacement (a multinomial draw over the
    #    categories is exactly that) and refit; a model without votes in a round has no score.
    lower = upper = None
    if rounds:
        rng = np.random.default_rng(seed)
        samples = np.full((rounds, len(models)), np.nan)
        for r in range(rounds):
            drawn = rng.multinomial(len(between), counts / counts.sum()).astype(float)
            present = np.bincount(first, drawn, len(models)) + np.bincount(
                second, drawn, len(models)
            )
            fitted = _scores(_win_matrix(len(models), first, second, weights, drawn))
            samples[r] = np.where(present > 0, fitted, np.nan)
        lower, upper = np.nanpercentile(samples, [2.5, 97.5], axis=0)

    # 4. The counts, the ranks and the rows, best first.
    tallies = {model: [0, 0, 0, 0] for model in models}  # votes, wins, losses, ties
    for a, b, outcome in between:
        for model, won, lost in ((a, "a", "b"), (b, "b", "a")):
            tally = tallies[model]
            tally[0] += 1
            tally[1 if outcome == won else 2 if outcome == lost else 3] += 1
    rows = []
    for i, model in enumerate(models):
        if lower is not None and upper is not None:
            rank = 1 + int(np.sum(lower > upper[i]))
            interval: tuple[float | None, float | None] = (float(lower[i]), float(upper[i]))
        else:
            rank = 1 + int(np.sum(scores > scores[i]))
            interval = (None, None)
        rows.append(LeaderboardRow(rank, model, float(scores[i]), *interval, *tallies[model]))
    board.rows = sorted(rows, key=lambda row: (-row.score, row.model))
    board.groups = _groups(len(models), first, second)
    if board.groups > 1:
        board.message = (
            f"the models form {board.groups} groups that were never compared with each other: "
            "scores compare only within a group (each group is centred on 1000)"
        )
    return board


def _win_matrix(
    n: int, first: np.ndarray, second: np.ndarray, weights: np.ndarray, counts: np.ndarray
) -> np.ndarray:
    """W[i, j]: the weight of i beating j, summed over the battles (`counts` of each category)."""
    wins = np.zeros((n, n))
    np.add.at(wins, (first, second), counts * weights[:, 0])
    np.add.at(wins, (second, first), counts * weights[:, 1])
    return wins


def _scores(wins: np.ndarray) -> np.ndarray:
    """Scores on the Elo-like scale that maximise the Bradley-Terry likelihood of `wins`,
    penalised by L2_STRENGTH / 2 * |beta|^2: Newton's method from beta = 0, halving a step
    while it does not lower the objective (strictly convex, so this converges)."""
    n = len(wins)
    beta = np.zeros(n)
    for _ in range(NEWTON_STEPS):
        p = _sigmoid(beta[:, None] - beta[None, :])  # p[i, j]: the chance that i beats j
        pressure = wins * (1 - p)  # how much each win of i over j pushes beta_i up
        gradient = pressure.sum(axis=0) - pressure.sum(axis=1) + L2_STRENGTH * beta
        curvature = (wins + wins.T) * p * (1 - p)
        hessian = np.diag(curvature.sum(axis=1)) - curvature + L2_STRENGTH * np.eye(n)
        step = np.linalg.solve(hessian, gradient)
        if np.max(np.abs(step)) < STEP_TOLERANCE:
            beta -= step
            break
        loss, size = _loss(wins, beta), 1.0
        while size > MIN_STEP and _loss(wins, beta - size * step) > loss:
            size /= 2
        beta -= size * step
    return INIT_SCORE + SCALE / math.log(BASE) * beta


def _loss(wins: np.ndarray, beta: np.ndarray) -> float:
    """The penalised negative log-likelihood: sum of W[i, j] * log(1 + exp(beta_j - beta_i))."""
    margins = beta[:, None] - beta[None, :]
    return float(np.sum(wins * np.logaddexp(0.0, -margins)) + L2_STRENGTH / 2 * beta @ beta)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1 + np.tanh(x / 2))  # 1 / (1 + exp(-x)), without overflow


def _groups(n: int, first: np.ndarray, second: np.ndarray) -> int:
    """How many groups of models are connected by battles (union-find)."""
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in zip(first.tolist(), second.tolist(), strict=True):
        parent[root(i)] = root(j)
    return len({root(i) for i in range(n)})


def _empty_message(voter: str, same_model_votes: int, excluded_votes: int) -> str:
    who = "people" if voter == "human" else "an automatic judge (machine votes)"
    besides = (
        f" (besides {excluded_votes} of excluded sessions, left out)" if excluded_votes else ""
    )
    if same_model_votes:
        return (
            f"no votes of {who} between two different models yet{besides}: the "
            f"{same_model_votes} votes so far each compare two answers of one model, which "
            "ranks nothing"
        )
    return f"no votes of {who} yet{besides}"
