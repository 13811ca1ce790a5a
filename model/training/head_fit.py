"""Fit the defect head (``model.method.defect_head``) of a fitted variant from the held-out goods
and the labelled defects (``fit --defects``), and choose its boost weight without flattering it.

Training cells: the goods (negatives), synthetic defects on them (the self-checking fit's
families, so types the shots do not show are not forgotten), the shots' mask cells (each
compared with the other shots' abnormal cells only) and goods carrying a pasted shot. A shot
without a mask trains at image level: its highest cell logit should say defect. A good image's
highest cell logit should also say good: the level on good parts is read from exactly that.

The weight and the level where the boost starts (``head.levels``: the level on good parts, or
none; ``candidates``): ``head.folds``-fold cross-fitting over the shots. For each fold a head is
trained on the other shots, on part A of the goods and on half of the synthetic families
(``FAMILY_SPLIT``, alternating between folds): a cheaper head than the published one
(``head.fold_members`` networks, ``head.fold_steps`` steps), since it only ranks the weights
(one network and 100 steps gave the protocol's figures of three and 150: docs/lab/issue-17-defect-head.md). Then
every weight of ``head.weights``, at every level, is validated by the self-checking fit's
figures (``model.training.validation``) on the other half of the goods, the synthetic
defects of the families that head did not train on, nuisance copies, and the fold's shots as
the labelled defects. The figures are averaged over folds, so every family is scored by a head
that never saw it: those stand for the defect types no shot shows. A weight must first keep
that floor: on those synthetic defects, none of image AUROC, pixel AUROC and AU-PRO may fall
more than ``head.floor_margin`` below weight 0's. Nor may the image AUROC of every synthetic
defect, unboosted, against the boosted goods (``blind_image_auroc``): a type the head does not
recognise at all gains nothing, while the boost still lifts the goods wherever the head fires on
them, which is how a head costs unseen types (docs/lab/issue-17-defect-head.md, the eighth round: a head trained on
one type of rotated tiles lost 0.009 image AUROC on the others while every synthetic figure
rose). Then ``model.training.rule.choose_improvement``: weight 0 (the unsupervised map) comes
first, then the weights at the level on good parts, so a tie keeps the head off, or silent on
good parts, and a weight whose boost flags more nuisance copies than weight 0 is not robust. The published head is then trained
on all of them, every family included. Every image is described once (``head_cells.Pool``), for
the folds and the published head alike: the fit's validation images, described already by the
validate stage when it ran (``model.training.described``), and the pasted goods.

Every head, the folds' and the published one, has its level on good parts (``good_level``) set
on a part of the goods that no head trains on or is validated on (``Pool.level``). At that level
only its probability above it boosts the map, so on all but about 1 % of good parts it is silent;
a published head whose chosen level is none is stored with level 0.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import replace
from statistics import NormalDist

import numpy as np
import torch
import torch.nn.functional as F

from model.method.config import FitConfig
from model.method.defect_head import DefectHead, principal_basis
from model.reporting import metrics
from model.runtime.execution import to_host
from model.runtime.inspector import Inspector
from model.training.described import Cells
from model.training.head_cells import Pool, abnormal_bank, completed, describe_pool, input_chunks
from model.training.rule import IMPROVEMENT_RULE, choose_improvement
from model.training.synthetic_defects import FAMILIES
from model.training.validation import PSG_FAMILIES, figures, fraction_scores
from model.training.validation_images import ValidationImages

log = logging.getLogger(__name__)

# A row's figures on the synthetic defects; "blind_image_auroc": their image AUROC were the head blind to them
SYNTHETIC = ("image_auroc", "pixel_auroc", "au_pro", "blind_image_auroc")
FIGURES = (*SYNTHETIC, "sensitivity")  # what the weight table averages over folds (and nuisance_far per strength)
FAMILY_SPLIT = (PSG_FAMILIES, tuple(f for f in FAMILIES if f not in PSG_FAMILIES))  # a fold's head trains on one
FLOOR_RULE = ("on the synthetic defects of the families its fold's head did not train on (types the shots do not "
              "show), no figure more than head.floor_margin below weight 0's, nor the image AUROC of every synthetic "
              "defect, unboosted, against the boosted goods (a type the head does not recognise at all)")


def train(cells: Cells, bank: torch.Tensor, bank_owner: torch.Tensor, config: FitConfig, steps: int,
          goods: Cells) -> tuple[DefectHead, dict]:
    """A head (weight 0) trained for ``steps``, or ``head.epochs`` passes over the images of
    ``cells`` when fewer, against the abnormal ``bank``, with its level on good parts set on
    ``goods`` (``good_level``), and its training record.
    (Training on 16-cell windows instead of whole grids was cheaper and lost 0.035 image AUROC
    on magnetic tile.)"""
    h = config.head
    steps = min(steps, math.ceil(h.epochs * len(cells) / h.batch_size))
    mean, std, basis = _projection(cells, bank, bank_owner, h.components, config.seed)
    torch.manual_seed(config.seed)
    head = DefectHead(bank, mean, std, basis, h.hidden, h.members)
    with torch.no_grad():  # the projection is fixed: the network trains on its output
        x = torch.cat([head.project(part) for part in input_chunks(cells, bank, bank_owner)]).contiguous(
            memory_format=torch.channels_last)
    head.net.to(memory_format=torch.channels_last)  # its grouped convolutions train 2x faster so on CPU
    optimiser = torch.optim.Adam(head.net.parameters(), lr=h.lr, weight_decay=h.weight_decay)
    positive = float((cells.target * cells.weight).sum())
    pos_weight = torch.tensor(float(((1 - cells.target) * cells.weight).sum()) / max(positive, 1.0))
    gen = torch.Generator().manual_seed(config.seed)
    maskless = torch.nonzero(cells.image_label > 0).flatten()
    clean = cells.good_images()
    losses = []
    head.train()
    for _ in range(steps):
        i = torch.randint(len(cells), (h.batch_size,), generator=gen)
        logits = head.net(x[i])  # every member learns the same targets
        target, weight = cells.target[i].unsqueeze(1).expand_as(logits), cells.weight[i].unsqueeze(1).expand_as(logits)
        loss = F.binary_cross_entropy_with_logits(logits, target, weight=weight, pos_weight=pos_weight)
        good = clean[i]
        if good.any():  # a good image's most defect-like cell says good too: the level on good parts reads it
            top = logits[good].flatten(2).amax(2)
            loss = loss + F.binary_cross_entropy_with_logits(top, torch.zeros_like(top))
        if len(maskless):  # image-level labels: the most defective cell of a defect image
            j = maskless[torch.randint(len(maskless), (1,), generator=gen)]
            top = head.net(x[j]).flatten(2).amax(2)
            loss = loss + F.binary_cross_entropy_with_logits(top, torch.ones_like(top))
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    head.net.to(memory_format=torch.contiguous_format)
    head.eval()
    for p in head.parameters():
        p.requires_grad_(False)
    head.offset.fill_(good_level(head, goods, config))
    return head, {"cells": int(x.shape[0] * x.shape[2] * x.shape[3]), "positive_cells": int(positive),
                  "steps": steps, "final_loss": round(float(np.mean(losses[-50:])), 4), "level": float(head.offset)}


def _projection(cells: Cells, bank: torch.Tensor, bank_owner: torch.Tensor, components: int, seed: int,
                sample: int = 50_000) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The inputs' mean and standard deviation per channel, and the head's projection
    (``defect_head.principal_basis``) from up to ``sample`` of the normalised cells, every
    defect cell among them: one pass over ``input_chunks``, never all inputs at once."""
    positive = cells.target > 0
    gen = torch.Generator().manual_seed(seed)
    keep = positive | (torch.rand(positive.shape, generator=gen) < sample / max(positive.numel(), 1))
    sums, rows, start = [], [], 0
    for x in input_chunks(cells, bank, bank_owner):
        # a chunk's sums in float32 (2e-7 of float64's, 4x faster), the totals in float64
        sums.append(torch.stack([x.sum((0, 2, 3)), (x * x).sum((0, 2, 3))]).double())
        rows.append(x.permute(0, 2, 3, 1)[keep[start : start + len(x)]])
        start += len(x)
    total, square = torch.stack(sums).sum(0)
    n = positive.numel()
    mean = total / n
    std = ((square - n * mean * mean) / max(n - 1, 1)).clamp_min(0).sqrt().float() + 1e-6
    mean = mean.float()
    rows = (torch.cat(rows) - mean) / std
    return mean, std, principal_basis(rows, positive[keep], min(components, rows.shape[1]))


@torch.inference_mode()
def weight_table(inspector: Inspector, head: DefectHead, images: ValidationImages, cells: Cells,
                 config: FitConfig, leave_out: Sequence[str] = ()) -> dict[str, dict]:
    """The validation figures of every candidate weight and level (``candidates``) on ``images``
    (described as ``cells``), without the synthetic defects of the families ``leave_out``; and
    for the floor ``blind_image_auroc``, the image AUROC of all its synthetic defects, unboosted,
    against the boosted goods: what a defect type the head does not recognise at all would keep,
    since the boost still lifts the goods wherever the head fires on them."""
    p = head.probability_of(cells.features, cells.nearest, cells.gaussian).to(inspector.device)
    plain = inspector.final_maps({k: m.to(inspector.device) for k, m in cells.described().items()})  # boosted below
    goods, defects = (slice(r.start, r.stop) for r in images.spans()[:2])
    unboosted = fraction_scores(to_host(plain[defects]), config.postprocess.image_top_fraction)
    labels = np.r_[np.zeros(len(images.goods)), np.ones(len(images.defects))]
    table = {}
    for key in candidates(config):
        w, level = candidate(key)
        boost = w * head.excess(p, boost_start(head, level)) if w else None
        maps = to_host(inspector.boosted(plain, boost))
        scores = fraction_scores(maps, config.postprocess.image_top_fraction)
        table[key] = figures(scores, maps, images, config, leave_out, labelled_weight=config.head.labelled_weight)
        table[key]["blind_image_auroc"] = (metrics.auroc(np.r_[scores[goods], unboosted], labels)
                                           if images.defects else None)
    return table


@torch.inference_mode()
def good_level(head: DefectHead, goods: Cells, config: FitConfig) -> float:
    """The head's level on good parts: the ``1 - calibration.image_false_alarm_rate`` quantile of
    its highest probability on each of ``goods``, which it never trained on; the higher of the
    empirical one (the higher value) and that of a normal fit to their logits. On the few goods a
    small category sets it on, the empirical quantile is their maximum, which about one new good
    part in ``len(goods) + 1`` exceeds; the fit extrapolates. Above the level the head's
    probability boosts the map (``DefectHead.excess``)."""
    top = head.probability_of(goods.features, goods.nearest, goods.gaussian).flatten(1).amax(1).double()
    q = 1 - config.calibration.image_false_alarm_rate
    empirical = float(np.quantile(top.numpy(), q, method="higher"))
    if len(top) < 2:
        return empirical
    logit = torch.logit(top, eps=1e-6)
    return max(empirical, float(torch.sigmoid(logit.mean() + NormalDist().inv_cdf(q) * logit.std())))


def candidates(config: FitConfig) -> list[str]:
    """The weight table's keys: weight 0 (no boost) first when configured, then every other
    weight with each of ``head.levels`` in turn (``candidate``), so a tie keeps the earlier."""
    h = config.head
    zero = [str(float(w)) for w in h.weights if w == 0][:1]
    return zero + [str(float(w)) if level == "goods" else f"{float(w)}/{level}"
                   for level in h.levels for w in h.weights if w > 0]


def candidate(key: str) -> tuple[float, str]:
    """A key of ``candidates`` -> its weight and level: "2.0" boosts above the level on good
    parts, "2.0/none" by the head's whole probability."""
    weight, _, level = key.partition("/")
    return float(weight), level or "goods"


def boost_start(head: DefectHead, level: str) -> float:
    """Where a candidate's boost starts (``DefectHead.excess``): the head's level on good parts
    ("goods"), or 0 ("none")."""
    return float(head.offset) if level == "goods" else 0.0


def fold_families(k: int) -> tuple[str, ...]:
    """The synthetic families the ``k``-th fold's head trains on (``FAMILY_SPLIT``, alternating)."""
    return FAMILY_SPLIT[k % len(FAMILY_SPLIT)]


def folds(shot_types: Sequence[str], n: int) -> list[list[int]]:
    """Shots split into ``n`` folds, each type dealt round-robin so a fold sees most types."""
    out: list[list[int]] = [[] for _ in range(n)]
    k = 0
    for t in dict.fromkeys(shot_types):
        for i, st in enumerate(shot_types):
            if st == t:
                out[k % n].append(i)
                k += 1
    return [f for f in out if f]


def fit_head(inspector: Inspector, made: ValidationImages, shot_masks: Sequence[np.ndarray | None],
             shot_types: Sequence[str], config: FitConfig,
             recorded: Cells | None = None) -> tuple[DefectHead | None, dict]:
    """The head to publish, with its weight (None when the weight chosen is 0: nothing to train or
    store), and the manifest's ``fit.head`` record. ``made``: the fit's validation images, the
    labelled defects among them; ``recorded``: the cells of ``made.all`` from the validate
    stage (``model.training.described``), None to describe them here."""
    start = time.perf_counter()
    n_shots = len(made.labelled)
    choosing = len(config.head.weights) > 1
    split = folds(shot_types, config.head.folds) if choosing and config.head.folds > 1 and n_shots > 1 else []
    trains = bool(split) or not choosing  # else the weight is 0 without training a head
    every, cells = completed(inspector, made, recorded, config, nuisance=bool(split), extend=trains)
    shots = cells(every.spans()[3], shot_masks, range(n_shots))
    bank, bank_owner = abnormal_bank(shots, shot_masks, config.head.inside, config.head.bank_size)
    pool = describe_pool(inspector, every, cells, shot_masks, config, bool(split)) if trains else None
    table = _mean_table(cross_fit(inspector, pool, shots, made.labelled, shot_masks, bank, bank_owner, split,
                                  config)) if split else {}
    eligible = keep_floor(table, config)
    key = choose_improvement(eligible, config) if eligible else None
    chosen, level = (candidate(key) if key is not None else
                     (0.0 if choosing else float(config.head.weights[0]), config.head.levels[0]))
    record = {"weight": chosen, "level": level if chosen > 0 else None, "rule": f"{FLOOR_RULE}; then {IMPROVEMENT_RULE}",
              "candidates": table, "kept_floor": list(eligible), "chosen": key,
              "folds": [[int(i) for i in f] for f in split],
              "fold_families": [list(fold_families(k)) for k in range(len(split))],
              "training": None,
              "validation_described_by": "the validate stage" if recorded is not None else "this stage"}
    head = None
    if chosen > 0:
        head, record["training"] = train(pool.everything(shots), bank, bank_owner, config, config.head.steps,
                                         pool.level)
        head.weight.fill_(chosen)
        head.offset.fill_(boost_start(head, level))
    if not choosing:
        record["note"] = f"the one configured weight, {chosen:g}, without validation"
    elif not split:
        record["note"] = "one labelled defect: no held-out shot to choose the weight with, so it is 0 (no head)"
    record.update(abnormal_bank=int(bank.shape[0]), seconds=round(time.perf_counter() - start, 3))
    log.info("defect head: weight %s, level %s chosen (of %s)", chosen, level, list(table) or list(config.head.weights))
    return head, record


def cross_fit(inspector: Inspector, pool: Pool, shots: Cells, shot_images: Sequence[np.ndarray],
              shot_masks: Sequence[np.ndarray | None], bank: torch.Tensor, bank_owner: torch.Tensor,
              split: list[list[int]], config: FitConfig) -> list[dict[str, dict]]:
    """Every fold's weight table: a head trained on the other folds' shots, part A of the goods
    and the synthetic defects of one side of ``FAMILY_SPLIT``, validated on the fold's shots
    and the images made from half B, the synthetic defects of the other side only."""
    tables = []
    fold_config = replace(config, head=replace(config.head, members=config.head.fold_members))
    for k, fold in enumerate(split):
        rest = [i for i in range(len(shots)) if i not in fold]
        families = fold_families(k)
        keep = torch.isin(bank_owner, torch.as_tensor(rest, dtype=torch.long))
        head, _ = train(pool.fold(shots, rest, families), bank[keep], bank_owner[keep], fold_config,
                        config.head.fold_steps, pool.level)
        masks = [shot_masks[i] for i in fold]
        images = replace(pool.made, labelled=[shot_images[i] for i in fold],
                         labelled_masks=np.stack(masks) if all(m is not None for m in masks) else None)
        tables.append(weight_table(inspector, head, images, Cells.concat([*pool.held, shots.take(fold)]), config,
                                   leave_out=families))
    return tables


def keep_floor(table: dict[str, dict], config: FitConfig) -> dict[str, dict]:
    """The weights that keep the unsupervised map as the floor for defect types no shot shows
    (``FLOOR_RULE``): their synthetic defects stand for those types."""
    if not table or candidate(next(iter(table)))[0] != 0:
        return table
    base = next(iter(table.values()))
    margin = config.head.floor_margin
    return {w: row for w, row in table.items()
            if all(row[m] is None or base[m] is None or row[m] >= base[m] - margin for m in SYNTHETIC)}


def _mean_table(tables: list[dict[str, dict]]) -> dict[str, dict]:
    """Per weight: the figures averaged over folds (those a fold could not measure left out),
    with every fold's figures kept."""
    out = {}
    for w in tables[0]:
        rows = [t[w] for t in tables]
        far = {g: _mean([r["nuisance_far"].get(g) for r in rows]) for g in rows[0]["nuisance_far"]}
        out[w] = {k: _mean([r.get(k) for r in rows]) for k in FIGURES} | {"nuisance_far": far, "folds": rows}
    return out


def _mean(values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None
