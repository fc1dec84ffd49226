"""The order `make test` runs its files in (tests/conftest.py): the costliest first, as measured,
so that two processes finish together; a file named there that no longer exists fails here."""

from __future__ import annotations

from tests.conftest import COSTLIEST_FILES
from tests.support import ROOT


def test_every_file_named_as_costliest_exists():
    missing = [path for path in COSTLIEST_FILES if not (ROOT / path).is_file()]
    assert missing == []


def test_files_are_collected_costliest_first_then_slow_then_quick(request):
    files: list[str] = []
    slow: dict[str, bool] = {}
    for item in request.session.items:
        path = item.nodeid.split("::", 1)[0]
        if path not in slow:
            files.append(path)
            slow[path] = False
        slow[path] = slow[path] or item.get_closest_marker("slow") is not None
    costliest = [path for path in files if path in COSTLIEST_FILES]
    assert files[: len(costliest)] == costliest
    assert costliest == [path for path in COSTLIEST_FILES if path in costliest]
    rest = files[len(costliest) :]
    kinds = [slow[path] for path in rest]
    assert kinds == sorted(kinds, reverse=True), "a quick file came before a slow one"
    # Each file's tests run together, in the order they are written.
    seen_last = [item.nodeid.split("::", 1)[0] for item in request.session.items]
    runs = [path for i, path in enumerate(seen_last) if i == 0 or seen_last[i - 1] != path]
    assert len(runs) == len(set(runs))
