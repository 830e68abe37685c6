"""Stored teacher logits: all of them for a small output space (classification), the inputs of the LM head for a
large one (a causal LM's vocabulary), from which every batch's exact logits are recomputed."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from objectives._config import ConfigError
from objectives.training._device import enable_tf32, to_device

log = logging.getLogger(__name__)

HEAD_CHECK_TOLERANCE = 1e-3
"""The largest difference, relative to the largest logit, allowed between a teacher's logits and its LM head
applied to its last hidden state (fp32 both; about 1e-6 for a plain linear head); a head that is not one (logit
soft-capping, a logit scale) differs by far more, and its logits are then not cached."""


@dataclass(frozen=True)
class HeadInputs:
    """A teacher's logits over a large output space, kept as what its LM head reads: z = h W^T + b, with h the
    final hidden state (after the final norm) of each token, stored in fp16 (d numbers per token instead of V), and
    the head (W, b) stored once, fp32.

    :meth:`logits` recomputes a batch's (B, L, V) logits with one matmul, so every KD loss sees the teacher's whole
    distribution softmax(z / T) at any temperature. The only error is the fp16 rounding of h (relative 2^-11 per
    entry); SmolLM2-135M's logits come back within 0.03 (``bench/topk_cache.py``).
    """

    states: torch.Tensor
    """(N, L, d) the teacher's final hidden states, fp16 (memory-mapped when read from a file)."""
    weight: torch.Tensor
    """(V, d) the LM head's weight, fp32."""
    bias: torch.Tensor | None = None
    """(V,) the LM head's bias, fp32, or None (most LMs have none)."""

    def __len__(self) -> int:
        return self.states.shape[0]

    def head_to(self, device: torch.device | str) -> HeadInputs:
        """The same cache with its head (W, b) on ``device``; the states stay where they are (a memory-mapped file
        may be larger than the device's memory): :meth:`logits` moves a batch's rows only."""
        bias = None if self.bias is None else self.bias.to(device)
        return HeadInputs(self.states, self.weight.to(device), bias)

    @torch.no_grad()
    def logits(self, rows: torch.Tensor, length: int | None = None) -> torch.Tensor:
        """(B, L, V) the exact fp32 logits of the examples ``rows`` (a CPU index), on the head's device: only those
        rows of the states are read and moved there; with ``length``, their first ``length`` positions only (a
        batch padded to less than the stored width: right-padded examples)."""
        states = self.states[rows] if length is None else self.states[rows, :length]
        states = to_device(states, self.weight.device).float()
        return F.linear(states, self.weight, self.bias)

    def state(self) -> dict[str, torch.Tensor]:
        """Plain tensors, loadable with ``torch.load(weights_only=True)``: 2 d bytes per token plus the head."""
        out = {"states": self.states.half(), "weight": self.weight.float()}
        return out if self.bias is None else {**out, "bias": self.bias.float()}


def lm_head(model: torch.nn.Module) -> torch.nn.Linear | None:
    """``model``'s output layer when its logits are best stored as its inputs: a linear head with more outputs
    than inputs (an LM vocabulary); None for a small head (a classifier's, kept as full logits)."""
    get = getattr(model, "get_output_embeddings", None)
    head = get() if get is not None else None
    return head if isinstance(head, torch.nn.Linear) and head.out_features > head.in_features else None


def check_head(logits: torch.Tensor, states: torch.Tensor, head: torch.nn.Linear) -> None:
    """Raise unless ``head(states)`` reproduces ``logits`` within :data:`HEAD_CHECK_TOLERANCE` (relative to the
    largest logit): a teacher whose logits are not a plain linear map of its last hidden state cannot be cached."""
    error = (F.linear(states.float(), head.weight.float(), head.bias) - logits.float()).abs().max()
    if error > HEAD_CHECK_TOLERANCE * logits.float().abs().max().clamp(min=1.0):
        raise ConfigError(
            "distill.cache_teacher_logits",
            f"the teacher's logits are not its LM head applied to its last hidden state (max difference "
            f"{error:.3g}), so they cannot be cached exactly; set it to false to run the teacher live",
        )


def load_logits(state: torch.Tensor | dict[str, Any]) -> torch.Tensor | HeadInputs:
    """The inverse of storing teacher logits: a tensor as it is, a :meth:`HeadInputs.state` as a :class:`HeadInputs`."""
    return state if isinstance(state, torch.Tensor) else HeadInputs(**state)


def read_logits(path: str | Path) -> torch.Tensor | HeadInputs:
    """Stored logits (``torch.save`` of a tensor or ``HeadInputs.state()``) memory-mapped from ``path``: rows are
    read from disk when indexed, so a cache larger than memory works; never unpickles code."""
    return load_logits(torch.load(path, mmap=True, weights_only=True))


def cached_rows(
    cache: torch.Tensor | HeadInputs, rows: torch.Tensor, device: torch.device, length: int | None = None
) -> torch.Tensor:
    """The teacher's logits of the examples ``rows`` (a CPU index) from a cache, on ``device``: only those rows are
    read (from memory or a memory-mapped file) and moved, never the whole cache; a :class:`HeadInputs` (its head
    already on ``device``, :meth:`HeadInputs.head_to`) recomputes them exactly, at their first ``length``
    positions where given (a training batch of right-padded examples, padded less than the stored width)."""
    if isinstance(cache, HeadInputs):
        return cache.logits(rows, length)
    return to_device(cache[rows], device)


@torch.inference_mode()
def teacher_logits(
    teacher: torch.nn.Module, data: Any, batch_size: int, timings: dict[str, float] | None = None
) -> torch.Tensor | HeadInputs:
    """The frozen ``teacher``'s logits for every example of ``data`` (row i for example i), on the CPU: a text's (V,)
    logits in fp32 when the output space is small (a classifier), or for a causal LM (a linear head with more
    outputs than inputs, :func:`lm_head`) each token's final hidden state in fp16 plus the head
    (:class:`HeadInputs`; the head's input as it reads it), from which training recomputes the exact (L, V) logits:
    the full (N, L, V) array never exists, and no batch's (B, L, V) logits are computed or copied to the host.

    The work stays on the teacher's device: the LM head runs on the first batch only, whose logits are checked
    against the head applied to the states (:func:`check_head`); on later batches a pre-hook captures the head's
    input and hands the head an empty slice of it, so no (B, L, V) product is computed. Only the (B, L, d) fp16
    states (a classifier's (B, V) logits) are copied to the host, per batch.

    The time is split (and logged): ``device`` (the forward passes, synchronised on CUDA), ``host_copy`` (the copies
    to the host), and ``bytes`` copied; ``timings``, when given, receives them (and ``batches``)."""
    device = next(teacher.parameters()).device
    enable_tf32(device)
    teacher.eval()
    head = lm_head(teacher)
    inputs: list[torch.Tensor] = []  # what the head read, captured as it reads it (no other hidden state is kept)
    parts: list[torch.Tensor] = []
    rows: list[torch.Tensor] = []

    def capture(_: torch.nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        inputs.append(args[0])
        return None if not parts else (args[0][..., :0, :], *args[1:])  # the first batch's logits are checked

    hook = head.register_forward_pre_hook(capture) if head is not None else None
    spent = {"device": 0.0, "host_copy": 0.0, "bytes": 0.0, "batches": 0.0}
    try:
        for batch in data.eval_batches(batch_size):
            start = time.perf_counter()
            ids = batch["input_ids"].to(device, non_blocking=True)
            mask = batch["attention_mask"].to(device, non_blocking=True)
            logits = teacher(input_ids=ids, attention_mask=mask).logits
            if head is None:
                kept = logits.float()
            else:
                states = inputs.pop()
                if not parts:
                    check_head(logits, states, head)
                kept = states.half()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            copied = time.perf_counter()
            parts.append(kept.cpu())
            rows.append(batch["index"])
            spent["device"] += copied - start
            spent["host_copy"] += time.perf_counter() - copied
            spent["bytes"] += kept.numel() * kept.element_size()
            spent["batches"] += 1
    finally:
        if hook is not None:
            hook.remove()
    log.info(
        "teacher cache on %s: %d batches, %.2f s on the device, %.2f s copying %.1f MB to the host",
        device,
        spent["batches"],
        spent["device"],
        spent["host_copy"],
        spent["bytes"] / 2**20,
    )
    if timings is not None:
        timings.update(spent)
    stored = torch.cat(parts)[torch.cat(rows).argsort()]
    if head is None:
        return stored
    bias = None if head.bias is None else head.bias.detach().float().cpu().clone()
    return HeadInputs(stored, head.weight.detach().float().cpu().clone(), bias)
