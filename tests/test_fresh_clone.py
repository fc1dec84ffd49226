"""Repository rules, besides the shipped data's own checks: a fresh clone stands alone and its
tests tell the truth. The data the project uses by default ships with it: the files are package
data, they parse with the project's own readers, each carries its licence note, and nothing reads
a folder beside the checkout (a user's clone has only the repository). And no test skips for want
of a program or package: it fails, naming what to install.
"""

from __future__ import annotations

import fnmatch
import re
import subprocess
from pathlib import Path

import pytest

from alpaca_serve.evaluation.answers import load_answers, load_instructions
from alpaca_serve.evaluation.comparison import match_key
from alpaca_serve.evaluation.datasets import ALPACA_SAMPLE, DAVINCI_ANSWERS, EVALUATION_SET
from alpaca_serve.training.data import load_records
from tests.support import ROOT

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pip's own copy of the same parser
    from pip._vendor import tomli as tomllib

SHIPPED = [EVALUATION_SET, DAVINCI_ANSWERS, ALPACA_SAMPLE]


def test_the_evaluation_set_loads_all_252_instructions():
    items = load_instructions(EVALUATION_SET)

    assert len(items) == 252
    assert sum(1 for item in items if item["input"]) == 208
    assert all(item["motivation_app"] for item in items)


def test_the_davinci_answers_answer_every_instruction_of_the_evaluation_set():
    answers = load_answers(DAVINCI_ANSWERS)
    instructions = load_instructions(EVALUATION_SET)

    assert len(answers) == 252
    assert all(answer["output"] for answer in answers)
    assert {match_key(a["instruction"], a["input"]) for a in answers} == {
        match_key(i["instruction"], i["input"]) for i in instructions
    }


def test_the_alpaca_sample_loads_all_200_records():
    assert len(load_records(ALPACA_SAMPLE)) == 200


@pytest.mark.parametrize(
    ("data", "licence", "source"),
    [
        (EVALUATION_SET, "Apache-2.0", "yizhongw/self-instruct"),
        (DAVINCI_ANSWERS, "Apache-2.0", "yizhongw/self-instruct"),
        (ALPACA_SAMPLE, "CC BY-NC 4.0", "tatsu-lab/stanford_alpaca"),
    ],
    ids=lambda value: value.name if hasattr(value, "name") else None,
)
def test_each_file_has_a_note_beside_it_naming_its_source_and_licence(data, licence, source):
    note = (data.parent / "README.md").read_text(encoding="utf-8")

    assert f"`{data.name}`" in note
    assert licence in note and source in note
    if "NC" in licence:
        assert "non-commercial" in note.lower()


def test_pip_install_carries_every_shipped_file_and_its_note():
    """setuptools' package-data patterns match each file, so a non-editable install (the Docker
    image) has them too."""
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]
    for data in [*SHIPPED, *(path.parent / "README.md" for path in SHIPPED)]:
        top, name, relative = data.relative_to(ROOT).as_posix().split("/", 2)
        package = f"{top}.{name}"
        matching = [p for p in patterns.get(package, []) if fnmatch.fnmatch(relative, p)]
        assert matching, f"{package}/{relative} is not package data in pyproject.toml"


# A path into the data folder beside the checkout: "../shared", or "shared" as a path part.
BESIDE_THE_CHECKOUT = re.compile(r"\.\./shared\b|[\"']shared[\"']|/ ?shared/data")


def test_no_file_of_the_project_points_at_the_folder_beside_the_checkout():
    tracked = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    checked = [
        name
        for name in tracked
        if name.endswith((".py", ".md", ".toml", ".yml", ".yaml", ".cfg"))
        or name.startswith(("scripts/", ".ci/", "Dockerfile", "Makefile"))
    ]
    this_test = Path(__file__).resolve().relative_to(ROOT).as_posix()
    offenders = [
        f"{name}:{number}: {line.strip()}"
        for name in checked
        if name != this_test and (ROOT / name).is_file()
        for number, line in enumerate((ROOT / name).read_text(errors="replace").splitlines(), 1)
        if BESIDE_THE_CHECKOUT.search(line)
    ]
    assert checked
    assert not offenders, "\n".join(offenders)


def test_no_test_skips_for_want_of_something_to_install():
    """A missing program, database or package fails the test with a one-line message naming the
    command that installs it (scripts/test-deps, the test extra): a skip would read as a pass."""
    skipping = re.compile(r"pytest\.(skip|importorskip)\(|mark\.skip(if)?\b")
    this_test = Path(__file__).resolve()
    offenders = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in sorted((ROOT / "tests").rglob("*.py"))
        if path != this_test
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if skipping.search(line)
    ]
    assert not offenders, "\n".join(offenders)
