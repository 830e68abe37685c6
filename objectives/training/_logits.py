"""Stored teacher logits: all of them for a small output space (classification), the inputs of the LM head for a
large one (a causal LM's vocabulary), from which every batch's exact logits are recomputed."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from objectives._config import ConfigError

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
        states = states.to(self.weight.device, non_blocking=True).float()
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
    return cache[rows].to(device, non_blocking=True)
