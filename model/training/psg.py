"""PSG (pseudo-sample generation): fine-tune the feature path on a 3-way task.

Every good image gives three views: itself, a CutPaste and a CutPaste-Scar copy
(``model.training.cutpaste``). A small head on the globally pooled features learns to tell them
apart; the gradient reaches the backbone (``psg.enabled``) and the LGFFP fusion blocks
(``fusion.enabled``). The head is thrown away afterwards: only the features are kept.

Two optional terms (docs/lab/issue-04-psg-lgffp.md, "Second round"): ``psg.anchor`` keeps the good views'
trained-layer features near their start, and ``fusion.dense_loss`` has a 1x1 head on the
fused map predict which cells the CutPaste views changed.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from model.method.backbone import frozen
from model.method.config import FitConfig
from model.method.features import FeaturePath
from model.method.fusion import TokenFusion
from model.reporting.progress import ProgressFactory, silent_progress
from model.runtime.imageio import preprocess
from model.training.cutpaste import NORMAL, pseudo_views

log = logging.getLogger(__name__)


@dataclass
class PSGReport:
    steps: int = 0
    epochs: list[dict[str, float]] = field(default_factory=list)  # per epoch: loss, accuracy

    def to_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "epochs": self.epochs}


class PSGHead(nn.Module):
    """Pooled features ``[B, C]`` -> 3 logits (normal / CutPaste / Scar)."""

    def __init__(self, in_dim: int, hidden: int = 128) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x)


def needs_training(config: FitConfig) -> bool:
    """True when some block of ``config`` is trained on the PSG task."""
    return config.psg.enabled is True or (config.fusion.enabled and config.fusion.source == "train")


def _forward(
    features: FeaturePath, x: torch.Tensor, train_backbone: bool
) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor | None]:
    """Images ``[B, 3, S, S]`` -> (global-average-pooled backbone and fusion features ``[B, C]``,
    the backbone's layer outputs, the fused map ``[B, D, h, w]`` or None without fusion)."""
    with torch.set_grad_enabled(train_backbone):
        feats = features.backbone(x)
    pooled = [f.mean((2, 3)) for f in feats]
    fused = features.fusion(feats) if isinstance(features.fusion, TokenFusion) else None
    if fused is not None:
        pooled.append(fused.mean((2, 3)))
    return torch.cat(pooled, dim=1), feats, fused


def dense_loss(logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of per-cell logits ``[B, 1, h, w]`` against the fraction of each
    cell that the views changed (``masks [B, S, S]``, area-averaged to the grid)."""
    target = F.adaptive_avg_pool2d(masks[:, None].float(), logits.shape[-2:])
    return F.binary_cross_entropy_with_logits(logits, target)


def anchor_loss(feats: list[torch.Tensor], reference: list[torch.Tensor]) -> torch.Tensor:
    """Mean over layers of ``||f - f_ref||^2 / ||f_ref||^2`` (``[B, C, h, w]`` each)."""
    terms = [(f - r).pow(2).mean() / r.pow(2).mean().clamp_min(1e-12) for f, r in zip(feats, reference, strict=True)]
    return torch.stack(terms).mean()


def _optimizer(features: FeaturePath, heads: list[nn.Module], config: FitConfig) -> torch.optim.Optimizer:
    p, f = config.psg, config.fusion
    groups = [{"params": [q for h in heads for q in h.parameters()], "lr": max(p.lr, f.lr)}]
    if p.enabled:
        groups.append({"params": trainable_backbone_parameters(features.backbone, p.freeze_through), "lr": p.lr})
    if isinstance(features.fusion, TokenFusion):
        groups.append({"params": features.fusion.parameters(), "lr": f.lr if f.source == "train" else p.lr})
    return torch.optim.SGD(groups, lr=p.lr, momentum=p.momentum, weight_decay=p.weight_decay)


def trainable_backbone_parameters(backbone: nn.Module, freeze_through: int) -> list[nn.Parameter]:
    """The backbone parameters after the module that outputs layer ``freeze_through`` (all when 0)."""
    named = list(backbone.named_parameters())
    if freeze_through <= 0:
        return [p for _, p in named]
    prefix = backbone.feature_info.module_name()[freeze_through - 1] + "."
    last = max(i for i, (name, _) in enumerate(named) if name.startswith(prefix))
    return [p for _, p in named[last + 1 :]]


def _set_train_mode(features: FeaturePath, config: FitConfig) -> None:
    """Training mode for the parts being trained; BatchNorm frozen when configured."""
    features.train()
    for p in features.backbone.parameters():
        p.requires_grad_(False)
    if config.psg.enabled:
        for p in trainable_backbone_parameters(features.backbone, config.psg.freeze_through):
            p.requires_grad_(True)
    for p in features.fusion.parameters():
        p.requires_grad_(True)
    if not config.psg.enabled:
        features.backbone.eval()
    elif config.psg.freeze_batchnorm:
        for m in features.backbone.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()


def _batch(
    images: Sequence[np.ndarray], rng: np.random.Generator, mean, std
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Three views of each image -> (normalised ``[3B, 3, S, S]``, labels ``[3B]``, masks ``[3B, S, S]``)."""
    views = [v for im in images for v in pseudo_views(im, rng)]
    x = preprocess([v for v, _, _ in views], images[0].shape[0], mean, std)
    masks = torch.from_numpy(np.stack([m for _, _, m in views]))
    return x, torch.tensor([label for _, label, _ in views]), masks


def fine_tune(
    features: FeaturePath,
    images: Sequence[np.ndarray],
    config: FitConfig,
    mean: Sequence[float],
    std: Sequence[float],
    device: torch.device | str = "cpu",
    progress: ProgressFactory = silent_progress,
) -> PSGReport:
    """Train ``features`` in place on the PSG task over good ``images`` (RGB ``uint8 [S, S, 3]``).

    Seeded by ``config.seed``: the same images and config give the same weights.
    ``psg.enabled`` must be true or false: the fit resolves "auto" (``model.jobs.fit.psg_variants``).
    """
    p = config.psg
    if not isinstance(p.enabled, bool):
        raise ValueError(f"psg.enabled={p.enabled!r} must be resolved to true or false before training")
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    features.to(device)
    with torch.no_grad():
        probe, _, fused = _forward(features.eval(), preprocess(images[:1], images[0].shape[0], mean, std).to(device), False)
    head = PSGHead(probe.shape[1]).to(device)
    dense = nn.Conv2d(fused.shape[1], 1, 1).to(device) if fused is not None and config.fusion.dense_loss > 0 else None
    anchored = copy.deepcopy(features.backbone).eval() if p.enabled and p.anchor > 0 else None
    optimizer = _optimizer(features, [head] + ([dense] if dense is not None else []), config)
    per_epoch = math.ceil(len(images) / p.batch_size)
    total = per_epoch * p.epochs if p.max_steps <= 0 else min(per_epoch * p.epochs, p.max_steps)
    bar = progress("psg", total)
    report = PSGReport()
    _set_train_mode(features, config)
    head.train()
    while report.steps < total:
        losses, correct, seen = [], 0, 0
        order = rng.permutation(len(images))
        for start in range(0, len(images), p.batch_size):
            if report.steps >= total:
                break
            x, y, masks = _batch([images[i] for i in order[start : start + p.batch_size]], rng, mean, std)
            x, y = x.to(device), y.to(device)
            loss, logits = _loss(features, head, dense, anchored, x, y, masks.to(device), config)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            report.steps += 1
            losses.append(loss.item())
            correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.3f}", acc=f"{correct / seen:.2f}")
        report.epochs.append({"loss": round(float(np.mean(losses)), 4), "accuracy": round(correct / seen, 4)})
        log.info("psg epoch %d: loss %.4f, accuracy %.3f", len(report.epochs), *report.epochs[-1].values())
    bar.close()
    frozen(features)
    return report


def _loss(features: FeaturePath, head: PSGHead, dense: nn.Module | None, anchored: nn.Module | None,
          x: torch.Tensor, y: torch.Tensor, masks: torch.Tensor, config: FitConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The PSG loss of one batch ``x [B, 3, S, S]``, labels ``y [B]``, paste masks ``masks``, and
    the head's logits ``[B, 3]``: cross-entropy, plus the optional dense and anchor terms."""
    p = config.psg
    pooled, feats, fused = _forward(features, x, p.enabled)
    logits = head(pooled)
    loss = F.cross_entropy(logits, y)
    if dense is not None:
        loss = loss + config.fusion.dense_loss * dense_loss(dense(fused), masks)
    if anchored is not None:
        good = y == NORMAL
        with torch.no_grad():
            reference = anchored(x[good])[p.freeze_through :]
        loss = loss + p.anchor * anchor_loss([f[good] for f in feats[p.freeze_through :]], reference)
    return loss, logits
