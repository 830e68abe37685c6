"""Losses: small pure functions over logits, and a name -> loss registry."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from objectives._logits import TopKLogits


def cross_entropy_loss(
    student_logits: torch.Tensor,
    labels: torch.Tensor,
    teacher_logits: Any = None,
    *,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Fine-tuning loss: CE(z_s, y) = -mean_n log softmax(z_s)_n[y_n]; with class weights w,
    CE = -sum_n w[y_n] log softmax(z_s)_n[y_n] / sum_n w[y_n]. ``teacher_logits`` is ignored."""
    return F.cross_entropy(student_logits.float(), labels, weight=weight)


def balanced_weights(labels: Sequence[int], num_labels: int) -> torch.Tensor:
    """Inverse-frequency class weights of ``train.class_weights: balanced``: w_c = N / (C * n_c) for a class with
    n_c of the N rows (1 for every class when all are equally frequent); 0 for a class with no rows."""
    counts = torch.bincount(torch.tensor(list(labels), dtype=torch.long), minlength=num_labels).float()
    return torch.where(counts > 0, len(labels) / (num_labels * counts.clamp(min=1)), torch.zeros_like(counts))


def kd_loss(
    student_logits: torch.Tensor,
    labels: torch.Tensor,
    teacher_logits: torch.Tensor | TopKLogits,
    *,
    temperature: float,
    alpha: float,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Hinton et al. (2015) distillation loss.

    loss = alpha * T^2 * KL(softmax(z_t / T) || softmax(z_s / T)) + (1 - alpha) * CE(z_s, y)

    KL is averaged over the batch (``batchmean``). T^2 keeps the soft-target gradients on the same scale as the
    hard-label term when T changes. alpha = 0 is plain cross-entropy, alpha = 1 pure distillation; class ``weight``
    weighs the CE term as in :func:`cross_entropy_loss` (the KL term is unweighted). With
    :class:`TopKLogits` (a large vocabulary), the KL is taken over the k + 1 buckets (the teacher's top k, the rest)
    that both distributions are folded into.
    """
    t = temperature
    log_p_student = F.log_softmax(student_logits.float() / t, dim=-1)
    if isinstance(teacher_logits, TopKLogits):
        log_p_student = teacher_logits.collapse(log_p_student)
        log_q_teacher = teacher_logits.log_probs(t)
    else:
        log_q_teacher = F.log_softmax(teacher_logits.float() / t, dim=-1)
    kd = F.kl_div(log_p_student, log_q_teacher, reduction="batchmean", log_target=True)
    ce = F.cross_entropy(student_logits.float(), labels, weight=weight)
    return alpha * t * t * kd + (1 - alpha) * ce


LOSSES: dict[str, Callable[..., torch.Tensor]] = {"ce": cross_entropy_loss, "kd": kd_loss}
"""Losses by name: ``ce`` for fine-tuning, ``kd`` for integrated distillation."""


def get_loss(name: str, **options: Any) -> Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]:
    """The loss ``name`` with its options bound, e.g. ``get_loss("kd", temperature=2, alpha=0.5)``."""
    if name not in LOSSES:
        raise KeyError(f"unknown loss {name!r}; valid: {sorted(LOSSES)}")
    fn = LOSSES[name]

    def loss(student_logits: torch.Tensor, labels: torch.Tensor, teacher_logits: Any = None) -> torch.Tensor:
        return fn(student_logits, labels, teacher_logits, **options)

    return loss
