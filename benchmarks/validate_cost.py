"""What the self-checking fit's validation costs: the same category fitted with ``scoring=auto``
and with the choice forced (``scoring=product_shift5``: no validation), side by side in one run.

    PYTHONPATH=. .venv/bin/python benchmarks/validate_cost.py --data ../shared/data/mvtec_ad/bottle \\
        --data ../shared/data/magnetic_tile/magnetic_tile --out runs/validate_cost.json

For each category: both fits' stage seconds and wall seconds, and the ratio the target reads:
the auto fit's ``validate`` stage over the forced fit's total (target: at most 0.30).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from model.jobs.fit import fit
from model.method.config import FitConfig


def measure(data: Path, root: Path) -> dict:
    out = {}
    for name, config in (("forced", FitConfig().with_overrides({"scoring": "product_shift5"})), ("auto", FitConfig())):
        started = time.perf_counter()
        report = fit(data, f"{data.name}-{name}", root, config)
        out[name] = {"wall_s": round(time.perf_counter() - started, 1), "stages_s": report.seconds}
    out["validate_over_forced_fit"] = round(out["auto"]["stages_s"].get("validate", 0.0)
                                            / out["forced"]["stages_s"]["total"], 3)
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", action="append", type=Path, required=True)
    p.add_argument("--out", type=Path, default=Path("runs/validate_cost.json"))
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="validate-cost-") as root:
        results = {d.name: measure(d, Path(root)) for d in args.data}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    for name, r in results.items():
        print(f"{name}: forced fit {r['forced']['stages_s']['total']:.1f} s, auto fit {r['auto']['stages_s']['total']:.1f} s, "
              f"validate {r['auto']['stages_s'].get('validate', 0):.1f} s = {r['validate_over_forced_fit']:.2f} of the forced fit")


if __name__ == "__main__":
    main()
