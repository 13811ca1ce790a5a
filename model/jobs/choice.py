"""From one extraction's parts to the variant to publish, for the fit and for an update alike.

The scoring (``selection.select_scoring``), PSG when the fit offers a PSG variant
(``selection.select_psg``), the defect head when ``wants_head`` (``head_fit.fit_head``), all on
the same validation images made from the held-out goods and the labelled defects, then the
chosen variant's scores and maps of those goods and defects through the Inspector the server
uses, which calibration reads.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import cache

import numpy as np
import torch

from model.jobs.selection import select_psg, select_scoring
from model.jobs.variant import Parts, Variant
from model.method.calibration import Thresholds, calibrate_on_good, calibrate_with_defects
from model.method.config import FitConfig
from model.reporting import metrics
from model.runtime.execution import Timer
from model.runtime.inspector import Inspector
from model.training.described import Recording
from model.training.head_fit import fit_head
from model.training.validation_images import ValidationImages, validation_images

log = logging.getLogger(__name__)


@dataclass
class Validation:
    """The held-out goods and the labelled defects, RGB ``uint8`` at the model input size
    ``[S, S, 3]``: what a variant is chosen and calibrated on (and what an update keeps)."""

    goods: list[np.ndarray]
    defects: list[np.ndarray]
    defect_masks: list[np.ndarray | None]  # [S, S] bool each; None: a defect without a mask
    defect_types: list[str]

    @property
    def images(self) -> list[np.ndarray]:
        return [*self.goods, *self.defects]

    @property
    def labels(self) -> np.ndarray:
        """``[N]``: 0 good, 1 defect."""
        return np.r_[np.zeros(len(self.goods), int), np.ones(len(self.defects), int)]

    @property
    def labelled_masks(self) -> np.ndarray | None:
        """``[K, S, S]`` when every defect has a mask."""
        if not self.defects or any(m is None for m in self.defect_masks):
            return None
        return np.stack(self.defect_masks)

    @property
    def masks(self) -> np.ndarray | None:
        """``[N, S, S]`` of the goods (empty) and the defects, when every defect has a mask."""
        labelled = self.labelled_masks
        if labelled is None:
            return None
        return np.concatenate([np.zeros((len(self.goods), *labelled.shape[1:]), bool), labelled])


@dataclass
class Candidate:
    """A fitted variant with its scores ``[N]``, maps ``[N, S, S]`` and metrics on the validation set."""

    variant: Variant
    scores: np.ndarray
    maps: np.ndarray
    block: dict[str, float | None] | None  # None without labelled defects


@dataclass
class Choice:
    """The variant to publish, scored, and the records of the choices that made it."""

    chosen: Candidate
    selection: dict
    psg_selection: dict | None
    head: dict | None


def choose(parts: Parts, config: FitConfig, validation: Validation, device: str, watch: Timer,
           with_psg: Callable[[FitConfig], Variant] | None = None) -> Choice:
    """The variant of ``parts`` to publish, by the self-checking fit's choices on ``validation``.
    ``with_psg(scoring)`` fits the PSG variant of the chosen scoring, when there is one to weigh."""
    images = cache(lambda: validation_images(validation.goods, config, validation.defects,
                                             validation.labelled_masks))
    heads = bool(validation.defects) and config.head.enabled is not False and parts.bank is not None
    recording = Recording(parts.features, parts.bank) if heads else None  # the head's, if it is trained
    scoring, selection = select_scoring(parts, config, len(validation.goods), images, device, watch, recording)
    variant, psg_selection = parts.variant(scoring, watch), None
    if with_psg is not None:
        other = with_psg(scoring)
        keep, psg_selection = select_psg(variant.inspector(device), other.inspector(device), images(), scoring,
                                         watch)
        variant = other if keep else variant
    variant, head_record = attach_head(variant, images, validation, device, watch, recording)
    with watch.stage("calibrate"):
        scores, maps = measure_all(variant.inspector(device), validation.images)
    block = (metrics.metric_block(scores, validation.labels, maps, validation.masks)
             if validation.defects else None)
    return Choice(Candidate(variant, scores, maps, block), selection, psg_selection, head_record)


def attach_head(variant: Variant, images: Callable[[], ValidationImages], validation: Validation,
                device: str, watch: Timer, recording: Recording | None = None) -> tuple[Variant, dict | None]:
    """``variant`` with its defect head when ``wants_head`` (``head.enabled`` resolved to true or
    false in its config), and the manifest's ``fit.head`` record (None without labelled defects).
    The ``recording`` of the validate stage, when it holds this variant's description of the
    validation images, spares the head describing them again."""
    config = variant.config
    # taken in any case: the recording lets its batches go (a scoring without NNS takes nothing)
    recorded = recording.take(config.scoring, variant.features, variant.bank) if recording else None
    if wants_head(config, validation.defects):
        with watch.stage("head"):
            head, record = fit_head(variant.inspector(device), images(), validation.defect_masks,
                                    validation.defect_types, config, recorded)
        if head is None:  # weight 0: the unsupervised map won, nothing to store or to run
            return replace(variant, config=config.with_overrides({"head.enabled": False})), record
        return replace(variant, head=head, config=config.with_overrides({"head.enabled": True})), record
    record = None
    if validation.defects and config.head.enabled is not False:
        record = {"skipped": f"the chosen scoring {config.scoring!r} has no NNS branch, "
                             "which the defect head compares patches with"}
    return replace(variant, config=config.with_overrides({"head.enabled": False})), record


def wants_head(config: FitConfig, defects: Sequence) -> bool:
    """Whether the fit trains the defect head: ``head.enabled`` true or "auto", labelled defects,
    and the NNS branch in the chosen scoring (the head compares patches with its memory bank)."""
    return config.head.enabled is not False and bool(defects) and config.nns.enabled


@torch.inference_mode()
def measure_all(inspector: Inspector, images: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Image scores ``[N]`` and final maps ``[N, S, S]`` of ``images`` through the Inspector's own
    preprocessing and scoring: the path that serves."""
    scores, maps = [], []
    for start in range(0, len(images), inspector.config.batch_size):
        s, m, _ = inspector.measure(images[start : start + inspector.config.batch_size])
        scores.append(s)
        maps.append(m)
    return np.concatenate(scores), np.concatenate(maps)


def calibrate(chosen: Candidate, validation: Validation, config: FitConfig) -> tuple[Thresholds, dict | None]:
    """Target false-alarm-rate thresholds on the held-out goods; with labelled defects F1's are
    computed too and recorded beside them (``calibration.with_defects`` says which is published)."""
    cal = config.calibration
    if validation.defects:
        return calibrate_with_defects(chosen.scores, validation.labels, chosen.maps, validation.masks,
                                      cal.image_false_alarm_rate, cal.pixel_false_alarm_rate, cal.with_defects)
    return calibrate_on_good(chosen.scores, chosen.maps, cal.image_false_alarm_rate, cal.pixel_false_alarm_rate), None
