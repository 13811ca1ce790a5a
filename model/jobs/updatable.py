"""What an artifact keeps so that the line can update it (``model.jobs.update``) without the
training folder, and how it is read back.

Two files the server never loads (``store.FIT_ONLY``):

* ``moments.safetensors``: the Gaussian moments of every image the model has learned from
  (``GaussianAccumulator.moments``: count, mean, centred second moments; ``dims``, the feature
  dims it is over), and the extraction's
  whole memory bank (``bank [M, C]``), whichever branches the published scoring uses, so that an
  update can weigh every candidate again;
* ``evidence.safetensors``: what the choices were made on: the held-out goods
  ``goods [N, S, S, 3]`` and the labelled defects ``defects [K, S, S, 3]`` (``uint8`` at the model
  input size), the defects' masks ``defect_masks [K, S, S]`` (``uint8``) and which of them have
  one (``has_mask [K]``). Their types are the manifest's (``training.defects.files``, in order).

On bottle these add about 44 MB to the 60 MB an artifact holds for serving (BENCHMARKS.md).
"""

from __future__ import annotations

import numpy as np
import torch

from model.artifact.manifest import Manifest
from model.jobs.choice import Validation
from model.jobs.variant import Variant
from model.method.gaussian import GaussianAccumulator


def state_tensors(variant: Variant, validation: Validation) -> dict[str, dict[str, torch.Tensor]]:
    """The fit-only files of ``variant``'s artifact, by file stem."""
    size = (0, *validation.goods[0].shape) if validation.goods else (0, 0, 0, 3)
    masks = [m if m is not None else np.zeros(size[1:3], bool) for m in validation.defect_masks]
    evidence = {
        "goods": torch.from_numpy(np.stack(validation.goods) if validation.goods else np.zeros(size, np.uint8)),
        "defects": torch.from_numpy(np.stack(validation.defects) if validation.defects else np.zeros(size, np.uint8)),
        "defect_masks": torch.from_numpy(np.stack(masks).astype(np.uint8) if masks
                                         else np.zeros(size[:3], np.uint8)),
        "has_mask": torch.tensor([m is not None for m in validation.defect_masks], dtype=torch.uint8),
    }
    moments = {}
    if variant.moments is not None:
        moments.update(variant.moments.moments(), dims=variant.features.gauss_dims)
    if variant.extraction_bank is not None:
        moments["bank"] = variant.extraction_bank.bank
    return {"evidence": evidence, **({"moments": moments} if moments else {})}


def read_state(tensors: dict[str, dict[str, torch.Tensor]],
               manifest: Manifest) -> tuple[GaussianAccumulator | None, torch.Tensor | None, Validation]:
    """The moments (None without a Gaussian), the memory bank ``[M, C]`` (None without NNS) and the
    validation evidence of an artifact loaded with ``fit_only``. Raises ``ValueError`` for an
    artifact written before updates existed."""
    if "evidence" not in tensors:
        raise ValueError(f"artifact {manifest.artifact_id} keeps no evidence to update from (written by an "
                         "earlier release): re-fit it once, then update")
    moments = tensors.get("moments", {})
    acc = GaussianAccumulator.from_moments(moments) if "m2_triu" in moments else None
    ev = tensors["evidence"]
    has_mask = ev["has_mask"].bool().tolist()
    defects = manifest.training.defects
    types = [name.split("/", 1)[0] for name in defects.files] if defects is not None else []
    validation = Validation(
        goods=list(ev["goods"].numpy()), defects=list(ev["defects"].numpy()),
        defect_masks=[m.astype(bool) if keep else None for m, keep in zip(ev["defect_masks"].numpy(), has_mask,
                                                                          strict=True)],
        defect_types=types)
    return acc, moments.get("bank"), validation
