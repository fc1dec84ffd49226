"""The server's seams: one generation path that knows no HTTP, route modules that only translate
HTTP to it, and an engine Protocol that the real engine and the test double both satisfy."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

from alpaca_serve.server.engine import Engine, VllmEngine
from tests.scripted_engine import ScriptedEngine
from tests.support import ROOT

ROUTES = ROOT / "alpaca_serve" / "server" / "routes"


def imported_modules(path: Path) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            modules.add(node.module)
        elif isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
    return modules


def test_the_generation_path_knows_nothing_of_http():
    web = {"fastapi", "starlette"}
    imported = imported_modules(ROOT / "alpaca_serve" / "server" / "pipeline.py")
    assert not {module for module in imported if module.split(".")[0] in web}


def test_no_route_module_imports_another():
    for path in ROUTES.glob("*.py"):
        others = {m for m in imported_modules(path) if m.startswith("alpaca_serve.server.routes")}
        assert not others, f"{path.name} imports {others}"


def attributes_set_in_init(cls: type) -> set[str]:
    try:
        tree = ast.parse(inspect.getsource(cls.__init__).strip())
    except (OSError, TypeError):  # a generated __init__ (a dataclass): its fields are annotated
        return set()
    return {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.ctx, ast.Store)
        and isinstance(node.value, ast.Name)
        and node.value.id == "self"
    }


def test_both_engines_offer_every_call_of_the_engine_protocol():
    wanted = {name for name in dir(Engine) if not name.startswith("_")}
    wanted |= set(inspect.get_annotations(Engine))
    for engine in (VllmEngine, ScriptedEngine):
        offered = set(dir(engine)) | set(inspect.get_annotations(engine))
        offered |= attributes_set_in_init(engine)
        assert wanted <= offered, (engine.__name__, wanted - offered)
