"""The self-checking fit: validate every scoring candidate, and choose one.

No fixed scoring is right for every part (a per-position Gaussian breaks on unfixtured parts
and noisy backgrounds; NNS alone localises less on aligned ones), so the fit measures each
candidate of ``selection.candidates`` (``SCORING_CANDIDATES``: config overrides, all built
from one feature extraction) on images made from the held-out goods, which the bank and the
Gaussians never saw (``model.training.validation_images``):

* **goods**: the held-out goods; each candidate's image threshold comes from them exactly as
  calibration sets it (``far_threshold`` at the target false-alarm rate);
* **sensitivity**: synthetic defects with exact masks on up to ``max_images`` of them
  (``model.training.synthetic_defects``: CutPaste, Scar, Perlin-shaped foreign texture,
  blurred / brightness-shifted patches, and ``matched``: faint changes scaled to the part's own
  contrast and texture, which tell the candidates apart where the salient ones do not), small
  to large, each family counted equally; with labelled defects, those count
  ``selection.labelled_weight`` (3) times as much, and both figures are recorded;
* **robustness**: nuisance copies of the same goods at graded strengths
  (``selection.nuisance_strengths``; ``model.training.nuisance``: brightness, contrast, gamma,
  noise, blur, shift, rotation, scale): the share of them each candidate flags at its own
  threshold, per strength.

The rule (``model.training.rule.choose_scoring``): of the near-best candidates (sensitivity
within ``sensitivity_margin`` of the best), the one that flags the fewest nuisance copies at the
strongest strength where they are not all saturated; within ``robust_margin``, the earlier in
``selection.candidates``. Each candidate's image score comes first (``choose_top_fraction``,
with ``postprocess.top_fraction="auto"``): the maximum of its map or the mean of a top fraction
of its pixels, the most sensitive (a mean over the top pixels ignores a few hot pixels on noisy
good parts: magnetic tile, NNS: real image AUROC 0.879 with the maximum, 0.924 with the top 1 %).

PSG (``select_psg``): with labelled defects and ``psg.enabled="auto"``, the chosen scoring
without and with PSG are the two candidates of a second table, on the same images, chosen by
``choose_improvement`` (without PSG unless PSG is more sensitive and no more fragile). PSG is
trained on CutPaste and Scar, so in that table the synthetic sensitivity counts only the other
families (``PSG_FAMILIES`` are left out for both rows).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np

from model.jobs.variant import Parts
from model.method.config import AUTO, FIXED, FitConfig
from model.runtime.execution import Timer
from model.runtime.inspector import Inspector
from model.training.described import Recording
from model.training.rule import IMPROVEMENT_RULE, SCORING_RULE, choose_fraction, choose_improvement, choose_scoring
from model.training.validation import PSG_FAMILIES, figures, fraction_scores, score_candidates
from model.training.validation_images import ValidationImages

log = logging.getLogger(__name__)


def warning(row: dict, name: str, config: FitConfig) -> str | None:
    """What to try when even the chosen candidate validates weakly (None when it does not)."""
    sel = config.selection
    strongest = str(float(max(sel.nuisance_strengths)))
    far = row["nuisance_far"].get(strongest, 0.0)
    weak = row["sensitivity"] < sel.weak_sensitivity
    fragile = far > sel.fragile_far
    if not (weak or fragile):
        return None
    what = []
    if weak:
        what.append(f"finds synthetic defects weakly (sensitivity {row['sensitivity']:.3f})")
    if fragile:
        what.append(f"flags {far:.0%} of good parts under small lighting or position changes")
    return (f"the chosen scoring {name!r} {' and '.join(what)}: try more good images, fixture the parts, "
            "steadier lighting, or a higher image_size")


def resolve(config: FitConfig, n_holdout: int) -> tuple[list[str], dict]:
    """The candidates to validate (several only for ``scoring="auto"``) and the start of the record."""
    if config.scoring == FIXED:
        return [], {"mode": "config", "chosen": None}
    if config.scoring != AUTO:
        return [config.scoring], {"mode": "forced", "chosen": config.scoring}
    names = [n for n in config.selection.candidates if _valid(config, n)]
    if n_holdout < config.selection.min_holdout:
        reason = (f"{n_holdout} held-out good images are too few to validate the scorings "
                  f"(need {config.selection.min_holdout}): kept {names[0]!r}; add good images to choose")
        return names[:1], {"mode": "fallback", "chosen": names[0], "fallback": reason}
    return names, {"mode": "auto", "chosen": None, "rule": SCORING_RULE}


def branches_needed(config: FitConfig, n_holdout: int) -> tuple[bool, bool]:
    """Whether the candidates to validate need the memory bank and the Gaussian moments."""
    names, _ = resolve(config, n_holdout)
    configs = [config.with_scoring(n) for n in names] or [config]
    return any(c.nns.enabled for c in configs), any(c.gaussian.enabled for c in configs)


def _valid(config: FitConfig, name: str) -> bool:
    try:
        config.with_scoring(name)
    except ValueError:  # e.g. NNS alone with LGFFP fusion, which feeds the Gaussian
        return False
    return True


def validate(inspectors: dict[str, Inspector], images: ValidationImages, config: FitConfig,
             recording: Recording | None = None) -> dict[str, dict]:
    """Every candidate's validation figures (name -> ``figures``), in the order of ``inspectors``,
    each with its own image score (``choose_top_fraction``)."""
    table = {}
    for name, (_, maps) in score_candidates(inspectors, images.all, config.batch_size, recording).items():
        fraction, sweep = choose_top_fraction(maps, images, config)
        table[name] = figures(fraction_scores(maps, fraction), maps, images, config)
        if sweep:
            table[name].update(top_fraction=fraction, top_fractions=sweep)
    return table


def choose_top_fraction(maps: np.ndarray, images: ValidationImages, config: FitConfig) -> tuple[float, dict]:
    """The image score of one candidate and the record of its choice: with
    ``postprocess.top_fraction="auto"``, every fraction of ``selection.top_fractions`` is
    validated on image-level figures only (the map, and so the pixel metrics, do not change)
    and chosen by ``choose_fraction`` (the maximum, first, wins a tie). Otherwise the configured
    one, no record."""
    if config.postprocess.top_fraction != AUTO:
        return config.postprocess.image_top_fraction, {}
    sweep = {str(f): figures(fraction_scores(maps, f), maps, images, config, pixels=False)
             for f in config.selection.top_fractions}
    return float(choose_fraction(sweep, config)), sweep


def select_scoring(parts: Parts, config: FitConfig, n_holdout: int, images: Callable[[], ValidationImages],
                   device: str, watch: Timer, recording: Recording | None = None) -> tuple[FitConfig, dict]:
    """The config to publish and the manifest's ``fit.selection`` record.

    ``images`` gives the validation images; it is called only when there is a choice to make,
    and then the ``recording`` keeps their description (``model.training.described``).
    """
    names, record = resolve(config, n_holdout)
    if len(names) <= 1:
        record["chosen"] = names[0] if names else None
        chosen = config.with_scoring(names[0]) if names else config
        return _with_top_fraction(chosen, chosen.postprocess.image_top_fraction), record
    inspectors = {n: parts.variant(config.with_scoring(n), watch).inspector(device) for n in names}
    with watch.stage("validate"):
        made = images()
        table = validate(inspectors, made, config, recording)
    chosen = choose_scoring(table, config)
    record.update(chosen=chosen, candidates=table, warning=warning(table[chosen], chosen, config),
                  rankings=rankings(table),
                  n_images={"goods": len(made.goods), "defects": len(made.defects),
                            "nuisance": len(made.nuisance), "labelled": len(made.labelled)})
    log.info("scoring %s chosen of %s", chosen, names)
    if record["warning"]:
        log.warning("%s", record["warning"])
    fraction = table[chosen].get("top_fraction", config.postprocess.image_top_fraction)
    return _with_top_fraction(config.with_scoring(chosen), fraction), record


def rankings(table: dict[str, dict]) -> dict[str, list[str]]:
    """The candidates from the most sensitive down, by the synthetic defects and (when the fit
    has some) by the labelled ones: the evidence the choice weighed, each on its own."""
    keys = {"synthetic": "sensitivity_synthetic", "labelled": "sensitivity_labelled"}
    return {name: sorted(table, key=lambda n: -table[n][key]) for name, key in keys.items()
            if all(key in row for row in table.values())}


def _with_top_fraction(config: FitConfig, fraction: float) -> FitConfig:
    """``config`` with its image score resolved to a number, as the artifact records it."""
    return config.with_overrides({"postprocess.top_fraction": fraction})


def select_psg(without: Inspector, with_psg: Inspector, images: ValidationImages, config: FitConfig,
               watch: Timer) -> tuple[bool, dict]:
    """Whether to publish the PSG variant, and the manifest's ``fit.psg_selection`` record: the
    two variants validated like the scoring candidates, without PSG's own families, chosen by
    ``choose_improvement``."""
    with watch.stage("validate"):
        scored = score_candidates({"without_psg": without}, images.all, config.batch_size)
        scored.update(score_candidates({"with_psg": with_psg}, images.all, config.batch_size))
        table = {name: figures(*scored[name], images, config, leave_out=PSG_FAMILIES) for name in scored}
    chosen = choose_improvement(table, config)
    log.info("PSG: %s chosen", chosen)
    return chosen == "with_psg", {"rule": IMPROVEMENT_RULE, "left_out": list(PSG_FAMILIES), "candidates": table,
                                  "chosen": chosen}
