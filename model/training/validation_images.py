"""The images the self-checking fit validates on, made from the held-out goods: the goods, synthetic
defects with exact masks, nuisance copies, and the labelled defects when the fit has some.

The images are at the model input size ``[S, S, 3]`` (RGB uint8); each synthetic defect and
nuisance copy records the good it was made from.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from model.method.config import FitConfig
from model.runtime.imageio import read_image, resize_rgb
from model.training.nuisance import nuisance_suite
from model.training.synthetic_defects import defect_suite


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
    nuisance_strengths: list[float]  # each nuisance copy's strength (selection.nuisance_strengths)
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
                       nuisance_sources=[*self.nuisance_sources, *(first + s for s in other.nuisance_sources)],
                       nuisance_strengths=[*self.nuisance_strengths, *other.nuisance_strengths])

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
            nuisance_sources=[at[self.nuisance_sources[k]] for k in copies],
            nuisance_strengths=[self.nuisance_strengths[k] for k in copies])
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
    """``selection.defects_per_image`` synthetic defects and (with ``nuisance``) one nuisance copy at
    each of ``selection.nuisance_strengths`` of each of the first ``n_sources`` goods."""
    sel = config.selection
    sources = list(goods[:n_sources])
    made = defect_suite(sources, rng, sel.defects_per_image)
    copies = nuisance_suite(sources, rng, sel.nuisance_strengths) if nuisance else []
    size = goods[0].shape[0] if len(goods) else config.image_size
    return ValidationImages(
        goods=list(goods),
        defects=[image for _, image, _, _ in made],
        defect_masks=np.stack([mask for _, _, mask, _ in made]) if made else np.zeros((0, size, size), bool),
        defect_families=[family for _, _, _, family in made],
        defect_sources=[index for index, _, _, _ in made],
        nuisance=[image for _, image, _, _ in copies],
        nuisance_kinds=[kind for _, _, kind, _ in copies],
        nuisance_sources=[index for index, _, _, _ in copies],
        nuisance_strengths=[strength for *_, strength in copies],
        labelled=list(labelled),
        labelled_masks=labelled_masks,
    )


def load_validation_images(goods: Sequence[Path], labelled: Sequence[Path], labelled_masks: np.ndarray | None,
                           config: FitConfig) -> ValidationImages:
    """``validation_images`` of the held-out goods' files and the labelled defects' files
    (``labelled_masks [Nl, S, S]``, None without), decoded and resized to the model input."""
    decoded = [resize_rgb(read_image(str(f)), config.image_size) for f in [*goods, *labelled]]
    return validation_images(decoded[: len(goods)], config, decoded[len(goods):], labelled_masks)
