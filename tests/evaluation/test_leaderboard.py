"""The leaderboard of every model: Bradley-Terry scores checked against Chatbot Arena's own
computation (scikit-learn's logistic regression), the seeded bootstrap, ties, the kinds of voter
kept apart, the edge cases; the table, the chart, and `alpaca-eval leaderboard` against a server
whose store holds votes."""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys

import numpy as np
import pytest

from alpaca_serve.client.api import AlpacaClient
from alpaca_serve.evaluation.leaderboard import format_leaderboard, write_leaderboard_chart
from alpaca_serve.feedback.leaderboard import L2_STRENGTH, compute_leaderboard
from tests.support import ROOT, start_server

# Four models of known strength (beta), 600 votes between random pairs of them, about a fifth
# ties or "both bad": the fixed set of battles the reference check uses.
STRENGTHS = {"text-davinci-003": 1.2, "alpaca-7b": 0.8, "llama-7b": 0.0, "tiny-llama": -1.0}


def sampled_battles(count: int = 600, seed: int = 3, voter: str = "human") -> list[tuple]:
    rng = random.Random(seed)
    battles = []
    for _ in range(count):
        a, b = rng.sample(sorted(STRENGTHS), 2)
        roll = rng.random()
        if roll < 0.15:
            outcome = "tie"
        elif roll < 0.2:
            outcome = "both_bad"
        else:
            a_wins = rng.random() < 1 / (1 + math.exp(STRENGTHS[b] - STRENGTHS[a]))
            outcome = "a" if a_wins else "b"
        battles.append((a, b, outcome, voter))
    return battles


def arena_scores(battles: list[tuple], **penalty) -> dict[str, float]:
    """Chatbot Arena notebook's compute_mle_elo: a logistic regression without intercept on rows
    +ln(10) for model a, -ln(10) for model b; a tie is the battle twice, once won by each side,
    each of weight 0.5; score = 400 * coefficient + 1000."""
    from sklearn.linear_model import LogisticRegression

    models = sorted({m for a, b, _, _ in battles for m in (a, b)})
    column = {model: i for i, model in enumerate(models)}
    rows, labels, weights = [], [], []
    for a, b, outcome, _ in battles:
        row = np.zeros(len(models))
        row[column[a]], row[column[b]] = math.log(10), -math.log(10)
        if outcome in ("a", "b"):
            rows += [row]
            labels += [float(outcome == "a")]
            weights += [1.0]
        else:
            rows += [row, row]
            labels += [1.0, 0.0]
            weights += [0.5, 0.5]
    regression = LogisticRegression(fit_intercept=False, tol=1e-12, max_iter=10_000, **penalty)
    regression.fit(np.array(rows), np.array(labels), sample_weight=np.array(weights))
    return dict(zip(models, 400 * regression.coef_[0] + 1000, strict=True))


def scores_of(board) -> dict[str, float]:
    return {row.model: row.score for row in board.rows}


def test_scores_agree_with_chatbot_arenas_unpenalised_logistic_regression_within_a_tenth():
    battles = sampled_battles()
    ours = scores_of(compute_leaderboard(battles, rounds=0))
    reference = arena_scores(battles, C=math.inf)  # penalty=None in scikit-learn before 1.8

    differences = {model: abs(ours[model] - reference[model]) for model in reference}
    assert max(differences.values()) < 0.1, differences  # measured: 0.034 points
    assert sorted(ours, key=ours.get, reverse=True) == sorted(STRENGTHS, key=STRENGTHS.get)[::-1]


def test_scores_equal_the_same_regression_with_the_same_weak_penalty():
    # scikit-learn penalises 1/(2C) * |w|^2 with w = beta / ln(10); we penalise
    # L2_STRENGTH / 2 * |beta|^2: the same objective for C = 1 / (L2_STRENGTH * ln(10)^2).
    battles = sampled_battles()
    ours = scores_of(compute_leaderboard(battles, rounds=0))
    reference = arena_scores(battles, C=1 / (L2_STRENGTH * math.log(10) ** 2))

    assert max(abs(ours[m] - reference[m]) for m in reference) < 1e-3  # measured: 4e-8


def test_the_bootstrap_is_seeded_and_its_intervals_hold_the_scores():
    battles = sampled_battles()
    first = compute_leaderboard(battles, rounds=100, seed=11)
    again = compute_leaderboard(battles, rounds=100, seed=11)
    other = compute_leaderboard(battles, rounds=100, seed=12)

    assert first.rows == again.rows
    assert [(r.lower, r.upper) for r in other.rows] != [(r.lower, r.upper) for r in first.rows]
    for row in first.rows:
        assert row.lower < row.score < row.upper
        assert row.upper - row.lower < 150  # 300 votes a model: tens of points, not hundreds
    # The two strongest overlap (1.2 vs 0.8 over ~100 votes); the rest are told apart.
    assert [row.rank for row in first.rows] == [1, 1, 3, 4]


def test_a_tie_counts_as_half_a_win_each_way():
    # 30 wins and 30 ties of A over B: 45 to 15 in half-wins, odds of 3 to 1, which on the Elo
    # scale is 400 * log10(3) = 190.8 points apart.
    battles = [("A", "B", "a", "human")] * 30 + [("A", "B", "tie", "human")] * 30
    scores = scores_of(compute_leaderboard(battles, rounds=0))
    assert scores["A"] - scores["B"] == pytest.approx(400 * math.log10(3), abs=0.5)
    both_bad = [(a, b, "both_bad" if o == "tie" else o, v) for a, b, o, v in battles]
    assert scores_of(compute_leaderboard(both_bad, rounds=0)) == scores
    [a, b] = compute_leaderboard(battles, rounds=0).rows
    assert (a.model, a.votes, a.wins, a.losses, a.ties) == ("A", 60, 30, 0, 30)
    assert (b.model, b.votes, b.wins, b.losses, b.ties) == ("B", 60, 0, 30, 30)


def test_only_ties_leave_every_model_at_1000():
    board = compute_leaderboard([("A", "B", "tie", "human")] * 5, rounds=20)
    assert [(row.score, row.rank) for row in board.rows] == [
        (pytest.approx(1000), 1),
        (pytest.approx(1000), 1),
    ]


def test_people_and_machines_are_never_mixed():
    people = [("A", "B", "a", "human")] * 6 + [("A", "B", "b", "human")] * 2
    machines = [("A", "B", "b", "machine")] * 9 + [("A", "C", "a", "machine")] * 3
    battles = people + machines

    human = compute_leaderboard(battles, voter="human", rounds=0)
    machine = compute_leaderboard(battles, voter="machine", rounds=0)

    assert ([row.model for row in human.rows], human.votes) == (["A", "B"], 8)
    assert scores_of(human) == scores_of(compute_leaderboard(people, rounds=0))
    assert ([row.model for row in machine.rows], machine.votes) == (["B", "A", "C"], 12)
    assert machine.voter == "machine"


def test_no_votes_make_an_empty_board_that_says_so():
    board = compute_leaderboard([("A", "B", "a", "machine")], voter="human")
    assert (board.rows, board.votes, board.same_model_votes) == ([], 0, 0)
    assert board.message == "no votes of people yet"
    assert compute_leaderboard([], voter="machine").message.startswith("no votes of an automatic")


def test_votes_between_answers_of_one_model_rank_nothing_and_are_counted_apart():
    only_itself = compute_leaderboard([("base", "base", "a", "human")] * 3)
    assert (only_itself.rows, only_itself.votes, only_itself.same_model_votes) == ([], 0, 3)
    assert "compare two answers of one model" in only_itself.message

    mixed = compute_leaderboard(
        [("base", "base", "a", "human"), ("base", "lora", "b", "human")], rounds=0
    )
    assert [(row.model, row.votes) for row in mixed.rows] == [("lora", 1), ("base", 1)]
    assert (mixed.votes, mixed.same_model_votes) == (1, 1)


def test_a_model_that_won_every_vote_gets_a_finite_score_on_top():
    board = compute_leaderboard([("A", "B", "a", "human")] * 4 + [("B", "C", "a", "human")] * 4)
    assert [row.model for row in board.rows] == ["A", "B", "C"]
    assert all(math.isfinite(row.score) for row in board.rows)
    assert all(math.isfinite(row.lower) and math.isfinite(row.upper) for row in board.rows)


def test_groups_never_compared_with_each_other_are_each_centred_on_1000_and_flagged():
    battles = [("A", "B", "a", "human")] * 3 + [("A", "B", "b", "human")]
    battles += [("X", "Y", "a", "human")] * 2 + [("X", "Y", "b", "human")] * 2
    board = compute_leaderboard(battles, rounds=0)
    scores = scores_of(board)

    assert board.groups == 2
    assert (scores["A"] + scores["B"]) / 2 == pytest.approx(1000)
    assert scores["X"] == pytest.approx(1000) and scores["Y"] == pytest.approx(1000)
    assert "2 groups" in board.message


def test_the_rounds_are_bounded():
    with pytest.raises(ValueError, match="rounds must be 0 to 1000"):
        compute_leaderboard([], rounds=1001)


def test_the_fit_needs_numpy_only():
    code = (
        "import sys\n"
        "from alpaca_serve.feedback.leaderboard import compute_leaderboard\n"
        "compute_leaderboard([('A', 'B', 'a', 'human'), ('A', 'B', 'b', 'human')], rounds=5)\n"
        "print(sorted({'sklearn', 'scipy', 'torch', 'pandas'} & set(sys.modules)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert result.stdout.strip() == "[]"


def test_the_table_lists_models_best_first_with_interval_and_counts():
    board = compute_leaderboard(sampled_battles(), rounds=50, seed=1).as_dict()
    text = format_leaderboard(board)
    lines = text.splitlines()

    assert lines[0].startswith("Human votes: 600 votes between two models; 95% intervals from 50")
    assert lines[1].split() == [
        *("rank", "model", "score", "95%", "interval", "votes", "wins", "losses", "ties")
    ]
    assert [line.split()[1] for line in lines[2:]] == [row["model"] for row in board["rows"]]
    first = board["rows"][0]
    assert f"{first['lower']:.0f} to {first['upper']:.0f}" in lines[2]


def test_the_machine_board_and_an_empty_board_say_what_they_are():
    machine = compute_leaderboard([("A", "B", "a", "machine")], voter="machine", rounds=0)
    assert format_leaderboard(machine.as_dict()).startswith(
        "MACHINE VOTES (automatic judge, not people): 1 votes between two models"
    )
    empty = format_leaderboard(compute_leaderboard([]).as_dict())
    assert empty.splitlines()[1] == "  no votes of people yet"


def test_the_chart_is_a_png_of_each_board(tmp_path):
    boards = {
        "human": compute_leaderboard(sampled_battles(), rounds=20).as_dict(),
        "machine": compute_leaderboard([], voter="machine").as_dict(),
    }
    path = tmp_path / "charts" / "leaderboard.png"
    write_leaderboard_chart(path, boards)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# `alpaca-eval leaderboard` against a server whose store has votes.


def alpaca_eval(*args, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "alpaca_serve.evaluation.cli", *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


@pytest.fixture(scope="module")
def voted_server(request, tmp_path_factory):
    """A server on the scripted engine whose store holds people's votes (ours beats theirs 3
    to 1) and a judge's (theirs beats ours 2 to 0)."""
    server = start_server(request, "scripted", {}, tmp_path_factory.mktemp("leaderboard-cli"))
    answers = [{"instruction": f"Question {n}?", "output": f"Answer {n}."} for n in range(4)]
    try:
        with AlpacaClient(server.url) as client:
            ours = client.import_generations("ours", answers)
            theirs = client.import_generations("theirs", answers)
            for n, winner in enumerate([ours, ours, ours, theirs]):
                client.send_comparison([ours[n], theirs[n]], winner[n], f"person-{n}")
            for n in range(2):
                client.send_comparison([ours[n], theirs[n]], theirs[n], f"judge-{n}", "machine")
        yield server
    finally:
        server.stop()


def test_the_command_prints_peoples_board_and_writes_the_chart_and_json(voted_server, tmp_path):
    chart, out = tmp_path / "board.png", tmp_path / "board.json"
    result = alpaca_eval(
        *("leaderboard", "--server-url", voted_server.url, "--rounds", "50", "--seed", "4"),
        *("--chart", chart, "--json", out),
    )

    lines = result.stdout.splitlines()
    assert lines[0] == (
        "Human votes: 4 votes between two models; 95% intervals from 50 bootstrap rounds, seed 4"
    )
    assert [line.split()[:2] for line in lines[2:4]] == [["1", "ours"], ["1", "theirs"]]
    assert lines[2].split()[-4:] == ["4", "3", "1", "0"]  # votes, wins, losses, ties
    assert "MACHINE" not in result.stdout
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    written = json.loads(out.read_text())
    assert list(written) == ["human"]
    assert written["human"]["rounds"] == 50 and written["human"]["seed"] == 4
    assert [row["model"] for row in written["human"]["rows"]] == ["ours", "theirs"]


def test_include_machine_prints_the_judges_board_separately_and_named_so(voted_server, tmp_path):
    out = tmp_path / "boards.json"
    result = alpaca_eval(
        "leaderboard", "--server-url", voted_server.url, "--include-machine", "--json", out
    )

    people, machines = result.stdout.split("\n\n")[:2]
    assert people.startswith("Human votes: 4 votes")
    assert machines.startswith("MACHINE VOTES (automatic judge, not people): 2 votes")
    assert [line.split()[1] for line in machines.splitlines()[2:4]] == ["theirs", "ours"]
    assert json.loads(out.read_text())["machine"]["votes"] == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--rounds", "1001"], "--rounds must be 0 to 1000, got 1001"),
        (["--seed", "-1"], "--seed must be 0 to 4294967295, got -1"),
        (["--chart", "board.svg"], "--chart must name a .png file, got board.svg"),
        (["--json", "/no/such/folder/board.json"], "cannot write /no/such/folder/board.json"),
    ],
)
def test_bad_options_are_one_error_line_and_a_failing_status(voted_server, args, message):
    result = alpaca_eval("leaderboard", "--server-url", voted_server.url, *args, check=False)
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("alpaca-eval leaderboard: error: ") and message in line


def test_an_unreachable_server_is_one_error_line():
    from tests.support import free_port

    result = alpaca_eval(
        "leaderboard", "--server-url", f"http://127.0.0.1:{free_port()}", check=False
    )
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("alpaca-eval leaderboard: error: ")


def test_the_store_of_a_stopped_server_is_read_directly_to_the_same_board(voted_server, tmp_path):
    alpaca_eval(
        *("leaderboard", "--server-url", voted_server.url, "--include-machine"),
        *("--json", tmp_path / "served.json"),
    )
    served = json.loads((tmp_path / "served.json").read_text())

    result = alpaca_eval(
        *("leaderboard", "--data-dir", voted_server.data_dir, "--include-machine"),
        *("--json", tmp_path / "read.json"),
    )

    assert json.loads((tmp_path / "read.json").read_text()) == served
    assert result.stdout.startswith("Human votes: 4 votes")
    missing = alpaca_eval("leaderboard", "--data-dir", tmp_path, check=False)
    assert missing.returncode == 2
    assert missing.stderr.strip() == (
        f"alpaca-eval leaderboard: error: no feedback store at {tmp_path / 'alpaca.sqlite3'}"
    )
