"""Stored teacher logits: all of them for classification, the top k plus the remaining mass for large vocabularies
(per example, or per token of a language model)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

TAIL_FLOOR = 1e-12
"""The smallest probability :meth:`TopKLogits.collapse` gives the tail bucket (fp32 rounding of log-probabilities
leaves smaller tails undetermined)."""


@dataclass(frozen=True)
class TopKLogits:
    """A teacher's logits over a large output space (an LM vocabulary), kept as the ``k`` largest per example (or
    per token: any leading shape) plus the log-sum-exp of all the others (the remaining mass at T = 1): O(k) instead
    of O(V) per example.

    At temperature T the distilled distribution has k + 1 buckets: the top-k tokens and "everything else". The
    top-k logits are exact; the tail's tempered mass is taken as if its V - k logits were equal, i.e.
    log sum_tail exp(z_j / T) ~ (rest - log(V - k)) / T + log(V - k): exact at T = 1 and for a flat tail.
    """

    values: torch.Tensor
    """(N, k) or (N, L, k) the largest logits of each example / token, fp32; after :meth:`state` they are fp16
    log-probabilities (the same logits shifted by their log-sum-exp, which no softmax sees)."""
    indices: torch.Tensor
    """Their output indices, int64 (int32 after :meth:`state`)."""
    rest: torch.Tensor
    """(N,) or (N, L) log sum_{j not in top-k} exp(z_j): the remaining mass at T = 1, in log space, fp32."""
    vocab: int
    """V, the size of the teacher's output space."""

    def __len__(self) -> int:
        return self.values.shape[0]

    def __getitem__(self, rows: Any) -> TopKLogits:
        return TopKLogits(self.values[rows], self.indices[rows], self.rest[rows], self.vocab)

    def to(self, device: torch.device | str) -> TopKLogits:
        return TopKLogits(self.values.to(device), self.indices.to(device), self.rest.to(device), self.vocab)

    def log_probs(self, temperature: float) -> torch.Tensor:
        """(..., k + 1) the teacher's log-probabilities at ``temperature``: top-k buckets, then the tail bucket."""
        tail = math.log(self.vocab - self.values.shape[-1])
        rest = (self.rest - tail) / temperature + tail
        return torch.cat([self.values.float() / temperature, rest.float()[..., None]], dim=-1).log_softmax(-1)

    def collapse(self, log_probs: torch.Tensor) -> torch.Tensor:
        """(..., k + 1) a normalised (..., V) log-distribution (the student's) folded into the same buckets: the mass at
        this example's top-k indices, then all the rest, log(1 - sum_top p) = log(-expm1(logsumexp(top))).

        Computed from the k gathered values only, without a second pass over the V outputs (which cost a (..., V)
        copy and its backward per step on a 49k vocabulary); the tail mass is exact to fp32 rounding of the
        log-probabilities (about 1e-6 absolute), and kept at least :data:`TAIL_FLOOR` so its log stays finite."""
        top = log_probs.gather(-1, self.indices.long())
        rest = torch.log(torch.clamp(-torch.expm1(top.logsumexp(-1)), min=TAIL_FLOOR))
        return torch.cat([top, rest[..., None]], dim=-1)

    def state(self) -> dict[str, Any]:
        """Plain tensors and ints, loadable with ``torch.load(weights_only=True)``, compact: k * (2 + 4) + 4 bytes
        per example. Values are stored as fp16 log-probabilities z_i - logsumexp(z) (shift-invariant for every
        temperature, and precise where the mass is: near 0), ids as int32, the remaining mass as fp32 in the same
        shifted log space; they are converted back to fp32 / int64 where used."""
        total = torch.logaddexp(self.values.float().logsumexp(-1), self.rest.float())
        return {
            "values": (self.values.float() - total[..., None]).half(),
            "indices": self.indices.int(),
            "rest": self.rest.float() - total,
            "vocab": self.vocab,
        }


def compress_logits(logits: torch.Tensor, top_k: int) -> torch.Tensor | TopKLogits:
    """``logits`` (N, V) unchanged when V <= ``top_k`` (classification: exact), else their :class:`TopKLogits`."""
    if logits.shape[-1] <= top_k:
        return logits
    values, indices = logits.float().topk(top_k, dim=-1)
    rest = logits.float().scatter(-1, indices, -math.inf).logsumexp(-1)
    return TopKLogits(values, indices, rest, logits.shape[-1])


def cat_logits(parts: list[torch.Tensor] | list[TopKLogits]) -> torch.Tensor | TopKLogits:
    """Batches of stored logits, all plain or all top-k, joined along the example axis."""
    if isinstance(parts[0], torch.Tensor):
        return torch.cat(parts)
    fields = ("values", "indices", "rest")
    return TopKLogits(*(torch.cat([getattr(p, f) for p in parts]) for f in fields), parts[0].vocab)


def load_logits(state: torch.Tensor | dict[str, Any]) -> torch.Tensor | TopKLogits:
    """The inverse of storing ``compress_logits(...)`` (a tensor, or ``TopKLogits.state()``)."""
    return state if isinstance(state, torch.Tensor) else TopKLogits(**state)


def read_logits(path: str | Path) -> torch.Tensor | TopKLogits:
    """Stored logits (``torch.save`` of a tensor or ``TopKLogits.state()``) memory-mapped from ``path``: rows are
    read from disk when indexed, so a cache larger than memory works; never unpickles code."""
    return load_logits(torch.load(path, mmap=True, weights_only=True))
