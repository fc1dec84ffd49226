"""Fill the compiled engine's cache once: `python -m alpaca_serve.server.compile_fill`.

alpaca-serve starts it in the background at the lowest CPU priority when ALPACA_ENFORCE_EAGER=auto
finds the cache cold (server/compile_cache.py); it reads the same ALPACA_* environment, builds the
compiled engine (which fills vLLM's and torch inductor's caches and writes the warm marker), shuts
it down and exits. A failure is recorded beside the marker and not tried again.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

from alpaca_serve.server.compile_cache import cache_key, failed_marker, is_warm
from alpaca_serve.server.engine import build_engine, kv_block_size, resolve_device, resolve_dtype
from alpaca_serve.server.settings import ServerSettings

# The fill's engine needs little KV cache (it answers nothing; vLLM takes whole GiB).
# Not part of the compiled graph.
FILL_KV_CACHE_GIB = 1


def fill(settings: ServerSettings, model_path: Path) -> int:
    """Build the compiled engine once (which fills the cache), mark it warm, shut it down."""
    compiled = settings.model_copy(
        update={"enforce_eager": False, "cpu_kv_cache_gib": FILL_KV_CACHE_GIB}
    )
    device = resolve_device(settings)
    key = cache_key(
        settings,
        model_path,
        device,
        resolve_dtype(settings, device, compiled=True),
        kv_block_size(settings, device),
    )
    if is_warm(settings, key):
        print(f"compile_fill: the cache of {model_path} (key {key}) is warm already")
        return 0
    started = time.monotonic()
    print(f"compile_fill: compiling {model_path} (key {key}) to fill {settings.compile_cache_root}")
    try:
        engine = build_engine(compiled, model_path)
    except Exception as err:  # noqa: BLE001  (any failure: recorded, not retried)
        marker = failed_marker(settings, key)
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(f"{type(err).__name__}: {err}\n")
        print(f"compile_fill: error: compiling failed: {type(err).__name__}: {err}")
        return 1
    engine.shutdown()
    print(f"compile_fill: done in {time.monotonic() - started:.0f} s; the next start is compiled")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m alpaca_serve.server.compile_fill",
        description="Fill the compiled engine's cache for the model and engine settings of the "
        "ALPACA_* environment (ALPACA_MODEL names the model folder): build the compiled engine "
        "once, record its cache as warm, exit. alpaca-serve starts it by itself in the "
        "background when ALPACA_ENFORCE_EAGER=auto finds the cache cold.",
    )
    parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    settings = ServerSettings()
    if settings.model is None:
        print("compile_fill: error: ALPACA_MODEL names no model folder", file=sys.stderr)
        return 2
    return fill(settings, settings.model)


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Not through the interpreter's teardown: vLLM's engine client would finalise itself once
    # more then, after the modules it calls are gone (a harmless but alarming traceback).
    os._exit(code)
