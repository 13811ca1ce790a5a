"""The house rules that imports can show: service/ reaches model/ through ``model.serving`` only,
the server loads no training code, and model/ never imports the HTTP shell."""

from __future__ import annotations

import ast
import json
import subprocess
import sys

import pytest

from tests.conftest import REPO

TRAINING_MODULES = ("model.jobs", "model.method.psg", "model.method.cutpaste", "model.method.synthetic_defects",
                    "model.method.nuisance", "model.reporting.plots",
                    "model.reporting.metrics", "cli")


def imported_modules(path) -> set[str]:
    """Absolute module names imported by the Python file ``path``."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


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
