"""The self-checking fit: validate every scoring candidate without labels, and choose one.

No fixed scoring is right for every part (a per-position Gaussian breaks on unfixtured parts
and noisy backgrounds; NNS alone localises less on aligned ones), so the fit measures each
candidate of ``selection.candidates`` (``SCORING_CANDIDATES``: config overrides, all built
from one feature extraction) on images made from the held-out goods, which the bank and the
Gaussians never saw:

* **goods**: the held-out goods; each candidate's image threshold comes from them exactly as
  calibration sets it (``far_threshold`` at the target false-alarm rate);
* **sensitivity**: synthetic defects with exact masks on up to ``max_images`` of them
  (``model.method.synthetic_defects``: CutPaste, Scar, Perlin-shaped foreign texture and
  blurred / brightness-shifted patches, small to large), plus the labelled defects when the
  fit has some. Sensitivity is the mean of image AUROC, pixel AUROC and AU-PRO on the goods
  plus these defects; with labelled defects it is (synthetic + 2 x labelled) / 3;
* **robustness**: nuisance copies of the same goods (``model.method.nuisance``: brightness,
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
coarse, and a candidate that finds nothing can have the lowest (BENCHMARKS.md, "Issue 16").

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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from model.jobs.described import Recording
from model.method.amc import image_scores
from model.method.calibration import far_threshold
from model.jobs.variant import Parts
from model.method.config import AUTO, FIXED, FitConfig
from model.method.nuisance import nuisance_suite
from model.method.synthetic_defects import defect_suite
from model.reporting import metrics
from model.runtime.execution import Timer, to_host
from model.runtime.imageio import read_image, resize_rgb
from model.runtime.inspector import Inspector

log = logging.getLogger(__name__)

PSG_FAMILIES = ("cutpaste", "scar")  # the synthetic families PSG trains on (model.method.cutpaste)
RULE = ("robust: nuisance shift <= shift_ratio x lowest + shift_margin; "
        "then the highest sensitivity (mean of image AUROC, pixel AUROC, AU-PRO on goods + defects); "
        "within tie_margin, the earlier candidate")


@dataclass
class ValidationImages:
    """Images made from the held-out goods, at the model input size ``[S, S, 3]`` (RGB uint8)."""

    goods: list[np.ndarray]
    defects: list[np.ndarray]  # synthetic
    defect_masks: np.ndarray  # [Nd, S, S] bool
    defect_families: list[str]  # synthetic_defects.FAMILIES, one per defect
    defect_sources: list[int]  # index into goods of each defect's source
    nuisance: list[np.ndarray]
    nuisance_kinds: list[str]
    nuisance_sources: list[int]  # index into goods of each nuisance copy's source
    labelled: list[np.ndarray] = field(default_factory=list)  # real defects from fit --defects
    labelled_masks: np.ndarray | None = None  # [Nl, S, S] bool, when every one has a mask

    @property
    def all(self) -> list[np.ndarray]:
        return [*self.goods, *self.defects, *self.nuisance, *self.labelled]

    def spans(self) -> tuple[range, range, range, range]:
        """Where the goods, synthetic defects, nuisance copies and labelled defects are in ``all``."""
        ends = np.cumsum([len(self.goods), len(self.defects), len(self.nuisance), len(self.labelled)]).tolist()
        return tuple(range(a, b) for a, b in zip([0, *ends[:-1]], ends, strict=True))

    def extended(self, other: ValidationImages, first: int) -> ValidationImages:
        """These images with ``other``'s synthetic defects and nuisance copies added, whose
        sources are the goods from ``first`` on (``other.goods`` is ``goods[first:]``)."""
        return replace(self, defects=[*self.defects, *other.defects],
                       defect_masks=np.concatenate([self.defect_masks, other.defect_masks]),
                       defect_families=[*self.defect_families, *other.defect_families],
                       defect_sources=[*self.defect_sources, *(first + s for s in other.defect_sources)],
                       nuisance=[*self.nuisance, *other.nuisance],
                       nuisance_kinds=[*self.nuisance_kinds, *other.nuisance_kinds],
                       nuisance_sources=[*self.nuisance_sources, *(first + s for s in other.nuisance_sources)])

    def subset(self, goods: Sequence[int], nuisance: bool = True) -> tuple[ValidationImages, list[list[int]]]:
        """The images of the ``goods`` (indices) only, their synthetic defects and (with
        ``nuisance``) nuisance copies, without the labelled defects; and where its goods,
        defects and nuisance copies are in ``self.all``."""
        at = {g: i for i, g in enumerate(goods)}
        _, in_defects, in_nuisance, _ = self.spans()
        defects = [k for k, s in enumerate(self.defect_sources) if s in at]
        copies = [k for k, s in enumerate(self.nuisance_sources) if s in at] if nuisance else []
        images = ValidationImages(
            goods=[self.goods[g] for g in goods], defects=[self.defects[k] for k in defects],
            defect_masks=self.defect_masks[defects], defect_families=[self.defect_families[k] for k in defects],
            defect_sources=[at[self.defect_sources[k]] for k in defects],
            nuisance=[self.nuisance[k] for k in copies], nuisance_kinds=[self.nuisance_kinds[k] for k in copies],
            nuisance_sources=[at[self.nuisance_sources[k]] for k in copies])
        return images, [list(goods), [in_defects[k] for k in defects], [in_nuisance[k] for k in copies]]


def validation_images(goods: Sequence[np.ndarray], config: FitConfig, labelled: Sequence[np.ndarray] = (),
                      labelled_masks: np.ndarray | None = None, nuisance: bool = True) -> ValidationImages:
    """Synthetic defects and (unless not ``nuisance``) nuisance copies of (up to
    ``selection.max_images``) ``goods``, seeded."""
    return made_images(goods, config.selection.max_images, np.random.default_rng(config.seed + 1), config,
                       nuisance, labelled, labelled_masks)


def made_images(goods: Sequence[np.ndarray], n_sources: int, rng: np.random.Generator, config: FitConfig,
                nuisance: bool = True, labelled: Sequence[np.ndarray] = (),
                labelled_masks: np.ndarray | None = None) -> ValidationImages:
    """``selection.defects_per_image`` synthetic defects and (with ``nuisance``)
    ``selection.nuisances_per_image`` nuisance copies of each of the first ``n_sources`` goods."""
    sel = config.selection
    sources = list(goods[:n_sources])
    made = defect_suite(sources, rng, sel.defects_per_image)
    copies = nuisance_suite(sources, rng, sel.nuisances_per_image) if nuisance else []
    size = goods[0].shape[0] if len(goods) else config.image_size
    return ValidationImages(
        goods=list(goods),
        defects=[image for _, image, _, _ in made],
        defect_masks=np.stack([mask for _, _, mask, _ in made]) if made else np.zeros((0, size, size), bool),
        defect_families=[family for _, _, _, family in made],
        defect_sources=[index for index, _, _, _ in made],
        nuisance=[image for _, image, _ in copies],
        nuisance_kinds=[kind for _, _, kind in copies],
        nuisance_sources=[index for index, _, _ in copies],
        labelled=list(labelled),
        labelled_masks=labelled_masks,
    )


@torch.inference_mode()
def score_candidates(inspectors: dict[str, Inspector], images: Sequence[np.ndarray], batch_size: int,
                     recording: Recording | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Image scores ``[N]`` and final maps ``[N, S, S]`` of ``images`` for every candidate.

    The candidates share one feature path: each batch is preprocessed and run through it once
    (the first inspector's own preprocessing), and branch maps are shared between candidates
    that share a branch module. A ``recording`` keeps the images' description on the way.
    """
    first = next(iter(inspectors.values()))
    out: dict[str, tuple[list, list]] = {name: ([], []) for name in inspectors}
    for start in range(0, len(images), batch_size):
        x = first.preprocess(images[start : start + batch_size]).to(first.device)
        inputs = first.branch_inputs(x)
        cache = recording.record(list(inspectors.values()), inputs) if recording is not None else {}
        for name, inspector in inspectors.items():
            final = inspector.combine(inputs, cache=cache)
            out[name][0].append(to_host(image_scores(final, inspector.config.postprocess.image_top_fraction))
                                .astype(np.float64))
            out[name][1].append(to_host(final))
    return {name: (np.concatenate(s), np.concatenate(m)) for name, (s, m) in out.items()}


def figures(scores: np.ndarray, maps: np.ndarray, images: ValidationImages, config: FitConfig,
            leave_out: Sequence[str] = (), pixels: bool = True) -> dict:
    """One candidate's validation figures from its scores and maps of ``images.all`` (in order);
    the synthetic defects of the families ``leave_out`` do not count; without ``pixels`` the
    sensitivity is the image AUROC alone."""
    goods, defects, copies, real = images.spans()
    good = np.asarray(goods)
    defect = np.asarray(defects)[[f not in leave_out for f in images.defect_families]]
    nuisance, labelled = slice(copies.start, copies.stop), slice(real.start, real.stop)
    threshold = far_threshold(scores[good], config.calibration.image_false_alarm_rate)
    synthetic = _against_goods(scores, maps, good, defect, images.defect_masks[defect - defects.start] if pixels else None)
    flagged = scores[nuisance] > threshold
    moved = nuisance_shift(scores[good], scores[nuisance], images.nuisance_sources, threshold)
    kinds = {k: [i for i, kk in enumerate(images.nuisance_kinds) if kk == k] for k in dict.fromkeys(images.nuisance_kinds)}
    row = {**synthetic, "sensitivity": _mean(synthetic), "threshold": threshold,
           "nuisance_shift": float(np.median(moved)), "nuisance_far": float(np.mean(flagged)),
           "nuisance_shift_by_kind": {k: float(np.median(moved[i])) for k, i in kinds.items()},
           "nuisance_far_by_kind": {k: float(np.mean(flagged[i])) for k, i in kinds.items()}}
    if images.labelled:
        real = _against_goods(scores, maps, good, labelled, images.labelled_masks if pixels else None)
        row["labelled"] = real
        row["sensitivity"] = (row["sensitivity"] + 2 * _mean(real)) / 3
    return row


def _against_goods(scores: np.ndarray, maps: np.ndarray, good: np.ndarray, defects: np.ndarray | slice,
                   masks: np.ndarray | None) -> dict[str, float | None]:
    """Image AUROC, pixel AUROC and AU-PRO of the ``defects`` against the ``good`` images
    (``masks [Nd, S, S]`` of the defects; the pixel metrics are None without them)."""
    n_good, n_def = len(scores[good]), len(scores[defects])
    labels = np.r_[np.zeros(n_good), np.ones(n_def)]
    if masks is None:
        return metrics.metric_block(np.r_[scores[good], scores[defects]], labels, None, None)
    all_masks = np.concatenate([np.zeros((n_good, *maps.shape[1:]), bool), masks])
    return metrics.metric_block(np.r_[scores[good], scores[defects]], labels,
                                np.concatenate([maps[good], maps[defects]]), all_masks)


def nuisance_shift(good: np.ndarray, changed: np.ndarray, sources: Sequence[int], threshold: float) -> np.ndarray:
    """How far each nuisance copy moved its own good part's score, in units of the good parts'
    margin to the threshold, on a log scale: ``(log s_changed - log s_source) / (log t - median log s_good)``.

    Paired with its source, so the goods' own spread cancels; 1 means a typical good part
    pushed all the way to the threshold. Unlike a false-alarm rate it does not saturate.
    """
    logs = np.log(np.maximum(good, 1e-12))
    margin = max(float(np.log(threshold) - np.median(logs)), 1e-6)
    return (np.log(np.maximum(changed, 1e-12)) - logs[np.asarray(sources, dtype=int)]) / margin


def _mean(block: dict[str, float | None]) -> float:
    values = [v for v in block.values() if v is not None]
    return float(np.mean(values)) if values else 0.0


def choose(table: dict[str, dict], config: FitConfig) -> str:
    """The candidate to publish from the validation ``table`` (name -> figures), by ``RULE``."""
    sel = config.selection
    limit = sel.shift_ratio * min(row["nuisance_shift"] for row in table.values()) + sel.shift_margin
    robust = [name for name, row in table.items() if row["nuisance_shift"] <= limit]
    best = max(table[name]["sensitivity"] for name in robust)
    return next(name for name in robust if table[name]["sensitivity"] >= best - sel.tie_margin)


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


def fraction_scores(maps: np.ndarray, top_fraction: float) -> np.ndarray:
    """``image_scores`` of final maps ``[N, S, S]`` already on the host."""
    return to_host(image_scores(torch.from_numpy(maps), top_fraction)).astype(np.float64)


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


def load_validation_images(goods: Sequence[Path], labelled: Sequence[Path], labelled_masks: np.ndarray | None,
                           config: FitConfig) -> ValidationImages:
    """``validation_images`` of the held-out goods' files and the labelled defects' files
    (``labelled_masks [Nl, S, S]``, None without), decoded and resized to the model input."""
    decoded = [resize_rgb(read_image(str(f)), config.image_size) for f in [*goods, *labelled]]
    return validation_images(decoded[: len(goods)], config, decoded[len(goods):], labelled_masks)


def select_scoring(parts: Parts, config: FitConfig, n_holdout: int, images: Callable[[], ValidationImages],
                   device: str, watch: Timer, recording: Recording | None = None) -> tuple[FitConfig, dict]:
    """The config to publish and the manifest's ``fit.selection`` record.

    ``images`` gives the validation images; it is called only when there is a choice to make,
    and then the ``recording`` keeps their description (``model.jobs.described``).
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
