"""What the defect head trains and validates on: images described once through the fitted
variant, per NNS cell (``Cells``), the abnormal bank built from the labelled defects, and the
goods that carry a pasted defect.

A set of images is run through the variant's own feature path and branches once; the head's
inputs for any abnormal bank (each cross-fitting fold has its own) are then built from that
description without another pass (``input_chunks``). ``Pool`` holds everything a fit's heads
learn from and are validated on, described once.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from model.jobs.selection import ValidationImages, validation_images
from model.method.config import FitConfig
from model.method.coreset import greedy_coreset
from model.method.defect_head import cell_inputs
from model.runtime.inspector import Inspector

BORDER = (0.01, 0.5)  # cells this fraction covered by a mask are left out of the loss


@dataclass
class Cells:
    """A set of images described through the variant, on the NNS grid ``[N, *, h, w]``."""

    features: torch.Tensor  # [N, C, h, w]
    nearest: torch.Tensor  # [N, C, h, w] nearest normal vector
    distance: torch.Tensor  # [N, h, w] NNS map
    gaussian: torch.Tensor | None  # [N, H, W] Gaussian map, None without the branch
    target: torch.Tensor  # [N, h, w] 1 where a mask covers at least half the cell
    weight: torch.Tensor  # [N, h, w] pixel-loss weight: 0 at mask borders and on defects without a mask, else 1
    image_label: torch.Tensor  # [N] 1 for a defect image without a mask (image-level loss), else 0
    owner: torch.Tensor  # [N] which labelled defect the image is (-1: none)

    def __len__(self) -> int:
        return self.features.shape[0]

    def take(self, index: Sequence[int]) -> Cells:
        i = torch.as_tensor(list(index), dtype=torch.long)
        return Cells(*(t[i] if t is not None else None for t in self.__dict__.values()))

    @staticmethod
    def concat(parts: Sequence[Cells | None]) -> Cells:
        """The parts (None or empty ones skipped) as one set."""
        parts = [p for p in parts if p is not None and len(p)]
        fields = zip(*(p.__dict__.values() for p in parts), strict=True)
        return Cells(*(None if t[0] is None else torch.cat(t) for t in fields))

    def branch_maps(self) -> list[torch.Tensor]:
        """The branch maps the Inspector's combiner takes, in its order (nns, gaussian)."""
        return [self.distance] + ([self.gaussian] if self.gaussian is not None else [])


def grid_cover(masks: Sequence[np.ndarray | None], size: int, hw: tuple[int, int]) -> torch.Tensor:
    """Fraction ``[N, h, w]`` of each grid cell that ``masks`` (each ``[size, size]``, or None:
    nothing) covers."""
    empty = np.zeros((size, size), bool)
    m = torch.from_numpy(np.stack([np.ascontiguousarray(k) if k is not None else empty for k in masks]))
    return F.adaptive_avg_pool2d(m.float().unsqueeze(1), hw).squeeze(1)


@torch.inference_mode()
def describe(inspector: Inspector, images: Sequence[np.ndarray], masks: Sequence[np.ndarray | None] | None = None,
             owners: Sequence[int] | None = None) -> Cells | None:
    """``images`` (RGB ``uint8`` at the model input size) through ``inspector``'s feature path and
    branches, with their ``masks`` (None: a good image; a None entry: a defect without a mask).
    None for no images."""
    if not len(images):
        return None
    out: dict[str, list[torch.Tensor]] = {"features": [], "nearest": [], "distance": [], "gaussian": []}
    nns, gauss = inspector.branches.nns, inspector.branches.gaussian
    for start in range(0, len(images), inspector.config.batch_size):
        inputs = inspector.branch_inputs(inspector.preprocess(images[start : start + inspector.config.batch_size])
                                         .to(inspector.device))
        distance, nearest = nns.search(inputs["nns"])
        out["features"].append(inputs["nns"].cpu())
        out["nearest"].append(nearest.cpu())
        out["distance"].append(distance.cpu())
        if gauss is not None:
            out["gaussian"].append(gauss(inputs["gaussian"]).cpu())
    n, size = len(images), inspector.config.image_size
    t = {k: torch.cat(v) if v else None for k, v in out.items()}
    hw = tuple(t["features"].shape[-2:])
    masks = list(masks) if masks is not None else [np.zeros((size, size), bool)] * n
    cover = grid_cover(masks, size, hw)
    border = (cover >= BORDER[0]) & (cover < BORDER[1])
    maskless = torch.tensor([m is None for m in masks], dtype=torch.float32)
    return Cells(t["features"], t["nearest"], t["distance"], t["gaussian"], (cover >= BORDER[1]).float(),
                 (~border).float() * (1 - maskless)[:, None, None], maskless,
                 torch.as_tensor(list(owners) if owners is not None else [-1] * n, dtype=torch.long))


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
    held: list[Cells]

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


def describe_pool(inspector: Inspector, goods: Sequence[np.ndarray], shot_images: Sequence[np.ndarray],
                  shot_masks: Sequence[np.ndarray | None], config: FitConfig, validate: bool) -> Pool:
    """``goods`` split and described (the nuisance copies only when ``validate``): half B
    validates; of the other half, every fourth good is part C, the rest part A."""
    half, half_b = list(goods[0::2]), list(goods[1::2])
    in_c = set(range(3, len(half), 4)) or {len(half) - 1}
    part_a = [g for i, g in enumerate(half) if i not in in_c]
    part_c = [g for i, g in enumerate(half) if i in in_c]
    made_a = validation_images(part_a, config, nuisance=False)  # part A trains: no nuisance copies
    made_b = validation_images(half_b, config, nuisance=validate)
    rng = np.random.default_rng(config.seed + 2)
    n_pasted = min(config.head.pasted, config.head.pasted_per_good * len(part_a))
    pasted, pasted_masks, pasted_from = paste_defects(part_a, shot_images, shot_masks, n_pasted, rng,
                                                         config.head.pasted_copies)
    return Pool(train=Cells.concat([describe(inspector, part_a),
                                    describe(inspector, made_a.defects, list(made_a.defect_masks))]),
                level=describe(inspector, part_c), train_families=[None] * len(part_a) + list(made_a.defect_families),
                pasted=describe(inspector, pasted, pasted_masks),
                pasted_from=torch.as_tensor(pasted_from, dtype=torch.long), made=made_b,
                held=[describe(inspector, made_b.goods), describe(inspector, made_b.defects, list(made_b.defect_masks)),
                      describe(inspector, made_b.nuisance)])
