"""What the defect head trains and validates on: the abnormal bank built from the labelled
defects, the goods that carry a pasted defect, and the fit's validation images dealt to the
parts a head trains on, sets its level on and is validated on (``Pool``).

Every image is described once through the fitted variant (``model.training.described``: the
validate stage's description where it has one); the head's inputs for any abnormal bank (each
cross-fitting fold has its own) are then built from that description without another pass
(``input_chunks``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from model.method.config import FitConfig
from model.method.coreset import greedy_coreset
from model.method.defect_head import cell_inputs
from model.runtime.inspector import Inspector
from model.training.described import Cells, Describer, describe, grid_cover
from model.training.synthetic_defects import FAMILIES
from model.training.validation_images import ValidationImages, made_images


def abnormal_bank(shots: Cells, masks: Sequence[np.ndarray | None], inside: float,
                  size_cap: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The NNS features ``[A, C]`` of the cells that the shots' masks cover at least ``inside``
    (the eroded masks; a mask that covers no cell that much gives its most covered cells), and
    the shot each came from ``[A]``. Shots without a mask give none. Beyond ``size_cap`` cells a
    k-center coreset of them (as the normal bank's) keeps the search cheap: large defects give
    thousands of near-duplicate cells."""
    size = next((m.shape[0] for m in masks if m is not None), 1)
    cover = grid_cover(masks, size, tuple(shots.features.shape[-2:]))
    keep = cover >= inside
    for i in range(len(shots)):  # a thin defect that fills no cell still gives its most covered one
        if not keep[i].any() and cover[i].max() > 0:
            keep[i] = cover[i] == cover[i].max()
    feats = shots.features.permute(0, 2, 3, 1)[keep]
    owner = shots.owner[:, None, None].expand_as(keep)[keep]
    chosen = greedy_coreset(feats, size_cap) if len(feats) > size_cap else torch.arange(len(feats))
    return feats[chosen], owner[chosen]


def input_chunks(cells: Cells, bank: torch.Tensor, bank_owner: torch.Tensor, chunk: int = 16) -> Iterator[torch.Tensor]:
    """The head's unnormalised inputs of ``cells`` against the abnormal ``bank``, ``chunk``
    images ``[n, D, h, w]`` at a time (all of them would be N x 508 x h x w floats); a labelled
    defect is compared with the other defects' cells only (leave its own out)."""
    for start in range(0, len(cells), chunk):
        part = cells.take(range(start, min(start + chunk, len(cells))))
        hw = part.features.shape[-2] * part.features.shape[-1]
        owner = part.owner.repeat_interleave(hw)
        exclude = (owner[:, None] == bank_owner[None, :]) & (owner[:, None] >= 0)
        yield cell_inputs(part.features, part.nearest, part.gaussian, bank, exclude)


def paste_defects(goods: Sequence[np.ndarray], shots: Sequence[np.ndarray], masks: Sequence[np.ndarray | None],
                  n: int, rng: np.random.Generator,
                  copies: int = 1) -> tuple[list[np.ndarray], list[np.ndarray], list[int]]:
    """``n`` goods (cycling) that each carry ``copies`` of one labelled defect's masked region,
    each rotated by a multiple of 90 degrees, maybe flipped and moved anywhere; their masks; and
    which defect each carries. None without masks."""
    usable = [i for i, m in enumerate(masks) if m is not None and m.any()]
    images, out_masks, sources = [], [], []
    if not usable or not goods:
        return images, out_masks, sources
    size = goods[0].shape[0]
    for k in range(n):
        good = goods[k % len(goods)].copy()
        source = usable[rng.integers(len(usable))]
        placed = np.zeros((size, size), bool)
        for _ in range(copies):
            src, m = shots[source], masks[source]
            turns = int(rng.integers(4))
            src, m = np.rot90(src, turns), np.rot90(m, turns)
            if rng.integers(2):
                src, m = src[:, ::-1], m[:, ::-1]
            ys, xs = np.nonzero(m)
            y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
            ty, tx = int(rng.integers(0, size - (y1 - y0) + 1)), int(rng.integers(0, size - (x1 - x0) + 1))
            region, patch = m[y0:y1, x0:x1], src[y0:y1, x0:x1]
            good[ty : ty + y1 - y0, tx : tx + x1 - x0][region] = patch[region]
            placed[ty : ty + y1 - y0, tx : tx + x1 - x0] |= region
        images.append(good)
        out_masks.append(placed)
        sources.append(source)
    return images, out_masks, sources


@dataclass
class Pool:
    """What a fit's heads learn from and are validated on, each image described once: part A of
    the goods with synthetic defects on them (``train_families``: each image's family, None for
    a good), goods of part A carrying a pasted labelled defect (``pasted_from``: which), the
    goods of part C, which no head trains on (``level``: they set a head's level on good
    parts), and from half B the validation images (``made``: goods, synthetic defects,
    nuisance copies) as ``held``."""

    train: Cells
    level: Cells
    train_families: list[str | None]
    pasted: Cells | None
    pasted_from: torch.Tensor
    made: ValidationImages
    held: list[Cells | None]

    def fold(self, shots: Cells, rest: Sequence[int], families: Sequence[str]) -> Cells:
        """A cross-fitting head's training cells: part A's goods, its synthetic defects of the
        ``families`` only, and the ``rest`` of the shots only (with the goods carrying them)."""
        carried = torch.isin(self.pasted_from, torch.as_tensor(list(rest), dtype=torch.long))
        pasted = self.pasted.take(torch.nonzero(carried).flatten()) if self.pasted is not None else None
        train = self.train.take([i for i, f in enumerate(self.train_families) if f is None or f in families])
        return Cells.concat([train, pasted, shots.take(rest)])

    def everything(self, shots: Cells) -> Cells:
        """The published head's training cells: the goods and synthetic defects of part A and
        half B (never part C), every pasted good and every shot (the nuisance copies only
        validate, for the folds and this alike)."""
        return Cells.concat([self.train, *self.held[:2], self.pasted, shots])


def roles(families: Sequence[str | None]) -> tuple[list[int], list[int], list[int]]:
    """The goods (by the family of their first synthetic defect, None: none) dealt to part A,
    part C and half B, so that each gets every family: in family order, alternately to half B
    and the other half; every fourth of the other half is part C (at least one)."""
    rank = {f: i for i, f in enumerate(FAMILIES)}
    order = sorted(range(len(families)), key=lambda i: (rank.get(families[i], len(rank)), i))
    side, half_b = order[0::2], order[1::2]
    in_c = set(side[3::4]) or set(side[-1:])
    return sorted(set(side) - in_c), sorted(in_c), sorted(half_b)


def first_families(images: ValidationImages) -> list[str | None]:
    """Each good's first synthetic defect's family (None: it has none)."""
    first: dict[int, str] = {}
    for source, family in zip(images.defect_sources, images.defect_families, strict=True):
        first.setdefault(source, family)
    return [first.get(i) for i in range(len(images.goods))]


def completed(inspector: Inspector, made: ValidationImages, recorded: Cells | None, config: FitConfig,
              nuisance: bool, extend: bool = True) -> tuple[ValidationImages, Callable[..., Cells | None]]:
    """The fit's validation images ``made`` completed for the pool (unless not ``extend``): the
    goods beyond ``selection.max_images``, which the validate stage made nothing from, get their
    synthetic defects and (with ``nuisance``) nuisance copies here; and ``Describer.cells`` of
    the result's images, those of ``made`` taken from ``recorded`` (the cells of ``made.all`` as
    good images) when given."""
    first = min(len(made.goods), config.selection.max_images) if extend else len(made.goods)
    extra = made_images(made.goods[first:], len(made.goods) - first, np.random.default_rng(config.seed + 3),
                        config, nuisance)
    every = made.extended(extra, first)
    goods, defects, copies, labelled = every.spans()  # made.all's images in every.all: extra's come after
    at = [*goods, *defects[:len(made.defects)], *copies[:len(made.nuisance)], *labelled]
    return every, Describer(inspector, every.all, recorded, at).cells


def describe_pool(inspector: Inspector, every: ValidationImages, cells: Callable[..., Cells | None],
                  shot_masks: Sequence[np.ndarray | None], config: FitConfig, validate: bool) -> Pool:
    """The images ``every`` (``completed``; ``cells`` describes them) dealt to the pool's parts
    (``roles``; half B's nuisance copies only when ``validate``), and part A's goods carrying
    pasted labelled defects (``every.labelled``)."""
    part_a, part_c, half_b = roles(first_families(every))
    train, (goods_a, defects_a, _) = every.subset(part_a, nuisance=False)
    made_b, (goods_b, defects_b, nuisance_b) = every.subset(half_b, nuisance=validate)
    rng = np.random.default_rng(config.seed + 2)
    n_pasted = min(config.head.pasted, config.head.pasted_per_good * len(part_a))
    pasted, pasted_masks, pasted_from = paste_defects(train.goods, every.labelled, shot_masks, n_pasted, rng,
                                                         config.head.pasted_copies)
    return Pool(train=Cells.concat([cells(goods_a), cells(defects_a, list(train.defect_masks))]),
                level=cells(part_c), train_families=[None] * len(part_a) + train.defect_families,
                pasted=describe(inspector, pasted, pasted_masks),
                pasted_from=torch.as_tensor(pasted_from, dtype=torch.long), made=made_b,
                held=[cells(goods_b), cells(defects_b, list(made_b.defect_masks)), cells(nuisance_b)])
