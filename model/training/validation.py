"""Validating candidates on the validation images (``model.training.validation_images``): every
candidate's scores and maps from one feature pass, and its figures (sensitivity, robustness);
``model.training.rule`` chooses from them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from model.method.amc import image_scores
from model.method.calibration import far_threshold
from model.method.config import FitConfig
from model.reporting import metrics
from model.runtime.execution import to_host
from model.runtime.inspector import Inspector, SharedMaps
from model.training.described import Recording
from model.training.validation_images import ValidationImages

PSG_FAMILIES = ("cutpaste", "scar")  # the synthetic families PSG trains on (model.training.cutpaste)


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
        shared = SharedMaps()
        if recording is not None:
            recording.record(inspectors, inputs, shared)
        for name, inspector in inspectors.items():
            final = inspector.final_maps(inspector.describe(inputs, shared))
            out[name][0].append(to_host(image_scores(final, inspector.config.postprocess.image_top_fraction))
                                .astype(np.float64))
            out[name][1].append(to_host(final))
    return {name: (np.concatenate(s), np.concatenate(m)) for name, (s, m) in out.items()}


def figures(scores: np.ndarray, maps: np.ndarray, images: ValidationImages, config: FitConfig,
            leave_out: Sequence[str] = (), pixels: bool = True, labelled_weight: float | None = None) -> dict:
    """One candidate's validation figures from its scores and maps of ``images.all`` (in order).

    * ``image_auroc``: the mean over synthetic families of each family's image AUROC against the
      goods (faint families count as much as salient ones); ``pixel_auroc`` and ``au_pro`` over
      all synthetic defects; ``sensitivity_synthetic`` their mean (without ``pixels`` the image
      AUROC alone). The families ``leave_out`` do not count.
    * with labelled defects, ``labelled`` (their three metrics against the goods) and
      ``sensitivity_labelled``; ``sensitivity`` weighs them ``labelled_weight`` times the synthetic
      one (by default ``selection.labelled_weight``: they dominate), else it is the synthetic one.
    * ``nuisance_far``: per strength of ``selection.nuisance_strengths``, the share of nuisance
      copies above the candidate's own threshold (``threshold``: the false-alarm-rate threshold of
      the goods, as calibration sets it); ``nuisance_far_by_kind`` over every strength.
    """
    goods, defects, copies, real = images.spans()
    good = np.asarray(goods)
    families = np.asarray(images.defect_families)
    kept = [f for f in dict.fromkeys(images.defect_families) if f not in leave_out]
    defect = np.asarray(defects)[np.isin(families, kept)] if kept else np.zeros(0, int)
    threshold = far_threshold(scores[good], config.calibration.image_false_alarm_rate)
    masks = images.defect_masks[defect - defects.start] if pixels else None
    synthetic = _against_goods(scores, maps, good, defect, masks)
    by_family = {f: metrics.auroc(np.r_[scores[good], scores[np.asarray(defects)[families == f]]],
                                  np.r_[np.zeros(len(good)), np.ones(int(np.sum(families == f)))]) for f in kept}
    synthetic["image_auroc"] = _mean(by_family) if by_family else None
    row = {**synthetic, "sensitivity_synthetic": _mean(synthetic), "image_auroc_by_family": by_family,
           "threshold": threshold, **robustness(scores[copies.start:copies.stop], threshold, images)}
    row["sensitivity"] = row["sensitivity_synthetic"]
    if images.labelled:
        real_block = _against_goods(scores, maps, good, slice(real.start, real.stop),
                                    images.labelled_masks if pixels else None)
        w = config.selection.labelled_weight if labelled_weight is None else labelled_weight
        row.update(labelled=real_block, sensitivity_labelled=_mean(real_block),
                   sensitivity=(row["sensitivity_synthetic"] + w * _mean(real_block)) / (1 + w))
    return row


def robustness(copies: np.ndarray, threshold: float, images: ValidationImages) -> dict:
    """The nuisance copies' scores ``[Nn]`` against the candidate's ``threshold``: the share flagged per
    strength and per kind."""
    flagged = copies > threshold
    strengths, kinds = np.asarray(images.nuisance_strengths, float), np.asarray(images.nuisance_kinds)
    return {"nuisance_far": {str(g): float(np.mean(flagged[strengths == g])) for g in dict.fromkeys(strengths)},
            "nuisance_far_by_kind": {k: float(np.mean(flagged[kinds == k])) for k in dict.fromkeys(kinds)}}


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


def _mean(block: dict[str, float | None]) -> float:
    values = [v for v in block.values() if v is not None]
    return float(np.mean(values)) if values else 0.0


def fraction_scores(maps: np.ndarray, top_fraction: float) -> np.ndarray:
    """``image_scores`` of final maps ``[N, S, S]`` already on the host."""
    return to_host(image_scores(torch.from_numpy(maps), top_fraction)).astype(np.float64)
