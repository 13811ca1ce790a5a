"""The selection tables (BENCHMARKS.md, docs/lab/issue-16-selection.md) from ``benchmarks/selection.py``'s JSON files, one per category.

    .venv/bin/python benchmarks/selection_table.py runs/selection/bottle.json runs/selection/mt.json ...
"""

from __future__ import annotations

import json
import sys

HEAD = ("| candidate | image score | val. image AUROC | val. pixel AUROC | val. AU-PRO | sensitivity | nuisance shift "
        "| real image AUROC | real pixel AUROC | real AU-PRO | real FAR, test goods | real image AUROC with max / top 0.2 / 1 / 3 % |")


def score_name(fraction: float) -> str:
    return "max" if fraction == 0 else f"top {fraction * 100:g} %"


def table(result: dict) -> str:
    gap = " / ".join(f"{v:.4f}" for v in result["chosen_gap"].values())
    lines = [f"**{result['name']}**: auto chooses `{result['chosen']}`; gap to the best candidate on the real test "
             f"(image / pixel / AU-PRO) {gap}; Spearman {result['spearman']:.2f}", "", HEAD,
             "|" + "---|" * (HEAD.count("|") - 1)]
    for name, v in result["validation"].items():
        r = result["real"][name]
        bold = f"**{name}**" if name == result["chosen"] else name
        by = " / ".join(f"{a:.4f}" for a in r["image_auroc_by_fraction"].values())
        cells = [bold, score_name(v.get("top_fraction", 0.0)), *(f"{v[m]:.4f}" for m in ("image_auroc", "pixel_auroc",
                 "au_pro", "sensitivity")), f"{v['nuisance_shift']:.2f}",
                 *(f"{r[m]:.4f}" for m in ("image_auroc", "pixel_auroc", "au_pro")), f"{r['good_far']:.2f}", by]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    print("\n\n".join(table(json.load(open(path))) for path in sys.argv[1:]))
