"""BENCHMARKS.md's headline rows with the final code: each category fitted by the CLI with its
defaults (under ``/usr/bin/time -v`` for the peak RSS) and evaluated by the CLI.

    PYTHONPATH=. .venv/bin/python benchmarks/headline.py --out runs/headline.json \\
        bottle=../shared/data/mvtec_ad/bottle mt=../shared/data/magnetic_tile/magnetic_tile \\
        bottle-session=runs/variants/bottle-session ...

Per category: the fit's choice (scoring, image score), its stage seconds and wall seconds, peak
RSS, artifact size; image AUROC, pixel AUROC, AU-PRO, and the share of the test's good parts
flagged at the calibrated threshold.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from model.artifact.store import artifact_size_bytes, read_manifest

CLI = [sys.executable, "-m", "cli.main", "--threads", "2"]


def run(name: str, data: Path, root: Path) -> dict:
    started = time.perf_counter()
    fit = subprocess.run(["/usr/bin/time", "-v", *CLI, "fit", "--data", str(data), "--category", name,
                          "--artifacts", str(root)], capture_output=True, text=True, check=True)
    wall = time.perf_counter() - started
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", fit.stderr).group(1))
    manifest = read_manifest(root / name)
    report = root / f"{name}.json"
    subprocess.run([*CLI, "evaluate", "--data", str(data), "--artifact", str(root / name), "--output", str(report),
                    "--no-plots"], capture_output=True, text=True, check=True)
    r = json.loads(report.read_text())
    counts = r["image_counts"]
    return {"scoring": manifest.config.scoring, "top_fraction": manifest.config.postprocess.top_fraction,
            "fit_stage_s": manifest.fit.seconds, "fit_wall_s": round(wall, 1), "peak_rss_gb": round(rss_kb / 1e6, 2),
            "artifact_mb": round(artifact_size_bytes(root / name) / 1e6, 1),
            "image_auroc": r["image_auroc"], "pixel_auroc": r["pixel_auroc"], "au_pro": r["au_pro"],
            "goods_flagged": counts["fp"] / max(1, counts["fp"] + counts["tn"]),
            "ms_per_image_evaluate": r["wall_ms_per_image"]}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("categories", nargs="+", help="name=folder")
    p.add_argument("--out", type=Path, default=Path("runs/headline.json"))
    args = p.parse_args()
    results = {}
    with tempfile.TemporaryDirectory(prefix="headline-") as root:
        for item in args.categories:
            name, _, folder = item.partition("=")
            results[name] = run(name, Path(folder), Path(root))
            r = results[name]
            print(f"{name}: {r['scoring']}@{r['top_fraction']} image {r['image_auroc']:.4f} pixel {r['pixel_auroc']:.4f} "
                  f"AU-PRO {r['au_pro']:.4f} goods flagged {r['goods_flagged']:.2f}; fit {r['fit_wall_s']} s wall, "
                  f"{r['peak_rss_gb']} GB, artifact {r['artifact_mb']} MB", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
