"""The distribution as a user gets it: `python -m build` makes an sdist and a wheel, and the wheel,
installed non-editable into a fresh virtual environment with the engine's extra (resolved from
the lock), adds one top-level package, `alpaca_serve`; every command answers `--version`; and the
data the project uses by default travels inside it. Benchmarks, tools and tests stay out."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from alpaca_serve import __version__
from tests.support import ROOT
from tests.test_commands import SCRIPTS
from tests.test_install import installed_engine

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

# The folders of the checkout that are not part of the distribution.
NOT_SHIPPED = ["benchmarks", "tools", "tests", "docs", "scripts", "deploy"]
# The old top-level packages, which a name clash with any other distribution made a problem.
OLD_PACKAGES = ["server", "client", "demo", "training", "recover", "evaluation", "loop"]


def run(*command: str | Path, cwd: Path = ROOT) -> str:
    result = subprocess.run(
        [str(part) for part in command], cwd=cwd, capture_output=True, text=True, timeout=1500
    )
    assert result.returncode == 0, f"{command} failed:\n{result.stdout[-2000:]}{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    run(sys.executable, "-m", "build", "--outdir", out, ROOT)
    return out


@pytest.fixture(scope="module")
def venv(dist, tmp_path_factory) -> Path:
    """A fresh environment with the wheel and the engine's extra, pinned by the lock."""
    folder = tmp_path_factory.mktemp("wheel-venv")
    run(sys.executable, "-m", "venv", folder)
    [wheel] = dist.glob("*.whl")
    engine = installed_engine()
    run(
        folder / "bin" / "pip",
        "install",
        "--quiet",
        "--constraint",
        ROOT / "constraints" / f"{engine}.txt",
        f"{wheel}[serve-{engine}]",
    )
    return folder


def test_build_makes_an_sdist_and_a_wheel_of_one_top_level_package(dist):
    [sdist] = dist.glob("*.tar.gz")
    [wheel] = dist.glob("*.whl")
    assert sdist.name == f"alpaca_serve-{__version__}.tar.gz"
    with zipfile.ZipFile(wheel) as archive:
        top = {name.split("/", 1)[0] for name in archive.namelist()}
    assert top == {"alpaca_serve", f"alpaca_serve-{__version__}.dist-info"}


def test_installing_the_wheel_adds_exactly_one_top_level_package(venv):
    python = venv / "bin" / "python"
    script = (
        "import importlib.metadata as m, importlib.util as u, json, sys\n"
        "files = m.distribution('alpaca-serve').files\n"
        "top = sorted({f.parts[0] for f in files if f.parts[0] != '..'})\n"
        "found = [name for name in sys.argv[1:] if u.find_spec(name)]\n"
        "print(json.dumps({'top': top, 'found': found}))\n"
    )
    report = json.loads(run(python, "-c", script, *NOT_SHIPPED, *OLD_PACKAGES, cwd=venv))

    assert report["top"] == ["alpaca_serve", f"alpaca_serve-{__version__}.dist-info"]
    assert report["found"] == []  # no benchmarks, tools, tests or old top-level names


@pytest.mark.parametrize("command", SCRIPTS)
def test_every_command_of_the_installed_wheel_answers_its_version(venv, command):
    out = run(venv / "bin" / command, "--version", cwd=venv)
    assert out.strip() == f"{command} {__version__}"


def test_the_default_data_and_evaluation_sets_are_inside_the_installed_package(venv):
    python = venv / "bin" / "python"
    script = (
        "import json\n"
        "from alpaca_serve.evaluation import datasets\n"
        "from alpaca_serve.training.train import CONFIGS\n"
        "from alpaca_serve.core.project_model import PROJECT_MODEL_DIR\n"
        "paths = [datasets.EVALUATION_SET, datasets.DAVINCI_ANSWERS, datasets.ALPACA_SAMPLE,\n"
        "         datasets.SAMPLE_DATA / 'preference_pairs.jsonl', CONFIGS / 'fsdp.yaml',\n"
        "         PROJECT_MODEL_DIR / 'adapter_model.safetensors',\n"
        "         PROJECT_MODEL_DIR / 'alpaca_train.json']\n"
        "print(json.dumps([[str(p), p.is_file(), (p.parent / 'README.md').is_file()]\n"
        "                  for p in paths]))\n"
    )
    site = Path(run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"))
    for path, exists, has_note in json.loads(run(python, "-c", script, cwd=venv)):
        assert Path(path).is_relative_to(Path(str(site).strip()) / "alpaca_serve"), path
        assert exists, f"{path} is not in the wheel"
        if "configs" not in path:
            assert has_note, f"{path} has no licence note beside it"
