"""Validating scoring candidates on the validation images (``model.training.validation_images``):
every candidate's scores and maps from one feature pass, its figures (sensitivity, robustness),
and the rule that chooses one (``choose``, ``RULE``); ``model.jobs.selection`` applies it to the
fit's candidates and the defect head's training to its weights.
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
RULE = ("robust: nuisance shift <= shift_ratio x lowest + shift_margin; "
        "then the highest sensitivity (mean of image AUROC, pixel AUROC, AU-PRO on goods + defects); "
        "within tie_margin, the earlier candidate")


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


def fraction_scores(maps: np.ndarray, top_fraction: float) -> np.ndarray:
    """``image_scores`` of final maps ``[N, S, S]`` already on the host."""
    return to_host(image_scores(torch.from_numpy(maps), top_fraction)).astype(np.float64)
