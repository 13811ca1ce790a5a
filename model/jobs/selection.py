"""The self-checking fit: validate every scoring candidate without labels, and choose one.

No fixed scoring is right for every part (a per-position Gaussian breaks on unfixtured parts
and noisy backgrounds; NNS alone localises less on aligned ones), so the fit measures each
candidate of ``selection.candidates`` (``SCORING_CANDIDATES``: config overrides, all built
from one feature extraction) on images made from the held-out goods, which the bank and the
Gaussians never saw:

* **goods**: the held-out goods; each candidate's image threshold comes from them exactly as
  calibration sets it (``far_threshold`` at the target false-alarm rate);
* **sensitivity**: synthetic defects with exact masks on up to ``max_images`` of them
  (``model.training.synthetic_defects``: CutPaste, Scar, Perlin-shaped foreign texture and
  blurred / brightness-shifted patches, small to large), plus the labelled defects when the
  fit has some. Sensitivity is the mean of image AUROC, pixel AUROC and AU-PRO on the goods
  plus these defects; with labelled defects it is (synthetic + 2 x labelled) / 3;
* **robustness**: nuisance copies of the same goods (``model.training.nuisance``: brightness,
  contrast, gamma, noise, blur, shift, rotation, scale). The nuisance false-alarm rate is the
  fraction of them above the candidate's threshold: how far its good scores move under the
  benign changes a line sees between fit and use.

The rule (``choose``): the robust candidates are those whose nuisance shift (how far the
changes move a good part's own score towards the threshold, paired with its source) is at
most ``shift_ratio`` times the lowest one plus ``shift_margin``: a candidate that reacts
several times more to the changes than another would stop the line after the next change of
lighting or fixture. Among the robust ones the highest sensitivity wins, and a candidate
within ``tie_margin`` of it that comes earlier in ``selection.candidates`` is preferred. The
nuisance false-alarm rate is reported, not used: on 20-80 held-out goods it saturates and is
coarse, and a candidate that finds nothing can have the lowest (docs/lab/issue-16-selection.md).

Each candidate's image score comes first (``choose_top_fraction``, with
``postprocess.top_fraction="auto"``): the maximum of its map, or the mean of a top fraction
of its pixels, chosen by the same rule on image-level figures. A mean over the top pixels
ignores a few hot pixels on noisy good parts, which can matter more than the map itself
(magnetic tile, NNS: real image AUROC 0.879 with the maximum, 0.924 with the top 1 %).

PSG goes through the same mechanism (``select_psg``): with labelled defects and
``psg.enabled="auto"``, the chosen scoring without and with PSG are the two candidates of a
second table, on the same images and by the same rule (without PSG first, so a tie keeps
it). PSG is trained on CutPaste and Scar, so in that table the synthetic sensitivity counts
only the other families (``PSG_FAMILIES`` are left out for both rows).
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
from model.training.validation import PSG_FAMILIES, RULE, choose, figures, fraction_scores, score_candidates
from model.training.validation_images import ValidationImages

log = logging.getLogger(__name__)


def warning(row: dict, name: str, config: FitConfig) -> str | None:
    """What to try when even the chosen candidate validates weakly (None when it does not)."""
    sel = config.selection
    weak = row["sensitivity"] < sel.weak_sensitivity
    fragile = row["nuisance_far"] > sel.fragile_far
    if not (weak or fragile):
        return None
    what = []
    if weak:
        what.append(f"finds synthetic defects weakly (sensitivity {row['sensitivity']:.3f})")
    if fragile:
        what.append(f"flags {row['nuisance_far']:.0%} of good parts under small lighting or position changes")
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
    return names, {"mode": "auto", "chosen": None, "rule": RULE}


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
    and chosen by ``RULE`` (the maximum, first, wins a tie). Otherwise the configured one, no record."""
    if config.postprocess.top_fraction != AUTO:
        return config.postprocess.image_top_fraction, {}
    sweep = {str(f): figures(fraction_scores(maps, f), maps, images, config, pixels=False)
             for f in config.selection.top_fractions}
    return float(choose(sweep, config)), sweep


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
    chosen = choose(table, config)
    record.update(chosen=chosen, candidates=table, warning=warning(table[chosen], chosen, config),
                  n_images={"goods": len(made.goods), "defects": len(made.defects),
                            "nuisance": len(made.nuisance), "labelled": len(made.labelled)})
    log.info("scoring %s chosen of %s", chosen, names)
    if record["warning"]:
        log.warning("%s", record["warning"])
    fraction = table[chosen].get("top_fraction", config.postprocess.image_top_fraction)
    return _with_top_fraction(config.with_scoring(chosen), fraction), record


def _with_top_fraction(config: FitConfig, fraction: float) -> FitConfig:
    """``config`` with its image score resolved to a number, as the artifact records it."""
    return config.with_overrides({"postprocess.top_fraction": fraction})


def select_psg(without: Inspector, with_psg: Inspector, images: ValidationImages, config: FitConfig,
               watch: Timer) -> tuple[bool, dict]:
    """Whether to publish the PSG variant, and the manifest's ``fit.psg_selection`` record: the
    two variants validated like the scoring candidates (``RULE``), without PSG's own families."""
    with watch.stage("validate"):
        scored = score_candidates({"without_psg": without}, images.all, config.batch_size)
        scored.update(score_candidates({"with_psg": with_psg}, images.all, config.batch_size))
        table = {name: figures(*scored[name], images, config, leave_out=PSG_FAMILIES) for name in scored}
    chosen = choose(table, config)
    log.info("PSG: %s chosen", chosen)
    return chosen == "with_psg", {"rule": RULE, "left_out": list(PSG_FAMILIES), "candidates": table,
                                  "chosen": chosen}
