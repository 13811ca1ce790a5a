"""Images described once through a fitted variant, per NNS cell (``Cells``): what the defect
head trains and is validated on.

Describing an image costs what inspecting it costs: the feature path, the NNS search (with the
nearest normal vector) and the Gaussian map. The validate stage already runs the fit's
validation images (``validation_images.ValidationImages``) through every scoring candidate's branches,
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

from model.runtime.inspector import Inspector, SharedMaps

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

    def described(self) -> dict[str, torch.Tensor]:
        """The branch outputs ``Inspector.final_maps`` takes: ``nns`` and (when recorded) ``gaussian``."""
        return {"nns": self.distance, **({"gaussian": self.gaussian} if self.gaussian is not None else {})}

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
    for start in range(0, len(images), inspector.config.batch_size):
        inputs = inspector.branch_inputs(inspector.preprocess(images[start : start + inspector.config.batch_size])
                                         .to(inspector.device))
        described = inspector.describe(inputs, nearest=True)
        out["features"].append(inputs["nns"].cpu())
        out["nearest"].append(described["nearest"].cpu())
        out["distance"].append(described["nns"].cpu())
        if "gaussian" in described:
            out["gaussian"].append(described["gaussian"].cpu())
    t = {k: torch.cat(v) if v else None for k, v in out.items()}
    return _good(**t).labelled(masks, owners)


class Recording:
    """The description of the images the validate stage scores (``validation.score_candidates``),
    under the feature path ``features`` and the memory bank ``bank`` every candidate shares, with
    each candidate's Gaussian map: kept as the candidates are scored."""

    def __init__(self, features: torch.nn.Module, bank: torch.nn.Module) -> None:
        self.features, self.bank = features, bank
        self._parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]] = []
        self._candidates: set[str] = set()

    @torch.inference_mode()
    def record(self, inspectors: dict[str, Inspector], inputs: dict[str, torch.Tensor], shared: SharedMaps) -> None:
        """Describe one batch of branch ``inputs`` through the named candidates (their outputs stay in
        ``shared``, so scoring them runs no search or Gaussian twice)."""
        described = {name: inspector.describe(inputs, shared, nearest=True) for name, inspector in inspectors.items()}
        nns = next(d for d in described.values() if "nns" in d)  # every candidate with NNS shares the bank
        on_host: dict[int, torch.Tensor] = {}  # candidates sharing a Gaussian share its map
        maps = {name: on_host.setdefault(id(d["gaussian"]), d["gaussian"].cpu())
                for name, d in described.items() if "gaussian" in d}
        self._parts.append((inputs["nns"].cpu(), nns["nearest"].cpu(), nns["nns"].cpu(), maps))
        self._candidates.update(inspectors)

    def take(self, scoring: str, features: torch.nn.Module, bank: torch.nn.Module | None) -> Cells | None:
        """The recorded images' cells (as good images) of the candidate ``scoring`` under these
        modules, None when nothing was recorded of them. The recording is empty after: its memory
        goes to the cells."""
        parts, self._parts = self._parts, []
        if not parts or scoring not in self._candidates or features is not self.features or bank is not self.bank:
            return None
        feats, nearest, distance, maps = zip(*parts, strict=True)
        del parts
        return _good(torch.cat(feats), torch.cat(nearest), torch.cat(distance),
                     torch.cat([m[scoring] for m in maps]) if scoring in maps[0] else None)


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
