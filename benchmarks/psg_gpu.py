"""PSG at the paper's schedule (64 epochs, batch 32) on a GPU; keeps the fine-tuned backbone.

    python3 benchmarks/psg_gpu.py --data <category> --out backbone.safetensors          # on the GPU machine
    .venv/bin/python benchmarks/ablation.py ... --set backbone.weights=backbone.safetensors  # then on the CPU

The fit runs as usual (on ``--device``) with PSG on; the artifact's ``backbone.safetensors``
is copied to ``--out`` and the PSG loss/accuracy per epoch and stage seconds are printed.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.artifact.store import read_manifest  # noqa: E402
from model.jobs.fit import fit  # noqa: E402
from model.method.config import FitConfig  # noqa: E402
from model.runtime.process import configure_device  # noqa: E402

PAPER = {"psg.enabled": True, "psg.max_steps": 0, "psg.epochs": 64, "psg.batch_size": 32}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--device", default="cuda")
    p.add_argument("--set", action="append", default=[], metavar="KEY=JSON")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO)
    overrides = {**PAPER, **{k: json.loads(v) for k, v in (s.split("=", 1) for s in args.set)}}
    config = FitConfig().with_overrides(overrides)
    configure_device(args.device)  # as the CLI does before a fit
    with tempfile.TemporaryDirectory() as tmp:
        report = fit(args.data, "psg", tmp, config, device=args.device)
        shutil.copy(report.artifact / "backbone.safetensors", args.out)
        manifest = read_manifest(report.artifact)
    print(json.dumps({"overrides": overrides, "seconds": report.seconds, "psg": manifest.fit.psg}, indent=1))


if __name__ == "__main__":
    main()
