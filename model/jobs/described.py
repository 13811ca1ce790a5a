"""Images described once through a fitted variant, per NNS cell (``Cells``): what the defect
head trains and is validated on.

Describing an image costs what inspecting it costs: the feature path, the NNS search (with the
nearest normal vector) and the Gaussian map. The validate stage already runs the fit's
validation images (``selection.ValidationImages``) through every scoring candidate's branches,
so with labelled defects it keeps them (``Recording``), and the head stage takes the chosen
variant's description from there (``Recording.take``) instead of describing them again. Without
one (no choice of scoring to make, or a PSG variant chosen, whose features differ) the head
describes them itself, only those it uses (``Describer``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F

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

    def good_images(self) -> torch.Tensor:
        """``[N]`` bool: the images without any mask, the goods. A defect too small to fill half a
        cell has no defect cell but border cells; a defect without a mask has no pixel weight."""
        return (self.target.flatten(1).amax(1) == 0) & (self.weight.flatten(1).amin(1) == 1)

    def branch_maps(self) -> list[torch.Tensor]:
        """The branch maps the Inspector's combiner takes, in its order (nns, gaussian)."""
        return [self.distance] + ([self.gaussian] if self.gaussian is not None else [])

    def labelled(self, masks: Sequence[np.ndarray | None] | None, owners: Sequence[int] | None = None) -> Cells:
        """These cells with the labels of ``masks`` (each ``[S, S]``; None: good images; a None
        entry: a defect without a mask) and ``owners`` (which labelled defect each image is)."""
        n = len(self)
        if masks is None:
            cover = torch.zeros(self.distance.shape)
            maskless = torch.zeros(n)
        else:
            cover = grid_cover(masks, next((m.shape[0] for m in masks if m is not None), 1),
                               tuple(self.features.shape[-2:]))
            maskless = torch.tensor([m is None for m in masks], dtype=torch.float32)
        border = (cover >= BORDER[0]) & (cover < BORDER[1])
        return replace(self, target=(cover >= BORDER[1]).float(),
                       weight=(~border).float() * (1 - maskless)[:, None, None], image_label=maskless,
                       owner=torch.as_tensor(list(owners) if owners is not None else [-1] * n, dtype=torch.long))


def grid_cover(masks: Sequence[np.ndarray | None], size: int, hw: tuple[int, int]) -> torch.Tensor:
    """Fraction ``[N, h, w]`` of each grid cell that ``masks`` (each ``[size, size]``, or None:
    nothing) covers."""
    empty = np.zeros((size, size), bool)
    m = torch.from_numpy(np.stack([np.ascontiguousarray(k) if k is not None else empty for k in masks]))
    return F.adaptive_avg_pool2d(m.float().unsqueeze(1), hw).squeeze(1)


def _good(features: torch.Tensor, nearest: torch.Tensor, distance: torch.Tensor,
          gaussian: torch.Tensor | None) -> Cells:
    """Cells of good images (no mask, no owner)."""
    n, hw = features.shape[0], distance.shape
    return Cells(features, nearest, distance, gaussian, torch.zeros(hw), torch.ones(hw), torch.zeros(n),
                 torch.full((n,), -1, dtype=torch.long))


@torch.inference_mode()
def describe(inspector: Inspector, images: Sequence[np.ndarray], masks: Sequence[np.ndarray | None] | None = None,
             owners: Sequence[int] | None = None) -> Cells | None:
    """``images`` (RGB ``uint8`` at the model input size) through ``inspector``'s feature path and
    branches, labelled by ``masks`` and ``owners`` (``Cells.labelled``). None for no images."""
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
    t = {k: torch.cat(v) if v else None for k, v in out.items()}
    return _good(**t).labelled(masks, owners)


class Recording:
    """The description of the images the validate stage scores (``selection.score_candidates``),
    under the feature path ``features`` and the memory bank ``bank`` every candidate shares, with
    the Gaussian map of each candidate's Gaussian branch: kept as the candidates are scored."""

    def __init__(self, features: torch.nn.Module, bank: torch.nn.Module) -> None:
        self.features, self.bank = features, bank
        self._parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[int, torch.Tensor]]] = []
        self._gaussians: dict[int, torch.nn.Module] = {}

    @torch.inference_mode()
    def record(self, inspectors: Sequence[Inspector], inputs: dict[str, torch.Tensor]) -> dict[int, torch.Tensor]:
        """Describe one batch of branch ``inputs`` and return the branch maps, by module, as the
        cache ``Inspector.combine`` takes: the search is not run twice."""
        distance, nearest = self.bank.search(inputs["nns"])
        cache = {id(self.bank): distance}
        for inspector in inspectors:
            g = inspector.branches.gaussian
            if g is not None and id(g) not in cache:
                self._gaussians[id(g)] = g
                cache[id(g)] = g(inputs["gaussian"])
        maps = {key: cache[key].cpu() for key in self._gaussians if key in cache}
        self._parts.append((inputs["nns"].cpu(), nearest.cpu(), distance.cpu(), maps))
        return cache

    def take(self, features: torch.nn.Module, bank: torch.nn.Module | None,
             gaussian: torch.nn.Module | None) -> Cells | None:
        """The recorded images' cells (as good images) under these modules, None when nothing was
        recorded under them. The recording is empty after: its memory goes to the cells."""
        parts, self._parts = self._parts, []
        if not parts or features is not self.features or bank is not self.bank or (
                gaussian is not None and self._gaussians.get(id(gaussian)) is not gaussian):
            return None
        feats, nearest, distance, maps = zip(*parts, strict=True)
        del parts
        return _good(torch.cat(feats), torch.cat(nearest), torch.cat(distance),
                     torch.cat([m[id(gaussian)] for m in maps]) if gaussian is not None else None)


class Describer:
    """Cells of ``images`` through ``inspector``: those at ``at`` (one index into ``images`` per
    row of ``recorded``, the cells of good images) taken from ``recorded``, the others described
    when asked for, only those."""

    def __init__(self, inspector: Inspector, images: Sequence[np.ndarray], recorded: Cells | None = None,
                 at: Sequence[int] = ()) -> None:
        self.inspector, self.images, self.recorded = inspector, images, recorded
        self.row = {i: r for r, i in enumerate(at)} if recorded is not None else {}

    def cells(self, index: Sequence[int], masks: Sequence[np.ndarray | None] | None = None,
              owners: Sequence[int] | None = None) -> Cells | None:
        """The cells of ``images[index]``, labelled by ``masks`` and ``owners``; None for none."""
        index = list(index)
        if not index:
            return None
        kept = [i for i in index if i in self.row]
        fresh = [i for i in index if i not in self.row]
        parts = [self.recorded.take([self.row[i] for i in kept]) if kept else None,
                 describe(self.inspector, [self.images[i] for i in fresh])]
        cells = Cells.concat(parts) if kept and fresh else next(p for p in parts if p is not None)
        if kept + fresh != index:  # back to the order asked for (copies: only when mixed out of order)
            order = {i: k for k, i in enumerate(kept + fresh)}
            cells = cells.take([order[i] for i in index])
        return cells.labelled(masks, owners)
