"""Fit configuration: every block of the method, its switches and its seeds.

The whole config is written into the artifact manifest, so a fit can be reproduced and
an artifact explains itself. Blocks are switched with ``enabled`` flags; the paper's
ablation ladder is a set of these configs (see ``ABLATIONS``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

AUTO = "auto"
FIXED = "config"  # scoring: the branch switches exactly as configured
LEVELS = ("goods", "none")  # head.levels: where the defect head's boost starts
SCORING_KEYS = frozenset({"nns.enabled", "gaussian.enabled", "gaussian.shift_tolerance"})

# The scorings the self-checking fit chooses from (``scoring="auto"``), as config overrides.
# All of them are built from one feature extraction of the training images.
SCORING_CANDIDATES: dict[str, dict[str, Any]] = {
    "product": {"nns.enabled": True, "gaussian.enabled": True, "gaussian.shift_tolerance": 0},  # the paper's AMC
    "nns": {"nns.enabled": True, "gaussian.enabled": False},
    "gaussian": {"nns.enabled": False, "gaussian.enabled": True, "gaussian.shift_tolerance": 0},
    "product_shift2": {"nns.enabled": True, "gaussian.enabled": True, "gaussian.shift_tolerance": 2},
    "product_shift5": {"nns.enabled": True, "gaussian.enabled": True, "gaussian.shift_tolerance": 5},
}


@dataclass
class BackboneConfig:
    arch: str = "tf_efficientnet_lite2"
    # Indices into timm's feature list: strides 4, 8, 16 ("layers 1-3" in the paper).
    # Stages after the deepest one listed are not computed.
    out_indices: tuple[int, ...] = (1, 2, 3)
    weights: str = "embedded"  # embedded | timm | random | <path to .safetensors/.pth>


@dataclass
class NNSConfig:
    enabled: bool = True
    # 1-based positions in backbone.out_indices, concatenated on the finest one's grid:
    # (2, 3) is the paper's wiring (stride 8).
    layers: tuple[int, ...] = (2, 3)
    pool_size: int = 3  # local neighbourhood average pooling
    coreset_ratio: float = 0.01
    projection_dim: int = 32  # random projection used only for coreset selection
    # Patches beyond this are randomly subsampled before the greedy selection, which
    # keeps coreset time bounded for large training sets (each step is linear in it).
    max_coreset_patches: int = 1_000_000


@dataclass
class GaussianConfig:
    enabled: bool = True
    # As NNSConfig.layers. The paper feeds (1, 2, 3) through CaiT; without CaiT weights,
    # layers 1+2 at stride 4 localise best on our data (docs/lab/issue-03-core.md).
    layers: tuple[int, ...] = (1, 2)
    pool_size: int = 3
    dims: int = 72  # randomly selected feature dims (all 72 of layers 1+2 for EfficientNet-Lite2)
    reg: float = 0.01  # lambda * I added to every covariance
    # Each position's Gaussian also learns from neighbours up to this many grid cells away,
    # so parts that are not fixtured (shifted) stay in distribution.
    shift_tolerance: int = 0
    # The drift a line is expected to have between sessions, taught to every position
    # (model/training/drift.py): exposure (gain 1 +- this), tone (gamma 1 +- this), position
    # (shift by this fraction of the side), measured on drift_images training images. 0: off.
    drift_exposure: float = 0.10
    drift_gamma: float = 0.10
    drift_position: float = 0.01
    drift_images: int = 16


@dataclass
class PSGConfig:
    """PSG: fine-tune the backbone on normal / CutPaste / CutPaste-Scar (3-way).

    The default is a CPU-sized run: 150 steps of 16 images at lr 1e-3, training only what
    comes after layer 2, so the Gaussian branch's layers 1-2 keep their ImageNet weights
    (about 6 min for bottle on 2 cores). The paper's schedule, for a GPU:
    ``psg.max_steps=0 psg.batch_size=32 psg.lr=0.0003 psg.freeze_through=0`` (64 epochs).
    ``batch_size`` counts good images; each gives 3 views. docs/lab/issue-04-psg-lgffp.md compares them.

    ``enabled``: true, false or "auto". PSG helps textured parts (magnetic tile) and costs
    aligned ones a little localisation (bottle), so "auto" decides per category: with
    labelled defects (``fit --defects``) the fit builds the chosen scoring with and without
    PSG and the self-checking fit's rule keeps one (``selection.select_psg``); without, PSG is off.
    """

    enabled: bool | str = AUTO
    epochs: int = 64
    max_steps: int = 150  # stop after this many optimiser steps (0: run all epochs)
    batch_size: int = 16
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 3e-5
    freeze_batchnorm: bool = True  # keep ImageNet BN statistics (one category is a small, narrow set)
    # Backbone outputs up to this one (1-based, as nns.layers) keep their weights: 0 trains
    # every layer; 2 trains only what comes after layer 2 (layer 3 for the default backbone).
    freeze_through: int = 2
    # Weight of a loss that keeps the good views' features of the trained layers near their
    # ImageNet values (mean squared change relative to their mean square; 0: off). The
    # 3-way task then moves the defects' features without moving the normal distribution
    # the memory bank and the Gaussians are fitted on.
    anchor: float = 0.0


@dataclass
class FusionConfig:
    """LGFFP: ``concat(gaussian.layers) + proj(project_layer)`` -> transformer blocks -> Gaussian branch."""

    enabled: bool = False
    source: str = "train"  # train (blocks trained at fit time on the PSG task) | cait (pretrained CaiT)
    project_layer: int = 3  # the deep layer projected and added to the concatenation
    # Token grid: this layer's. 0: the finest of gaussian.layers (the paper's). Attention
    # costs grow with the square of the token count: layer 2's grid is 16x cheaper than layer 1's.
    grid_layer: int = 0
    # tokens: the fused tokens are the Gaussian features, on the token grid (the paper's).
    # residual: the blocks' update of the tokens is upsampled and added to the local
    # features on the finest grid of gaussian.layers (source=train only).
    mode: str = "tokens"
    cait_arch: str = "cait_s24_224"
    cait_weights: str = "timm"  # timm (hub) | path to a .safetensors / .pth state dict | random
    cait_blocks: int = 11  # the paper uses the first 11
    depth: int = 1  # source=train: blocks, heads, MLP ratio, LayerScale init
    heads: int = 4
    mlp_ratio: float = 2.0
    init_values: float = 0.1
    lr: float = 1e-3  # source=train: learning rate of the fusion blocks
    # Weight of a per-cell loss during training: a 1x1 head on the fused map predicts which
    # cells the CutPaste views changed (0: only the pooled 3-way task trains the fusion).
    dense_loss: float = 0.0


@dataclass
class PostprocessConfig:
    sigma: float = 4.0  # Gaussian smoothing of the final map, in pixels of the model input
    # The image score: the mean of this top fraction of the final map's pixels (0: its maximum).
    # "auto": chosen per category by the self-checking fit from ``selection.top_fractions``
    # (the maximum when no choice is made).
    top_fraction: float | str = AUTO

    @property
    def image_top_fraction(self) -> float:
        """``top_fraction`` as a number: "auto" not yet resolved by a fit means the maximum."""
        return 0.0 if self.top_fraction == AUTO else float(self.top_fraction)


@dataclass
class CalibrationConfig:
    holdout_fraction: float = 0.1
    min_holdout: int = 4
    image_false_alarm_rate: float = 0.01  # target fraction of good parts flagged
    pixel_false_alarm_rate: float = 0.001  # target fraction of good pixels in the mask
    # With labelled defects: "far" keeps the thresholds above (F1's recorded beside them), "f1"
    # publishes F1's on the goods plus the defects, which may flag more good parts.
    with_defects: str = "far"


@dataclass
class SelectionConfig:
    """The self-checking fit (``scoring="auto"``): validation sizes and the rules' margins
    (``model/training/rule.py``).

    ``candidates`` are names of ``SCORING_CANDIDATES`` in order of preference: a tie goes to
    the earlier one (and a folder too small to validate gets the first). The paper's product
    with a shift tolerance comes first: validation never sees the line's later sessions, and
    among candidates that find defects equally well and flag nuisance copies equally rarely,
    the one that tolerates a part moved by a few cells is the one that keeps its accuracy
    there (docs/lab/issue-34-selection.md). Then the plain product, then the single branches,
    which drop information. See ``model/jobs/selection.py``.
    """

    # product_shift2 is available but not validated by default: it was never the best on our
    # data and each extra tolerance costs a Gaussian finalize (docs/lab/issue-16-selection.md).
    candidates: tuple[str, ...] = ("product_shift5", "product", "gaussian", "nns")
    max_images: int = 32  # held-out goods that get synthetic defects and nuisance copies
    defects_per_image: int = 1
    # Each of those goods gets one nuisance copy per strength (graded, so that candidates that all
    # flag the strongest copies are still told apart by the weaker ones).
    nuisance_strengths: tuple[float, ...] = (0.25, 0.5, 1.0)
    sensitivity_margin: float = 0.01  # near-best: this close to the most sensitive candidate
    robust_margin: float = 0.1  # nuisance false-alarm rates this close count as equally robust
    saturated_far: float = 0.9  # at a strength where every candidate flags this much, compare a weaker one
    labelled_weight: float = 3.0  # labelled defects count this many times the synthetic ones
    tie_margin: float = 0.002  # sensitivities this close count as equal (image score, PSG, defect head)
    weak_sensitivity: float = 0.8  # below this the fit warns that the chosen scoring validates weakly
    fragile_far: float = 0.5  # above this nuisance false-alarm rate (strength 1) it warns too
    min_holdout: int = 8  # fewer held-out goods: no choice, the default candidate, recorded as a fallback
    # Image scores tried per candidate (postprocess.top_fraction="auto"); 0, the maximum, first.
    top_fractions: tuple[float, ...] = (0.0, 0.002, 0.01, 0.03)


@dataclass
class HeadConfig:
    """The defect head (``model.method.defect_head``): labelled defects in the score itself.

    ``enabled``: "auto" trains it when the fit has labelled defects (``fit --defects``) and the
    chosen scoring has the NNS branch; true requires them; false never. Trained on the held-out
    goods (negatives), synthetic defects on them, the labelled defects' mask cells and
    ``pasted`` goods that each carry ``pasted_copies`` of a labelled defect's masked region
    (rotated, flipped, moved).
    The abnormal bank keeps at most ``bank_size`` cells (a k-center coreset beyond); the inputs
    are projected on ``components`` principal directions and read by ``members`` networks of
    ``hidden`` channels whose probabilities are averaged. The probability above a level boosts
    the map: the head's level on good parts (set on held-out goods that no head trains on), or
    none, the whole probability; ``levels`` are validated with every weight.
    The pasted goods and the steps are capped in proportion to the goods (``pasted_per_good``,
    ``epochs``), so the stage's cost follows the fit's on small categories.
    Its boost ``weight`` and level are chosen from ``weights`` and ``levels`` by the self-checking
    fit's rule on labelled defects it did not train on (``folds``-fold cross-fitting, each fold's
    head ``fold_members`` networks trained ``fold_steps`` steps); 0, no boost, comes first, then
    the weights at the level on good parts, so a tie keeps the unsupervised map or the quieter
    head, and a head whose weight is 0 is not stored. A single weight is used as given, at the
    first of ``levels``, without the cross-fitting.
    """

    enabled: bool | str = AUTO
    hidden: int = 16  # channels of each member network
    members: int = 3  # networks averaged (defect_head.network)
    components: int = 64  # the inputs' projection the network reads (defect_head.principal_basis)
    steps: int = 200  # 400 and 800 gave the same figures on magnetic tile (docs/lab/issue-17-defect-head.md)
    fold_steps: int = 100  # each cross-fitting head only ranks the weights, on half the goods
    # Steps are also capped at this many passes over a head's training images, so a small category
    # trains in proportion to its size: magnetic tile's 200 steps make 27 passes over its 238 images
    epochs: int = 28
    fold_members: int = 1  # networks in each cross-fitting head: one trains 3x faster a step
    batch_size: int = 32
    lr: float = 3e-3
    weight_decay: float = 1e-3
    pasted: int = 100
    pasted_per_good: int = 4  # and at most this many for each good of part A, which they are pasted on
    # Each pasted good carries this many copies of its one labelled defect: as many defect cells
    # to learn from as 200 goods with one copy each, at half the images to describe
    pasted_copies: int = 2
    inside: float = 0.75  # a cell joins the abnormal bank when its mask covers at least this fraction
    bank_size: int = 256  # at most this many abnormal cells (a coreset beyond): the search's cost
    weights: tuple[float, ...] = (0.0, 1.0, 2.0, 4.0)
    # Where the boost starts, validated with every weight above 0: "goods", the level on good parts
    # (the head is silent on all but about 1 % of them); "none", the head's whole probability.
    levels: tuple[str, ...] = LEVELS
    folds: int = 2
    # A weight whose figures on the synthetic defects (standing for the types no shot shows), or
    # their image AUROC unboosted against the boosted goods (a type the head does not recognise),
    # fall more than this below weight 0's is not eligible: the unsupervised map stays their floor.
    floor_margin: float = 0.005
    # The held-out shots count this many times the synthetic defects in the weight table: the
    # weighting the head's protocol was measured with (docs/lab/issue-17-defect-head.md).
    labelled_weight: float = 2.0


@dataclass
class FitConfig:
    image_size: int = 256
    batch_size: int = 16
    seed: int = 0
    # "auto": the fit validates every candidate of ``selection`` and keeps the best (model/jobs/selection.py);
    # a candidate name forces it; "config": the branch switches exactly as set below.
    scoring: str = "auto"
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    nns: NNSConfig = field(default_factory=NNSConfig)
    gaussian: GaussianConfig = field(default_factory=GaussianConfig)
    psg: PSGConfig = field(default_factory=PSGConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    head: HeadConfig = field(default_factory=HeadConfig)

    def __post_init__(self) -> None:
        if not (self.nns.enabled or self.gaussian.enabled):
            raise ValueError("at least one scoring branch (nns, gaussian) must be enabled")
        if self.image_size % 32:
            raise ValueError("image_size must be a multiple of 32")
        if self.fusion.enabled and not self.gaussian.enabled:
            raise ValueError("fusion (LGFFP) feeds the Gaussian branch: enable gaussian too")
        if self.scoring not in (AUTO, FIXED, *SCORING_CANDIDATES):
            raise ValueError(f"scoring must be {AUTO!r}, {FIXED!r} or one of {sorted(SCORING_CANDIDATES)}, "
                             f"got {self.scoring!r}")
        unknown = set(self.selection.candidates) - set(SCORING_CANDIDATES)
        if unknown or not self.selection.candidates:
            raise ValueError(f"selection.candidates must name scoring candidates, not {sorted(unknown)}")
        fractions = (*self.selection.top_fractions, self.postprocess.top_fraction)
        if any(f != AUTO and not (isinstance(f, (int, float)) and 0 <= f <= 0.5) for f in fractions) \
                or not self.selection.top_fractions:
            raise ValueError(f"postprocess.top_fraction must be {AUTO!r} or a number in [0, 0.5], and "
                             f"selection.top_fractions such numbers, got {self.postprocess.top_fraction!r} and "
                             f"{self.selection.top_fractions!r}")
        if self.calibration.with_defects not in ("far", "f1"):
            raise ValueError(f"calibration.with_defects must be 'far' or 'f1', got {self.calibration.with_defects!r}")
        for name in ("psg", "head"):
            if not (isinstance(getattr(self, name).enabled, bool) or getattr(self, name).enabled == AUTO):
                raise ValueError(f"{name}.enabled must be true, false or {AUTO!r}, got {getattr(self, name).enabled!r}")
        if not self.head.weights or min(self.head.weights) < 0 or self.head.folds < 1:
            raise ValueError(f"head.weights must be one or more numbers >= 0 and head.folds >= 1, "
                             f"got {self.head.weights!r} and {self.head.folds!r}")
        if not self.head.levels or set(self.head.levels) - set(LEVELS):
            raise ValueError(f"head.levels must be one or more of {LEVELS}, got {self.head.levels!r}")
        sizes = {k: getattr(self.head, k) for k in ("hidden", "members", "components", "bank_size", "steps", "epochs",
                                                    "batch_size", "fold_steps", "fold_members", "pasted_copies")}
        if any(not isinstance(v, int) or v < 1 for v in sizes.values()):
            raise ValueError(f"head.{', head.'.join(sizes)} must be whole numbers >= 1, got {sizes}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def with_scoring(self, name: str) -> FitConfig:
        """This config with the scoring candidate ``name`` applied (and recorded as ``scoring``)."""
        return self.with_overrides({**SCORING_CANDIDATES[name], "scoring": name})

    def blocks(self) -> dict[str, bool]:
        """The method's switchable blocks and whether each is on (``"auto"`` counts as on)."""
        sections = ((f.name, getattr(self, f.name)) for f in dataclasses.fields(self))
        return {name: bool(s.enabled) for name, s in sections if hasattr(s, "enabled")}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FitConfig:
        sections = {f.name: f.type for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            if key not in sections:
                raise ValueError(f"unknown config key: {key}")
            if isinstance(value, dict):
                sub = _SECTION_TYPES[key]
                value = sub(**{k: tuple(v) if isinstance(v, list) else v for k, v in value.items()})
            kwargs[key] = value
        return cls(**kwargs)

    def with_overrides(self, overrides: dict[str, Any]) -> FitConfig:
        """A copy with dotted-key overrides applied, e.g. ``{"nns.enabled": False}``.

        Setting a scoring switch (``SCORING_KEYS``) without ``scoring`` means that scoring,
        exactly: ``scoring`` becomes ``"config"``.
        """
        data = self.to_dict()
        if SCORING_KEYS & overrides.keys() and "scoring" not in overrides:
            data["scoring"] = FIXED
        for dotted, value in overrides.items():
            *path, leaf = dotted.split(".")
            node = data
            for part in path:
                if part not in node or not isinstance(node[part], dict):
                    raise ValueError(f"unknown config key: {dotted}")
                node = node[part]
            if leaf not in node:
                raise ValueError(f"unknown config key: {dotted}")
            node[leaf] = value
        return FitConfig.from_dict(data)


_SECTION_TYPES = {
    "backbone": BackboneConfig,
    "nns": NNSConfig,
    "gaussian": GaussianConfig,
    "psg": PSGConfig,
    "fusion": FusionConfig,
    "postprocess": PostprocessConfig,
    "calibration": CalibrationConfig,
    "selection": SelectionConfig,
    "head": HeadConfig,
}

# The paper's ablation ladder, as overrides of the default config.
ABLATIONS: dict[str, dict[str, Any]] = {
    "nns": {"scoring": FIXED, "gaussian.enabled": False, "psg.enabled": False},
    "gaussian": {"scoring": FIXED, "nns.enabled": False, "psg.enabled": False},
    "nns_x_gaussian": {"scoring": FIXED, "psg.enabled": False},
    "psg": {"scoring": FIXED, "psg.enabled": True},
    "lgffp": {"scoring": FIXED, "psg.enabled": False, "fusion.enabled": True, "fusion.grid_layer": 2},
    "psg_lgffp": {"scoring": FIXED, "psg.enabled": True, "fusion.enabled": True, "fusion.grid_layer": 2},
    # The default: the scoring chosen per category by the self-checking fit, and PSG chosen
    # from labelled defects when there are some.
    "auto": {},
}
