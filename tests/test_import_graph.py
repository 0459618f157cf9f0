"""The import graph flows one way: cli -> web -> gateway/supervisor -> workflow -> capability services ->
store/meta/config/errors. Read from the source itself (every import, lazy ones included), so a
new import that closes a circle or points the wrong way fails here."""

from __future__ import annotations

import ast
import graphlib

from airlock.config import REPO_ROOT

PACKAGE = REPO_ROOT / "src" / "airlock"
TOP = {"cli", "__main__"}
ENTRY = {"gateway", "supervisor", "web"}
SERVICES = {"access", "datasets", "models", "promotion", "serve", "tls", "train", "trust"}
FOUNDATION = {"store", "meta", "config", "errors", "context", "home", "private", "states"}
# What each layer may import, besides itself and the layers below the next rule.
MAY_NOT_IMPORT = {
    **{s: TOP | ENTRY | {"workflow"} for s in SERVICES},
    **{f: TOP | ENTRY | {"workflow"} | SERVICES for f in FOUNDATION},
    "workflow": TOP | ENTRY,
    # The web UI builds on the gateway (its auth, its context); the gateway is handed the UI.
    "gateway": TOP | {"supervisor", "web"},
    "supervisor": TOP | {"gateway", "web"},
    "web": TOP | {"supervisor"},
}


def unit(module: str) -> str:
    """airlock.serve.deploy -> serve; airlock.config -> config."""
    return module.split(".")[1]


def imports() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        module = ".".join(rel.parts).removesuffix(".__init__")
        if module == "airlock":
            continue
        targets = graph.setdefault(unit(module), set())
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for name in names:
                if name.startswith("airlock.") and unit(name) != unit(module):
                    targets.add(unit(name))
    return graph


def test_no_import_cycle_between_packages():
    graph = imports()
    try:
        list(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as exc:
        raise AssertionError(f"import cycle: {' -> '.join(exc.args[1])}") from None


def test_imports_point_down_only():
    wrong = [f"{src} imports {dst}" for src, targets in sorted(imports().items())
             for dst in sorted(targets) if dst in MAY_NOT_IMPORT.get(src, set())]
    assert wrong == []


def test_the_guard_sees_what_it_guards():
    graph = imports()
    # The edges the design relies on are really seen, so an empty graph cannot pass.
    assert {"workflow", "gateway", "serve"} <= graph["cli"] | graph["gateway"] | graph["supervisor"]
    assert "serve" in graph["workflow"] and "meta" in graph["serve"]
    assert set(graph) >= SERVICES | {"workflow", "gateway", "supervisor", "cli"}
