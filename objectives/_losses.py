"""Losses: small pure functions over logits and hidden states, a name -> loss registry, and the layer-distillation
loss that adds intermediate-layer terms to a logit loss."""

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


def _token_mask(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T, 1) float mask of real tokens and their count (at least 1)."""
    weights = mask.unsqueeze(-1).float()
    return weights, weights.sum().clamp(min=1.0)


def hidden_state_loss(
    student_states: Sequence[torch.Tensor],
    teacher_states: Sequence[torch.Tensor],
    mask: torch.Tensor,
    project: torch.nn.Module | None = None,
) -> torch.Tensor:
    """Hidden-state distillation (TinyBERT, Jiao et al. 2020) over M matched layers:

    L_hid = 1/M sum_m sum_{n,t} mask_nt ||W h_s^m_nt - h_t^m_nt||^2 / (d_t * sum_{n,t} mask_nt)

    ``student_states[m]`` (B, T, d_s) is matched with ``teacher_states[m]`` (B, T, d_t); W is ``project`` (a
    learned d_s -> d_t linear map when the widths differ), the identity when None. ``mask`` (B, T) is 1 on real
    tokens: padding adds nothing. Zero when the student's states equal the teacher's."""
    weights, tokens = _token_mask(mask)
    total = torch.zeros((), device=mask.device)
    for student, teacher in zip(student_states, teacher_states, strict=True):
        student = student.float() if project is None else project(student.float())
        squared = (student - teacher.float()).pow(2) * weights
        total = total + squared.sum() / (tokens * teacher.shape[-1])
    return total / len(student_states)


def attention_loss(
    student_attentions: Sequence[torch.Tensor], teacher_attentions: Sequence[torch.Tensor], mask: torch.Tensor
) -> torch.Tensor:
    """Attention-distribution distillation (MiniLM, Wang et al. 2020) over M matched layers:

    L_att = 1/M sum_m sum_{n,t} mask_nt KL(A_t^m[n, :, t] || A_s^m[n, :, t]) / (H * sum_{n,t} mask_nt)

    with A^m (B, H, T, T) a layer's attention probabilities (each query t a distribution over the keys) and the KL
    summed over keys, averaged over the H heads; where the head counts differ (a head-pruned student) each model's
    heads are first averaged into one distribution per query (H = 1). Padded queries add nothing; padded keys have
    probability 0 in both. Zero for equal attentions."""
    weights, tokens = _token_mask(mask)
    total = torch.zeros((), device=mask.device)
    for student, teacher in zip(student_attentions, teacher_attentions, strict=True):
        student, teacher = student.float(), teacher.float()
        if student.shape[1] != teacher.shape[1]:
            student, teacher = student.mean(1, keepdim=True), teacher.mean(1, keepdim=True)
        kl = torch.special.xlogy(teacher, teacher) - torch.special.xlogy(teacher, student.clamp(min=1e-12))
        per_query = kl.sum(-1).mean(1)  # (B, T): summed over keys, averaged over heads
        total = total + (per_query.unsqueeze(-1) * weights).sum() / tokens
    return total / len(student_attentions)


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


class LayerDistillLoss(torch.nn.Module):
    """A logit loss plus intermediate-layer terms (TinyBERT / MiniLM style):

    loss = logit_loss(z_s, y, z_t) + beta * L_hid + gamma * L_att

    (:func:`hidden_state_loss`, :func:`attention_loss`). Student layer i is matched with teacher layer
    ``keep[i]`` (the teacher layer it was cut from), and the embeddings output with the embeddings output (hidden
    states only). ``project`` is the learned d_s -> d_t map of a narrower student (None at equal widths): a
    parameter of this loss, trained with the student (the training loop adds :meth:`parameters` to the optimiser)
    and never part of the student's saved weights.

    The training loop calls it as ``loss(student_outputs, labels, teacher_outputs, attention_mask)`` with both
    models' full outputs, asking them for :attr:`model_outputs` (hidden states, attentions); the teacher must run
    live, its cached logits carry no hidden states.
    """

    def __init__(
        self,
        logit_loss: Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor],
        keep: Sequence[int],
        *,
        hidden_weight: float,
        attention_weight: float,
        student_width: int,
        teacher_width: int,
    ) -> None:
        super().__init__()
        self.logit_loss = logit_loss
        self.keep = list(keep)
        self.hidden_weight = hidden_weight
        self.attention_weight = attention_weight
        narrower = hidden_weight > 0 and student_width != teacher_width
        self.project = torch.nn.Linear(student_width, teacher_width) if narrower else None

    @property
    def model_outputs(self) -> dict[str, bool]:
        """The extra outputs the training loop asks both models for."""
        return {"output_hidden_states": self.hidden_weight > 0, "output_attentions": self.attention_weight > 0}

    def forward(self, student: Any, labels: torch.Tensor, teacher: Any, attention_mask: torch.Tensor) -> torch.Tensor:
        loss = self.logit_loss(student.logits, labels, teacher.logits)
        if self.hidden_weight > 0:
            layers = [0, *(i + 1 for i in self.keep)]  # hidden_states[0] is the embeddings output
            teacher_states = [teacher.hidden_states[i] for i in layers]
            loss = loss + self.hidden_weight * hidden_state_loss(
                student.hidden_states, teacher_states, attention_mask, self.project
            )
        if self.attention_weight > 0:
            teacher_attentions = [teacher.attentions[i] for i in self.keep]
            loss = loss + self.attention_weight * attention_loss(student.attentions, teacher_attentions, attention_mask)
        return loss
