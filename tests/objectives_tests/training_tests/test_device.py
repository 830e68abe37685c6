"""GPU data-path switches, shown without a GPU: TF32 for fp32 matmuls only where a GPU trains, batches pinned only
on their way to a GPU."""

from __future__ import annotations

import pytest
import torch

from objectives.training._device import enable_tf32, to_device


def test_tf32_is_turned_on_for_a_gpu_and_nowhere_else() -> None:
    matmul = torch.backends.cuda.matmul
    before, cpu_before = matmul.fp32_precision, torch.backends.mkldnn.matmul.fp32_precision
    try:
        matmul.fp32_precision = "ieee"
        enable_tf32(torch.device("cpu"))
        assert matmul.fp32_precision == "ieee"
        enable_tf32(torch.device("cuda", 0))
        assert matmul.fp32_precision == "tf32"
        assert torch.backends.mkldnn.matmul.fp32_precision == cpu_before  # the CPU's own matmuls are untouched
    finally:
        matmul.fp32_precision = before  # "none" again: the legacy getters work again for later tests


def test_a_batch_for_the_cpu_is_not_pinned() -> None:
    """Pinning needs a GPU (this CPU build refuses it): a batch that stays on the host moves as it is."""
    with pytest.raises(RuntimeError):
        torch.ones(2).pin_memory()
    batch = torch.arange(6).reshape(2, 3)
    assert to_device(batch, torch.device("cpu")) is batch
