"""AlpacaEval's files in and out of `alpaca-eval`: model outputs written by `answer --format
alpaca-eval` and read by `compare`, published model outputs read as AlpacaEval writes them, bad
files refused in one line, and the votes of the feedback store written as AlpacaEval annotations
(on SQLite and PostgreSQL). The servers run the scripted engine with the real feedback store."""

from __future__ import annotations

import json
from contextlib import ExitStack
from pathlib import Path

import pytest

from alpaca_serve.client.api import AlpacaClient
from alpaca_serve.evaluation.answers import load_answers
from alpaca_serve.evaluation.cli import main
from alpaca_serve.evaluation.comparison import Vote, cast_vote, match_key
from alpaca_serve.evaluation.datasets import DAVINCI_ANSWERS as DAVINCI
from alpaca_serve.evaluation.datasets import EVALUATION_SET
from tests.server.conftest import postgres_schema_url
from tests.support import CommandResult, free_port, run_command, start_server

# Three items of AlpacaEval's results/alpaca-7b/model_outputs.json (tatsu-lab/alpaca_eval at
# cd543a1), keys in its order: two of the evaluation set's first instructions, whose input it
# joins to the instruction with a blank line, and one of its own (helpful_base).
PUBLISHED_MODEL_OUTPUTS = """[
  {
    "instruction":"The sentence you are given might be too wordy, complicated, or unclear. \
Rewrite the sentence and make your writing clearer by keeping it concise. Whenever possible, \
break complex sentences into multiple sentences and eliminate unnecessary words.\\n\\nIf you have \
any questions about my rate or if you find it necessary to increase or decrease the scope for \
this project, please let me know.",
    "dataset":"selfinstruct",
    "output":"If you have any questions about my rate or need to adjust the scope of this \
project, please let me know.",
    "generator":"alpaca-7b"
  },
  {
    "instruction":"What are the names of some famous actors that started their careers on \
Broadway?",
    "dataset":"helpful_base",
    "output":"Some famous actors that started their careers on Broadway include: Tom Hanks, \
Meryl Streep, Laurence Olivier, Christopher Walken, and Jeremy Irons.",
    "generator":"alpaca-7b"
  },
  {
    "instruction":"Rewrite the given text and correct grammar, spelling, and punctuation \
errors.\\n\\nIf you'd told me year ago that today I would finish a marathon, I would of laughed. \
Your support had a huge affect on me!",
    "dataset":"selfinstruct",
    "output":"If you had told me a year ago that today I would finish a marathon, I would have \
laughed. Your support had a huge affect on me!",
    "generator":"alpaca-7b"
  }
]
"""


def alpaca_eval(capsys, *args, check: bool = True) -> CommandResult:
    """`alpaca-eval ARGS` run in this process (the scripted servers live in it too)."""
    result = run_command(main, [str(arg) for arg in args], capsys)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def answer(capsys, server, out: Path, *extra: str) -> CommandResult:
    """The server's answers to the evaluation set's first three instructions (the first has an
    input), greedy and short."""
    return alpaca_eval(
        capsys,
        *("answer", "--server-url", server.url, "--limit", "3", "--max-new-tokens", "12"),
        *("--temperature", "0", "--no-progress", "--out", out, *extra),
    )


def compare(capsys, server, a: Path, b: Path, out: Path, *extra: str) -> dict:
    alpaca_eval(
        capsys,
        *("compare", "--a", a, "--b", b, "--seed", "5", "--server-url", server.url),
        *("--out", out, *extra),
    )
    return json.loads(out.read_text())


def side(pair: dict, origin: str) -> dict:
    return pair["left"] if pair["left_is"] == origin else pair["right"]


def evaluation_items(count: int) -> list[dict]:
    return [json.loads(line) for line in EVALUATION_SET.read_text().splitlines()[:count]]


def test_answers_written_as_alpaca_eval_model_outputs_come_back_through_compare(
    scripted_server, tmp_path, capsys
):
    ours, outputs = tmp_path / "ours.jsonl", tmp_path / "model_outputs.json"
    answer(capsys, scripted_server, ours)

    result = answer(capsys, scripted_server, outputs, "--format", "alpaca-eval")

    model = scripted_server.settings.served_model_name
    assert f"wrote 3 AlpacaEval model outputs of {model} to {outputs}" in result.stdout
    records = [json.loads(line) for line in ours.read_text().splitlines()]
    written = json.loads(outputs.read_text())
    # A JSON list of instruction, output and generator only; the input joined by a blank line.
    first = evaluation_items(1)[0]
    assert first["instances"][0]["input"]
    assert written[0]["instruction"] == (
        f"{first['instruction']}\n\n{first['instances'][0]['input']}"
    )
    assert [set(item) for item in written] == [{"instruction", "output", "generator"}] * 3
    assert [item["output"] for item in written] == [r["output"] for r in records]
    assert {item["generator"] for item in written} == {model}
    # compare reads it back: the same instructions and outputs, labelled by the generator, and
    # paired with text-davinci-003's answers to the same instruction and input.
    built = compare(capsys, scripted_server, outputs, DAVINCI, tmp_path / "vs-davinci.json")
    assert built["labels"] == [model, "text-davinci-003"]
    assert built["unmatched"]["a"] == 0 and len(built["pairs"]) == 3
    davinci = {match_key(a["instruction"], a["input"]): a["output"] for a in load_answers(DAVINCI)}
    by_instruction = {item["instruction"]: item["output"].strip() for item in written}
    for pair in built["pairs"]:
        assert side(pair, "a")["output"] == by_instruction[pair["instruction"]]
        assert side(pair, "b")["output"] == davinci[match_key(pair["instruction"], "")]
    # ... and pairs with this project's answer file of the same answers, input and all.
    both = compare(
        capsys, scripted_server, ours, outputs, tmp_path / "both.json", "--label-a", "jsonl"
    )
    assert both["labels"] == ["jsonl", model] and len(both["pairs"]) == 3
    assert all(p["left"]["output"] == p["right"]["output"] for p in both["pairs"])
    # --generator names the model in the file, and so the side.
    named = tmp_path / "named.json"
    answer(capsys, scripted_server, named, "--format", "alpaca-eval", "--generator", "tiny-7b")
    assert {item["generator"] for item in json.loads(named.read_text())} == {"tiny-7b"}
    relabelled = compare(capsys, scripted_server, named, DAVINCI, tmp_path / "named-cmp.json")
    assert relabelled["labels"] == ["tiny-7b", "text-davinci-003"]


def test_published_alpaca_eval_outputs_are_compared_on_the_instructions_both_sides_have(
    scripted_server, tmp_path, capsys
):
    published = tmp_path / "model_outputs.json"
    published.write_text(PUBLISHED_MODEL_OUTPUTS, encoding="utf-8")

    built = compare(capsys, scripted_server, published, DAVINCI, tmp_path / "alpaca-7b.json")

    # Labelled by its generator; its helpful_base item has no partner in the evaluation set.
    assert built["labels"] == ["alpaca-7b", "text-davinci-003"]
    assert built["unmatched"] == {"a": 1, "b": 250}
    items = json.loads(PUBLISHED_MODEL_OUTPUTS)
    assert sorted(side(p, "a")["output"] for p in built["pairs"]) == sorted(
        items[i]["output"] for i in (0, 2)
    )
    assert all(side(p, "b")["generation_id"].startswith("gen-") for p in built["pairs"])


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (
            [
                {"instruction": "Name a colour.", "output": "Red.", "generator": "a"},
                {"instruction": "Name a fruit.", "output": "Fig.", "generator": "b"},
            ],
            "outputs of 2 generators (a, b)",
        ),
        ([{"instruction": "Name a colour.", "generator": "a"}], "record 0: no `output`"),
        (
            [{"instruction": "Name a colour.", "output": None, "generator": "a"}],
            "record 0: `output` is null, not text",
        ),
        (
            [{"instruction": "Name a colour.", "output": "Red.", "generator": ""}],
            "record 0: `generator` is empty",
        ),
        (
            [
                {"instruction": "Name a colour.", "output": "Red.", "generator": "a"},
                {"instruction": 7, "output": "Seven.", "generator": "a"},
            ],
            "record 1: `instruction` is a number, not text",
        ),
        ('[{"instruction": "Name a colour.", "output": "Red.", "generator": "a"', "not valid JSON"),
    ],
    ids=["two-generators", "no-output", "null-output", "empty-generator", "number", "truncated"],
)
def test_a_bad_alpaca_eval_file_is_refused_in_one_line_naming_it(
    tmp_path, capsys, content, problem
):
    bad = tmp_path / "outputs.json"
    bad.write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")
    out = tmp_path / "comparison.json"
    nobody = f"http://127.0.0.1:{free_port()}"

    result = alpaca_eval(
        capsys, "compare", "--a", bad, "--server-url", nobody, "--out", out, check=False
    )

    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    assert line.startswith(f"alpaca-eval compare: error: {bad}")
    assert problem in line
    assert not out.exists()


def test_generator_is_refused_for_this_projects_answer_format(tmp_path, capsys):
    out = tmp_path / "ours.jsonl"
    result = alpaca_eval(capsys, "answer", "--generator", "x", "--out", out, check=False)

    assert result.returncode == 2
    assert result.stderr == "alpaca-eval answer: error: --generator is for --format alpaca-eval\n"
    assert not out.exists()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def store_server(request, tmp_path_factory):
    """A server whose feedback store is SQLite (in its data folder) or a fresh PostgreSQL
    schema."""
    with ExitStack() as stack:
        env = {}
        if request.param == "postgresql":
            env["ALPACA_DATABASE_URL"] = stack.enter_context(postgres_schema_url())
        folder = tmp_path_factory.mktemp(f"store-{request.param}")
        server = start_server(request, "scripted", env, folder)
        stack.callback(server.stop)
        assert server.settings.store_url.startswith(f"{request.param}://")
        yield server


def test_votes_are_written_as_alpaca_eval_annotations_people_apart_from_machines(
    store_server, tmp_path, capsys
):
    ours = tmp_path / "ours.jsonl"
    answer(capsys, store_server, ours)
    path = tmp_path / "comparison.json"
    pairs = compare(capsys, store_server, ours, DAVINCI, path, "--label-a", "tiny")["pairs"]
    people = [("pair-000", "alice", "left"), ("pair-000", "bob", "right")]
    people += [("pair-001", "alice", "tie"), ("pair-002", "alice", "both_bad")]
    for pair_id, session, winner in people:
        alpaca_eval(
            capsys,
            *("vote", "--comparison", path, "--pair-id", pair_id, "--winner", winner),
            *("--session-id", session),
        )
    with AlpacaClient(store_server.url) as store:
        cast_vote(store, pairs[1], Vote("pair-001", "right", "machine", "judge-fake"))
    out = tmp_path / "annotations.json"

    result = alpaca_eval(capsys, "annotations", "--comparison", path, "--out", out)

    assert (
        f"wrote 4 annotations to {out} (output_1: text-davinci-003, output_2: tiny): 4 by "
        "people (annotator human); 1 both_bad votes written as preference 1.5, as ties"
    ) in result.stdout
    assert "(1 machine votes left out; add --include-machine)" in result.stdout
    # Field by field: output_1 is text-davinci-003's (side B), output_2 ours (side A);
    # preference 1.0 when B won, 2.0 when A won, 1.5 for a tie and for both bad.
    items = {item["id"]: item for item in evaluation_items(3)}
    answers = {a["instruction"]: a for a in load_answers(ours)}
    davinci = {match_key(a["instruction"], a["input"]): a["output"] for a in load_answers(DAVINCI)}

    def expected(pair_id: str, winner: str, annotator: str) -> dict:
        pair = next(p for p in pairs if p["pair_id"] == pair_id)
        ours_answer = answers[pair["instruction"]]
        item = items[ours_answer["id"]]
        given = item["instances"][0]["input"]
        won = pair["left_is"] if winner == "left" else {"a": "b", "b": "a"}[pair["left_is"]]
        return {
            "instruction": item["instruction"] + (f"\n\n{given}" if given else ""),
            "output_1": davinci[match_key(item["instruction"], given)],
            "generator_1": "text-davinci-003",
            "output_2": ours_answer["output"],
            "generator_2": "tiny",
            "annotator": annotator,
            "preference": ({"a": 2.0, "b": 1.0}[won] if winner in ("left", "right") else 1.5),
        }

    assert json.loads(out.read_text()) == [
        expected(pair_id, winner, "human") for pair_id, _, winner in people
    ]
    # AlpacaEval's win rate counts preference 2 as a win of output_2: the report's wins of A.
    summary = tmp_path / "report.json"
    alpaca_eval(capsys, "report", "--comparison", path, "--json", summary)
    counts = json.loads(summary.read_text())["human"]
    preferences = [item["preference"] for item in json.loads(out.read_text())]
    assert (preferences.count(2.0), preferences.count(1.0)) == (
        counts["a_wins"],
        counts["b_wins"],
    )
    # --include-machine adds the judge's vote under its session, after people's on that pair.
    with_machine = alpaca_eval(
        capsys, "annotations", "--comparison", path, "--out", out, "--include-machine"
    )
    assert "wrote 5 annotations" in with_machine.stdout
    assert "; by machines: judge-fake 1" in with_machine.stdout
    assert json.loads(out.read_text()) == [
        expected("pair-000", "left", "human"),
        expected("pair-000", "right", "human"),
        expected("pair-001", "tie", "human"),
        expected("pair-001", "right", "judge-fake"),
        expected("pair-002", "both_bad", "human"),
    ]


def test_a_comparison_without_votes_of_people_gives_no_annotations_file(
    store_server, tmp_path, capsys
):
    ours = tmp_path / "ours.jsonl"
    answer(capsys, store_server, ours)
    path = tmp_path / "comparison.json"
    pairs = compare(capsys, store_server, ours, DAVINCI, path)["pairs"]
    with AlpacaClient(store_server.url) as store:
        cast_vote(store, pairs[0], Vote(pairs[0]["pair_id"], "left", "machine", "judge-fake"))
    out = tmp_path / "annotations.json"

    result = alpaca_eval(capsys, "annotations", "--comparison", path, "--out", out, check=False)

    assert result.returncode == 2
    assert result.stderr == (
        f"alpaca-eval annotations: error: no votes of people on the pairs of {path} "
        "(1 machine votes: add --include-machine)\n"
    )
    assert not out.exists()
