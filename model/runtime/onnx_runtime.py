"""ONNX export of the feature path and an ONNX Runtime stand-in for it.

The feature path (backbone + both branches' feature builders + Gaussian dim selection,
see ``model.method.features.FeaturePath``) is the heavy part of inference. It is exported as
one ONNX graph with a dynamic batch axis; ``OrtFeaturePath`` runs that graph in an
``onnxruntime.InferenceSession`` and has the feature path's call interface::

    image [B, 3, S, S] float32 -> (nns [B, Cn, h, w], gauss [B, Dg, h', w'])  (torch tensors)

The scoring branches and the map combiner stay in torch. The artifact format does not
change: the graph is exported at load time from the artifact's weights (in memory).
"""

from __future__ import annotations

import io
import logging
import time
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)

RUNTIMES = ("torch", "onnxruntime")
INPUT_NAME = "image"
OUTPUT_NAMES = ("nns", "gauss")
DEFAULT_OPSET = 17


def check_runtime(runtime: str) -> str:
    """Return ``runtime`` when it is a known inference runtime, else raise ``ValueError``."""
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}: choose one of {', '.join(RUNTIMES)}")
    return runtime


def export_feature_path(
    features: nn.Module, image_size: int, path: str | Path | BinaryIO, opset: int = DEFAULT_OPSET
) -> None:
    """Export ``features`` (image ``[B, 3, S, S]`` -> ``(nns, gauss)``) as ONNX to ``path``.

    ``path`` is a file path or a binary file object (e.g. ``io.BytesIO``). The batch axis
    is dynamic; ``S = image_size`` is fixed (the feature maps' resize targets are traced
    as constants). The module is exported on CPU in float32 with the classic TorchScript
    exporter (``dynamo=False``), and the result is checked with ``onnx.checker``.
    """
    import onnx

    module = features.eval()
    device = next((p.device for p in module.parameters()), torch.device("cpu"))
    if device.type != "cpu":
        raise ValueError("export the feature path from a CPU module")
    dummy = torch.zeros(2, 3, image_size, image_size)
    started = time.perf_counter()
    buffer = io.BytesIO()
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        # Expected: S is fixed, so the traced resize targets are constants; the classic exporter is deprecated.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        torch.onnx.export(
            module, (dummy,), buffer,
            input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
            dynamic_axes={INPUT_NAME: {0: "batch"}, **{n: {0: "batch"} for n in OUTPUT_NAMES}},
            opset_version=opset, do_constant_folding=True, dynamo=False,
        )
    data = buffer.getvalue()
    onnx.checker.check_model(onnx.load_from_string(data))
    if isinstance(path, (str, Path)):
        Path(path).write_bytes(data)
    else:
        path.write(data)
    log.info("exported feature path (%d px, opset %d) to ONNX: %.1f MB in %.1f s",
             image_size, opset, len(data) / 1e6, time.perf_counter() - started)


def export_to_bytes(features: nn.Module, image_size: int, opset: int = DEFAULT_OPSET) -> bytes:
    """The ONNX model of ``features`` as bytes (see ``export_feature_path``)."""
    buffer = io.BytesIO()
    export_feature_path(features, image_size, buffer, opset)
    return buffer.getvalue()


def choose_providers(device: torch.device, available: list[str] | None = None) -> list[str]:
    """Execution providers for ``device``, best first; CPU is always the last fallback.

    CUDA device: TensorRT then CUDA when this onnxruntime build has them. Otherwise CPU.
    """
    import onnxruntime as ort

    available = list(available if available is not None else ort.get_available_providers())
    wanted = ["TensorrtExecutionProvider", "CUDAExecutionProvider"] if device.type == "cuda" else []
    chosen = [p for p in wanted if p in available] + ["CPUExecutionProvider"]
    if device.type == "cuda" and len(chosen) == 1:
        log.warning("onnxruntime has no CUDA provider (%s): the feature path runs on CPU", available)
    return chosen


def session_options(threads: int | None = None):
    """Session options: full graph optimisation, ``threads`` intra-op threads (default: torch's)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads or torch.get_num_threads()
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # Idle ORT threads spin by default and steal the cores from the torch stages that follow.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts


class OrtFeaturePath:
    """ONNX Runtime feature path: ``image [B, 3, S, S]`` -> ``(nns [B, Cn, h, w], gauss [B, Dg, h', w'])``.

    Inputs may be on any device; outputs are float32 torch tensors on ``device``.
    ``session.run`` is thread-safe, so one instance serves several inference threads.
    """

    def __init__(self, model: bytes | str | Path, device: str | torch.device = "cpu",
                 threads: int | None = None) -> None:
        import onnxruntime as ort

        self.device = torch.device(device)
        source = str(model) if isinstance(model, Path) else model
        self.providers = choose_providers(self.device)
        self.session = ort.InferenceSession(source, sess_options=session_options(threads), providers=self.providers)
        log.info("onnxruntime session on %s (intra-op threads %d)",
                 self.session.get_providers(), threads or torch.get_num_threads())

    @classmethod
    def from_module(cls, features: nn.Module, image_size: int, device: str | torch.device = "cpu",
                    threads: int | None = None, opset: int = DEFAULT_OPSET) -> OrtFeaturePath:
        """Export ``features`` (a CPU module) in memory and open a session on it."""
        return cls(export_to_bytes(features, image_size, opset), device, threads)

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x [B, 3, S, S]`` -> ``(nns, gauss)`` on ``self.device``."""
        image = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        nns, gauss = self.session.run(list(OUTPUT_NAMES), {INPUT_NAME: image})
        return self._to_torch(nns), self._to_torch(gauss)

    def _to_torch(self, array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(array).to(self.device)
