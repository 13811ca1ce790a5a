"""The rules that choose from validation figures (``model.training.validation.figures``).

**Choosing the scoring** (``choose_scoring``, ``SCORING_RULE``): the candidates whose sensitivity
is within ``selection.sensitivity_margin`` of the best are near-best; among them the one whose
nuisance copies are flagged least often, at the strongest strength where they are not all
saturated (each candidate against its own threshold: an absolute rate, the false-alarm target
being where a perfectly robust candidate sits); candidates within ``selection.robust_margin`` of
that count as equally robust and the earliest in the order wins. A candidate that finds little
is never near-best, so it can never set the bar; a robust candidate is preferred only among
those that find as much. Measured against the real test metrics of every candidate
(docs/lab/issue-34-selection.md): on our bottles the paper's product and the product with a
shift tolerance are equally sensitive and flag nuisance copies about as often (which of the two
flags fewer changes from one draw of the validation images to the next), and only the second
survives a later session; so the order puts the shift tolerance first.

**Choosing an improvement** (``choose_improvement``, ``IMPROVEMENT_RULE``; PSG and the defect
head's weight): the candidates whose nuisance copies are flagged at most ``selection.robust_margin``
more often than the first's (without PSG, or without a head), at the same strength, are robust;
of those the most sensitive, and within ``selection.tie_margin`` of it the earlier: the first
unless another is clearly better and no more fragile.

**The image score** of a candidate (``choose_fraction``): the most sensitive of
``selection.top_fractions``; within ``selection.tie_margin`` the earlier (the maximum first).
"""

from __future__ import annotations

from model.method.config import FitConfig

SCORING_RULE = ("near-best: sensitivity within sensitivity_margin of the best; of those, the lowest nuisance "
                "false-alarm rate at the strongest strength where not all are saturated; within robust_margin "
                "of it, the earlier candidate")
IMPROVEMENT_RULE = ("robust: nuisance copies flagged at most robust_margin more often than by the first candidate "
                    "(at the strongest strength where not all are saturated); of those the most sensitive; within "
                    "tie_margin of it, the earlier")


def grade(table: dict[str, dict], config: FitConfig) -> str | None:
    """The strength the candidates of ``table`` are compared at: the strongest of
    ``selection.nuisance_strengths`` where not all flag at least ``selection.saturated_far`` of
    the copies (the weakest when all are saturated; None without nuisance copies)."""
    sel = config.selection
    strengths = [str(float(g)) for g in sorted(sel.nuisance_strengths, reverse=True)]
    rows = list(table.values())
    present = [g for g in strengths if all(g in r["nuisance_far"] for r in rows)]
    if not present:
        return None
    return next((g for g in present if min(r["nuisance_far"][g] for r in rows) < sel.saturated_far), present[-1])


def choose_scoring(table: dict[str, dict], config: FitConfig) -> str:
    """The candidate to publish from ``table`` (name -> figures, in order of preference), by ``SCORING_RULE``."""
    sel = config.selection
    best = max(row["sensitivity"] for row in table.values())
    near = {n: r for n, r in table.items() if r["sensitivity"] >= best - sel.sensitivity_margin}
    g = grade(near, config)
    if g is None:
        return next(iter(near))
    low = min(r["nuisance_far"][g] for r in near.values())
    return next(n for n, r in near.items() if r["nuisance_far"][g] <= low + sel.robust_margin)


def choose_improvement(table: dict[str, dict], config: FitConfig) -> str:
    """The candidate to publish from ``table`` (its first is the baseline), by ``IMPROVEMENT_RULE``."""
    sel = config.selection
    base = next(iter(table.values()))
    g = grade(table, config)
    robust = {n: r for n, r in table.items()
              if g is None or r["nuisance_far"][g] <= base["nuisance_far"][g] + sel.robust_margin}
    best = max(r["sensitivity"] for r in robust.values())
    return next(n for n, r in robust.items() if r["sensitivity"] >= best - sel.tie_margin)


def choose_fraction(sweep: dict[str, dict], config: FitConfig) -> str:
    """The image score (a key of ``sweep``, in order, the maximum first): the most sensitive; within
    ``selection.tie_margin``, the earlier."""
    best = max(row["sensitivity"] for row in sweep.values())
    return next(k for k, row in sweep.items() if row["sensitivity"] >= best - config.selection.tie_margin)
