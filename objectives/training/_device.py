"""Host-to-GPU details of training: batches copied through pinned memory, fp32 matmuls on TF32 tensor cores."""

from __future__ import annotations

import torch


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``tensor`` on ``device``. A host tensor bound for a GPU is pinned (page-locked) first, so its copy runs
    asynchronously (``non_blocking``) behind the work already queued: from pageable memory CUDA copies
    synchronously whatever ``non_blocking`` says. The pinned copy comes from PyTorch's caching host allocator,
    which keeps it until the transfer is done."""
    if device.type == "cuda" and tensor.device.type == "cpu":
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)


def enable_tf32(device: torch.device) -> None:
    """On a GPU, let fp32 matrix products (fp32 evaluation and latency, the fp32 teacher targets, an fp32 run)
    use TF32 tensor cores (Ampere on; inputs rounded to a 10-bit mantissa, fp32 accumulation; several times the
    IEEE fp32 rate), process-wide; nothing changes on a CPU, or on older GPUs, which have none.

    A product then differs from IEEE fp32 by about 1e-3 relative: far below what the scores compared here resolve
    and the bf16 autocast training itself rounds to (2^-8), and the cached and the live teacher targets, computed
    alike, still agree. torch 2.13's API (``torch.backends.cuda.matmul.fp32_precision``), the one inductor reads;
    after it the legacy getters (``torch.backends.cuda.matmul.allow_tf32``, ``torch.get_float32_matmul_precision``)
    raise, so nothing here uses them."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.fp32_precision = "tf32"
