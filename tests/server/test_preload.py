"""The fast path's libraries: tcmalloc and Intel's OpenMP runtime, found where make setup puts
them and preloaded into the server (the real server process: tests/server/test_observability.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from alpaca_serve.server.preload import LIBRARIES, find_library, preload_list, wanted


def test_make_setup_installed_both_libraries_into_the_environment():
    for filename in LIBRARIES.values():
        found = find_library(filename)
        assert found is not None, f"{filename}: make setup (scripts/install) should install it"
        assert found.parent.parent.resolve() == Path(sys.prefix).resolve()


def test_both_load_into_a_fresh_process_and_are_seen_as_loaded():
    env = {"LD_PRELOAD": ":".join(preload_list({})), "PATH": "/usr/bin:/bin"}
    probe = (
        "import json; from alpaca_serve.server.preload import preloaded; "
        "print(json.dumps(preloaded()))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True
    )
    assert json.loads(out.stdout) == {"tcmalloc": True, "intel_openmp": True}
    plain = subprocess.run(
        [sys.executable, "-c", probe], env={"PATH": "/usr/bin:/bin"}, capture_output=True, text=True
    )
    assert json.loads(plain.stdout) == {"tcmalloc": False, "intel_openmp": False}


def test_an_ld_preload_of_ones_own_is_kept_and_only_what_it_lacks_is_added():
    own = {"LD_PRELOAD": "/opt/mine/libjemalloc.so:/elsewhere/libiomp5.so"}
    entries = preload_list(own)
    assert entries[:2] == ["/opt/mine/libjemalloc.so", "/elsewhere/libiomp5.so"]
    assert [e for e in entries if e.endswith("libiomp5.so")] == ["/elsewhere/libiomp5.so"]
    assert entries[2].endswith("libtcmalloc_minimal.so.4")


def test_alpaca_preload_false_turns_it_off():
    assert wanted({}) and wanted({"ALPACA_PRELOAD": "true"})
    for off in ("false", "0", "no", "off", " False "):
        assert not wanted({"ALPACA_PRELOAD": off})
