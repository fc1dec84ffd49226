"""The compiled engine when its cache is warm, eager otherwise, and the cache filled in the
background.

Usage (server/engine.py and server/app.py):
    mode = choose_mode(settings, model_path, device, dtype, block_size)
    ... build the engine with enforce_eager=not mode.compiled ...
    if mode.compiled: mark_warm(settings, mode.key)        # the next start knows
    filler = BackgroundCompile.start(settings, model_path)  # cold, in `alpaca-serve` only
    filler.stop()                                           # at shutdown (it goes on next start)

A compiled engine decodes faster on CPU (1.1-1.3x, docs/results.md) but its first start compiles
for minutes; later starts load vLLM's and torch inductor's caches (compile_cache_dir) in about
20 s more than an eager start. With `ALPACA_ENFORCE_EAGER=auto` (the default) the server uses the
compiled engine when a marker says a compiled engine of the same model and engine settings has
started before with this cache folder (the warm marker, written after every compiled start),
and the eager engine otherwise; then `alpaca-serve` (the command) starts `python -m
alpaca_serve.server.compile_fill` at the lowest CPU priority, which builds the compiled engine
once to fill the cache, writes the marker and exits, while the server answers with its eager
engine. The next start is compiled. A failed fill writes a marker of its own, so it is not tried
again for the same key (delete it from `warm/` to retry).

The key covers what changes the compiled model: the model folder (its path, and the size and
time of its files), dtype, context length, batch size, block size, parallelism, speculation,
and the versions of vLLM and torch. Adapters turn compilation off in vLLM's CPU build: with
adapters the engine is eager.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from alpaca_serve.server.settings import ServerSettings

log = logging.getLogger("alpaca.engine")

WARM_FOLDER = "warm"
FILL_LOG = "fill.log"


@dataclass(frozen=True)
class EngineMode:
    """How this start's engine runs: compiled or not, why, and whether to fill the cache."""

    compiled: bool
    reason: str  # one phrase for the log: "compiled engine (its cache is warm)"
    key: str  # the cache key of the model and engine settings
    fill: bool = False  # the cache is cold, and a background fill may warm it


def _version(package: str) -> str:
    for name in (package, f"{package}-cpu"):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return "none"


def _model_fingerprint(model_path: Path) -> list[tuple[str, int, int]]:
    """The model folder's files (name, size, modification time): a changed model is a new key."""
    try:
        files = sorted(p for p in model_path.iterdir() if p.is_file())
    except OSError:
        return []
    return [(p.name, p.stat().st_size, int(p.stat().st_mtime)) for p in files]


def cache_key(
    settings: ServerSettings, model_path: Path, device: str, dtype: str, block_size: int | None
) -> str:
    """A short hash of everything that changes the compiled model."""
    factors = {
        "model": str(model_path.resolve()),
        "files": _model_fingerprint(model_path),
        "device": device,
        "dtype": dtype,
        "max_model_len": settings.max_model_len,
        "max_num_seqs": settings.max_num_seqs,
        "block_size": block_size,
        "tensor_parallel_size": settings.tensor_parallel_size,
        "speculative": [
            settings.speculative,
            settings.speculative_tokens,
            settings.prompt_lookup_min,
            settings.prompt_lookup_max,
        ],
        "vllm": _version("vllm"),
        "torch": _version("torch"),
    }
    return hashlib.sha256(json.dumps(factors, sort_keys=True).encode()).hexdigest()[:16]


def warm_marker(settings: ServerSettings, key: str) -> Path:
    return settings.compile_cache_root / WARM_FOLDER / f"{key}.json"


def failed_marker(settings: ServerSettings, key: str) -> Path:
    return settings.compile_cache_root / WARM_FOLDER / f"{key}.failed"


def is_warm(settings: ServerSettings, key: str) -> bool:
    """A compiled engine of this key has started with this cache folder, and the cache is there."""
    # On CPU the compiled kernels are torch inductor's (vLLM keeps no graph cache of its own
    # there), in the folder configure_compile_caches names unless the operator named another.
    kernels = os.environ.get("TORCHINDUCTOR_CACHE_DIR") or settings.compile_cache_root / "inductor"
    return warm_marker(settings, key).is_file() and Path(kernels).is_dir()


def mark_warm(settings: ServerSettings, key: str, model_path: Path, seconds: float) -> None:
    """Record that the compiled engine of `key` started (its cache is warm)."""
    marker = warm_marker(settings, key)
    try:
        marker.parent.mkdir(parents=True, exist_ok=True)
        body = {"model": str(model_path), "load_s": round(seconds, 1), "at": time.time()}
        marker.write_text(json.dumps(body) + "\n")
        failed_marker(settings, key).unlink(missing_ok=True)
    except OSError as err:  # a read-only cache: the next start is eager again, nothing worse
        log.warning("could not record the warm compile cache in %s: %s", marker, err)


def compiler_missing(device: str) -> bool:
    """On CPU, torch inductor compiles C++: without a compiler the compiled engine cannot run."""
    return device == "cpu" and not (shutil.which("g++") or shutil.which("c++"))


def choose_mode(
    settings: ServerSettings, model_path: Path, device: str, dtype: str, block_size: int | None
) -> EngineMode:
    """Compiled or eager, from ALPACA_ENFORCE_EAGER (true, false or auto) and the cache of the
    compiled engine, which runs in `dtype`."""
    key = cache_key(settings, model_path, device, dtype, block_size)
    if settings.enforce_eager is True:
        return EngineMode(False, "eager engine (ALPACA_ENFORCE_EAGER=true)", key)
    if settings.enforce_eager is False:
        warmth = "its cache is warm" if is_warm(settings, key) else "compiling first: minutes"
        return EngineMode(True, f"compiled engine (ALPACA_ENFORCE_EAGER=false, {warmth})", key)
    if settings.serves_adapters:
        hint = (
            "; ALPACA_PROJECT_MODEL=false serves the base model alone, compiled"
            if settings.serves_project_model
            else ""
        )
        return EngineMode(False, f"eager engine (adapters turn compilation off{hint})", key)
    if is_warm(settings, key):
        return EngineMode(True, "compiled engine (its cache is warm)", key)
    if failed_marker(settings, key).is_file():
        return EngineMode(
            False,
            f"eager engine (compiling failed before: {failed_marker(settings, key)})",
            key,
        )
    if compiler_missing(device):
        return EngineMode(
            False, "eager engine (no C++ compiler for the compiled one: install g++)", key
        )
    return EngineMode(False, "eager engine (the compiled engine's cache is cold)", key, fill=True)


class BackgroundCompile:
    """The cache fill: `python -m alpaca_serve.server.compile_fill` at the lowest priority."""

    def __init__(self, process: subprocess.Popen, log_path: Path):
        self.process = process
        self.log_path = log_path

    @classmethod
    def start(cls, settings: ServerSettings, model_path: Path) -> BackgroundCompile:
        root = settings.compile_cache_root
        root.mkdir(parents=True, exist_ok=True)
        log_path = root / FILL_LOG
        env = {**os.environ, "ALPACA_MODEL": str(model_path)}
        with open(log_path, "w") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "alpaca_serve.server.compile_fill"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # its engine's processes stop with it
                preexec_fn=lambda: os.nice(19),
            )
        return cls(process, log_path)

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        """End the fill (and its engine's processes) if it still runs."""
        if not self.running:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout)
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
