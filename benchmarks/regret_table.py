"""The regret table of the product's own choice: for every collected case, what the fit chose
(``<case>/product.json``: the fit's validation and rule, run by ``regret_collect.py``) against the
best candidate on the real test set (``<case>/real.json``).

    PYTHONPATH=. .venv/bin/python benchmarks/regret_table.py runs/regret2/*/ [--markdown]

Image AUROC regret is against the best (candidate, image score) pair; AU-PRO regret against the
best candidate. ``goods flagged`` is the share of the test's good parts above the chosen pair's
calibrated threshold (the false-alarm target is 1 %).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

VALIDATED = ("product_shift5", "product", "gaussian", "nns")  # selection.candidates


def row(case: Path) -> dict | None:
    if not (case / "product.json").exists() or not (case / "real.json").exists():
        return None
    product = json.loads((case / "product.json").read_text())
    real = {n: r for n, r in json.loads((case / "real.json").read_text()).items() if n in VALIDATED}
    chosen = product["chosen"]
    fraction = str(product["candidates"][chosen]["top_fraction"])
    got = real[chosen]["by_fraction"][fraction]
    best_img = max((r["by_fraction"][f]["image_auroc"], n, f) for n, r in real.items() for f in r["by_fraction"])
    out = {"case": case.name, "chosen": f"{chosen}@{fraction}", "image_auroc": got["image_auroc"],
           "best_image": f"{best_img[1]}@{best_img[2]}", "image_regret": best_img[0] - got["image_auroc"],
           "goods_flagged": got["good_far"], "labelled": json.loads((case / "meta.json").read_text())["args"]["defects_per_type"]}
    if real[chosen]["au_pro"] is not None:
        best_pro = max((r["au_pro"], n) for n, r in real.items())
        out.update(au_pro=real[chosen]["au_pro"], best_pro=best_pro[1], pro_regret=best_pro[0] - real[chosen]["au_pro"])
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("cases", nargs="+", type=Path)
    p.add_argument("--markdown", action="store_true")
    args = p.parse_args()
    rows = [r for r in (row(c) for c in args.cases) if r is not None]
    head = ("case", "labelled per type", "chosen", "image AUROC", "regret", "AU-PRO", "regret", "best AU-PRO", "goods flagged")
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head) if args.markdown else "  ".join(head))
    for r in rows:
        cells = (r["case"], str(r["labelled"]), r["chosen"], f"{r['image_auroc']:.4f}", f"{r['image_regret']:.4f}",
                 f"{r.get('au_pro', float('nan')):.4f}", f"{r.get('pro_regret', float('nan')):.4f}",
                 r.get("best_pro", "-"), f"{r['goods_flagged']:.2f}")
        print("| " + " | ".join(cells) + " |" if args.markdown else "  ".join(cells))
    worst_img = max(r["image_regret"] for r in rows)
    worst_pro = max(r.get("pro_regret", 0.0) for r in rows)
    print(f"\nworst regret over {len(rows)} cases: image AUROC {worst_img:.4f}, AU-PRO {worst_pro:.4f}")


if __name__ == "__main__":
    main()
