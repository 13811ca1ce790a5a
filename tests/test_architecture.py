"""The house rules that imports can show: the layers of model/ import only downwards, no module
import circles anywhere, service/ reaches model/ through ``model.serving`` only, the server loads
no training code, model/ never imports the HTTP shell, and cluster/ never imports the CLI.

The layers of model/, lowest first (``LAYERS``): ``method`` (the method's inference blocks),
``reporting`` (metrics, plots, overlays, progress), ``artifact`` (manifest, store, sources),
``runtime`` (the Inspector, verdict, decoding), ``training`` (what only the fit runs), ``jobs``
(fit, evaluate, selection, publishing, the demo's data) and ``serving`` (the server's surface).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

LAYERS = ("method", "reporting", "artifact", "runtime", "training", "jobs", "serving")
PACKAGES = ("model", "service", "cluster", "cli")

TRAINING_MODULES = ("model.jobs", "model.training", "model.reporting.plots", "model.reporting.metrics",
                    "model.reporting.progress", "cli")


def imported_modules(path, submodules: bool = False) -> set[str]:
    """Absolute module names imported by the Python file ``path`` anywhere in it (also under
    ``TYPE_CHECKING`` and inside functions); with ``submodules``, ``from a import b`` also counts
    ``a.b`` (which may be a module)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            if submodules:
                names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def module_graph(root: Path, packages=PACKAGES) -> dict[str, set[str]]:
    """Every module of ``packages`` under ``root`` -> the modules of those packages it imports."""
    files = {".".join(p.relative_to(root).with_suffix("").parts).removesuffix(".__init__"): p
             for package in packages for p in (root / package).rglob("*.py")}
    return {name: {m for m in imported_modules(path, submodules=True) if m in files and m != name}
            for name, path in files.items()}


def layer_of(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.index(parts[1]) if parts[0] == "model" and len(parts) > 1 and parts[1] in LAYERS else None


def climbing(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """The imports inside model/ from a layer to a higher one."""
    return sorted((a, b) for a, deps in graph.items() for b in deps
                  if layer_of(a) is not None and layer_of(b) is not None and layer_of(b) > layer_of(a))


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import circles of ``graph``: its strongly connected components of two or more modules."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while (w := stack.pop()) != v:
                component.append(w)
            if component:
                found.append(sorted([v, *component]))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_layers_of_model_import_only_downwards():
    graph = module_graph(REPO)
    assert all(layer_of(m) is not None for m in graph if m.startswith("model.") and m.count(".") > 1), \
        sorted(m for m in graph if m.startswith("model.") and m.count(".") > 1 and layer_of(m) is None)
    assert climbing(graph) == []


def test_no_import_circles_anywhere():
    assert circles(module_graph(REPO)) == []


def test_cluster_never_imports_the_cli():
    graph = module_graph(REPO)
    assert sorted((a, b) for a, deps in graph.items() if a.startswith("cluster") for b in deps
                  if b.split(".")[0] == "cli") == []


def test_the_checks_fail_on_a_climbing_layer_and_a_circle(tmp_path):
    """The two checks above on a small tree made to break them."""
    files = {"model/method/blocks.py": "from model.runtime.inspector import Inspector\n",
             "model/runtime/inspector.py": "class Inspector: ...\n",
             "service/a.py": "from service.b import x\n",
             "service/b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from service.a import y\n",
             "cluster/__init__.py": "", "cli/__init__.py": ""}
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    graph = module_graph(tmp_path)
    assert climbing(graph) == [("model.method.blocks", "model.runtime.inspector")]
    assert circles(graph) == [["service.a", "service.b"]]


@pytest.mark.parametrize("path", sorted((REPO / "service").rglob("*.py")), ids=lambda p: str(p.relative_to(REPO)))
def test_service_imports_model_only_through_the_serving_surface(path):
    reached = {m for m in imported_modules(path) if m == "model" or m.startswith("model.")}
    assert reached <= {"model.serving"}, f"{path.name} imports {sorted(reached)}"


@pytest.mark.parametrize("path", sorted((REPO / "model").rglob("*.py")), ids=lambda p: str(p.relative_to(REPO)))
def test_model_never_imports_the_http_shell_or_the_cli(path):
    shell = {m for m in imported_modules(path) if m.split(".")[0] in {"fastapi", "starlette", "uvicorn", "service", "cli"}}
    assert not shell, f"{path.name} imports {sorted(shell)}"


def test_the_server_loads_no_training_code():
    code = "import json, sys; import service.app; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    loaded = json.loads(out)
    training = [m for m in loaded if m.startswith(TRAINING_MODULES)]
    assert "model.serving" in loaded and not training, training


def test_the_serving_surface_exports_what_it_lists():
    import model.serving as surface

    missing = [name for name in surface.__all__ if not hasattr(surface, name)]
    assert surface.__all__ and not missing, missing


def test_the_cluster_deployment_wraps_the_server_and_loads_no_training_code():
    """The Ray Serve deployment builds the server's own app (no second inspect path) and, like the
    server, reaches the model only through ``model.serving``."""
    path = REPO / "cluster" / "deployment.py"
    reached = {m for m in imported_modules(path) if m.split(".")[0] in {"model", "service"}}
    assert reached <= {"service.app", "service.settings"}, sorted(reached)
    code = ("import json, sys; import cluster.deployment as d; d.inspect_deployment(2); "
            "print(json.dumps(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    loaded = json.loads(out.splitlines()[-1])
    training = [m for m in loaded if any(m == t or m.startswith(t + ".") for t in TRAINING_MODULES)]
    assert "service.app" in loaded and "ray.serve" in loaded and not training, training
