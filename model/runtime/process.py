"""Process-wide switches, made by explicit calls at start-up (never on import or construction).

The server's lifespan and the CLI call these; a library user who needs them calls them too.
"""

from __future__ import annotations

import torch


def set_torch_threads(threads: int | None) -> int:
    """Set torch's intra-op CPU threads when ``threads`` is given; returns the previous count."""
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    return previous


def exact_cuda_math() -> None:
    """Switch TF32 off for CUDA matmuls and convolutions.

    TF32 moves scores by ~3e-3 relative; evaluate (CPU) and serve (CUDA) must agree to 1e-4.
    """
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def configure_device(device: str) -> None:
    """The switches a process serving or evaluating on ``device`` needs (TF32 off on CUDA)."""
    if torch.device(device).type == "cuda":
        exact_cuda_math()


def gpu_memory_bytes() -> float | None:
    """CUDA memory allocated by torch in this process, or None without CUDA."""
    if not torch.cuda.is_available():
        return None
    return float(torch.cuda.memory_allocated())
