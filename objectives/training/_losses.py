"""Losses: small pure functions over logits and hidden states, a name -> loss registry, and the layer-distillation
loss that adds intermediate-layer terms to a logit loss."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from objectives._config import ConfigError


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
    teacher_logits: torch.Tensor,
    *,
    temperature: float,
    alpha: float,
    weight: torch.Tensor | None = None,
    divergence: str = "forward_kl",
    jsd_beta: float = 0.5,
) -> torch.Tensor:
    """Hinton et al. (2015) distillation loss.

    loss = alpha * T^2 * KL(softmax(z_t / T) || softmax(z_s / T)) + (1 - alpha) * CE(z_s, y)

    KL is averaged over the batch (``batchmean``); ``divergence`` may replace it by the reverse KL or the
    generalised JSD (:func:`token_divergence`, one value per example). T^2 keeps the soft-target gradients on the same scale as the
    hard-label term when T changes. alpha = 0 is plain cross-entropy, alpha = 1 pure distillation; class ``weight``
    weighs the CE term as in :func:`cross_entropy_loss` (the KL term is unweighted).
    """
    t = temperature
    log_p_student = F.log_softmax(student_logits.float() / t, dim=-1)
    log_q_teacher = F.log_softmax(teacher_logits.float() / t, dim=-1)
    kd = token_divergence(log_p_student, log_q_teacher, divergence, jsd_beta).mean()
    ce = F.cross_entropy(student_logits.float(), labels, weight=weight)
    return alpha * t * t * kd + (1 - alpha) * ce


def lm_ce_loss(
    student_logits: torch.Tensor, labels: torch.Tensor, teacher_logits: Any = None, *, ignore_index: int = -100
) -> torch.Tensor:
    """Next-token cross-entropy of a causal LM, the mean over the M predicted tokens:

    CE = -(1 / M) * sum_{b, t : y_{b,t+1} != ignore} log softmax(z_s[b, t])[y_{b,t+1}]

    (0 when no token is predicted). ``student_logits`` (B, L, V), ``labels`` (B, L) the input ids with
    ``ignore_index`` where no target counts; ``teacher_logits`` is ignored."""
    targets, valid = _shifted(labels, ignore_index)
    nll = _nll(F.log_softmax(student_logits[:, :-1].float(), dim=-1), targets)
    return (nll * valid).sum() / valid.sum().clamp(min=1)


def _shifted(labels: torch.Tensor, ignore_index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The next-token targets of positions 0..L-2 (ignored ones as 0) and their (B, L - 1) 0/1 weights. The
    losses work on ``logits[:, :-1]`` views and weigh ignored targets out, so no (M, V) copy is made."""
    targets = labels[:, 1:]
    valid = targets != ignore_index
    return targets.masked_fill(~valid, 0), valid.float()


def _nll(log_probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """-log p(target) per position: (B, L - 1) from (B, L - 1, V) log-probabilities."""
    return -log_probs.gather(-1, targets[..., None])[..., 0]


DIVERGENCES = ("forward_kl", "reverse_kl", "jsd")
"""Divergences D(q_teacher, p_student) of :func:`lm_kd_loss`."""


def _kl(log_a: torch.Tensor, log_b: torch.Tensor) -> torch.Tensor:
    """KL(a || b) = sum_v a_v (log a_v - log b_v) over the last axis."""
    return (log_a.exp() * (log_a - log_b)).sum(-1)


def token_divergence(log_p: torch.Tensor, log_q: torch.Tensor, divergence: str, jsd_beta: float) -> torch.Tensor:
    """Per-token divergence between the student's log-distribution ``log_p`` and the teacher's ``log_q`` (..., V).

    forward_kl = KL(q || p) (mode covering); reverse_kl = KL(p || q) (mode seeking);
    jsd = beta * KL(q || m) + (1 - beta) * KL(p || m), m = beta * q + (1 - beta) * p: the generalised JSD of Agarwal
    et al. (2024, GKD) exactly as TRL's ``GKDTrainer.generalized_jsd_loss`` defines it (beta weighs the teacher in
    the mixture), including its end points beta = 0 -> forward_kl and beta = 1 -> reverse_kl. 0 <= jsd <= H(beta)
    <= log 2 (H the binary entropy), and jsd is symmetric in p, q at beta = 0.5."""
    if divergence == "forward_kl" or (divergence == "jsd" and jsd_beta == 0):
        return _kl(log_q, log_p)
    if divergence == "reverse_kl" or (divergence == "jsd" and jsd_beta == 1):
        return _kl(log_p, log_q)
    if divergence != "jsd":
        raise ConfigError("divergence", f"must be one of {', '.join(DIVERGENCES)}, got {divergence!r}")
    if not 0 < jsd_beta < 1:
        raise ConfigError("jsd_beta", f"must be in [0, 1], got {jsd_beta}")
    log_m = torch.logsumexp(torch.stack([log_q + math.log(jsd_beta), log_p + math.log1p(-jsd_beta)]), dim=0)
    return jsd_beta * _kl(log_q, log_m) + (1 - jsd_beta) * _kl(log_p, log_m)


def lm_kd_loss(
    student_logits: torch.Tensor,
    labels: torch.Tensor,
    teacher_logits: torch.Tensor,
    *,
    temperature: float,
    alpha: float,
    divergence: str = "forward_kl",
    jsd_beta: float = 0.5,
    ignore_index: int = -100,
) -> torch.Tensor:
    """Token-level distillation of a causal LM:

    loss = alpha * T^2 * (1 / M) * sum_{tokens} D(q_T, p_T) + (1 - alpha) * CE

    over the M predicted tokens (position t predicts token t + 1, targets ``ignore_index`` excluded; see
    :func:`objectives.evaluation.next_token`), q_T = softmax(z_t / T) the teacher's and p_T = softmax(z_s / T) the student's next-token
    distribution at the same position, D one of :data:`DIVERGENCES` (:func:`token_divergence`), CE the
    :func:`lm_ce_loss` at T = 1. ``teacher_logits`` (B, L, V): the live teacher's, or the study cache's, recomputed
    exactly from its LM-head inputs (:class:`objectives.training.HeadInputs`).
    """
    t = temperature
    # Positions 0..L-2 as views (no (M, V) copy of either side); ignored targets are weighed out per token.
    z, teacher = student_logits[:, :-1].float(), teacher_logits[:, :-1]
    targets, valid = _shifted(labels, ignore_index)
    log_p_t = F.log_softmax(z / t, dim=-1)
    log_p = log_p_t if t == 1 else F.log_softmax(z, dim=-1)  # CE is at T = 1: one pass fewer when T is 1
    ce = _nll(log_p, targets)
    log_q = F.log_softmax(teacher.float() / t, dim=-1)
    per_token = alpha * t * t * token_divergence(log_p_t, log_q, divergence, jsd_beta) + (1 - alpha) * ce
    return (per_token * valid).sum() / valid.sum().clamp(min=1)


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


LOSSES: dict[str, Callable[..., torch.Tensor]] = {
    "ce": cross_entropy_loss,
    "kd": kd_loss,
    "lm_ce": lm_ce_loss,
    "lm_kd": lm_kd_loss,
}
"""Losses by name: ``ce`` for fine-tuning, ``kd`` for integrated distillation; ``lm_ce`` / ``lm_kd`` the same for
causal language models (next-token targets)."""


def get_loss(name: str, **options: Any) -> Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]:
    """The loss ``name`` with its options bound, e.g. ``get_loss("kd", temperature=2, alpha=0.5)``."""
    if name not in LOSSES:
        raise KeyError(f"unknown loss {name!r}; valid: {sorted(LOSSES)}")
    fn = LOSSES[name]

    def loss(student_logits: torch.Tensor, labels: torch.Tensor, teacher_logits: Any = None) -> torch.Tensor:
        return fn(student_logits, labels, teacher_logits, **options)

    return loss


def final_normed(
    states: Sequence[torch.Tensor], indices: Sequence[int], total: int, norm: Callable[[torch.Tensor], torch.Tensor]
) -> list[torch.Tensor]:
    """Entries ``indices`` of a pre-norm decoder's ``total`` ``hidden_states`` (``states``, in that order) as its LM
    head reads them: norm(h). transformers returns every entry but the last as the raw residual stream and the last
    after the final norm (it is ``last_hidden_state``), so ``norm`` (the model's final norm) is applied to all but
    that one. Raw residual streams grow with depth and carry a few massive activations (SmolLM2-135M: rms 2 after
    the embeddings, 180 in its middle layers with single values of 22,000, against an rms near 1.7 at every depth
    once normed), so an MSE between raw states would compare scales rather than directions."""
    return [h if i == total - 1 else norm(h) for h, i in zip(states, indices, strict=True)]


class LayerDistillLoss(torch.nn.Module):
    """A logit loss plus intermediate-layer terms (TinyBERT / MiniLM style):

    loss = logit_loss(z_s, y, z_t) + beta * L_hid + gamma * L_att

    (:func:`hidden_state_loss`, :func:`attention_loss`). Student layer i is matched with teacher layer
    ``keep[i]`` (the teacher layer it was cut from, or stands for in a scratch student), and the embeddings output
    with the embeddings output (hidden states only). ``project`` is the learned d_s -> d_t map of a narrower student
    (None at equal widths): a parameter of this loss, trained with the student (the training loop adds
    :meth:`parameters` to the optimiser) and never part of the student's saved weights.

    ``final_norms`` (the student's and the teacher's final norm) is for pre-norm decoders, whose hidden states are
    raw residual streams but for the last, returned after the final norm: every matched state is then compared as
    the LM head reads it (:func:`final_normed`), so a student's last (normed) state never meets a teacher's raw
    middle one. None (post-norm encoders such as BERT, whose every layer output is already normed): as returned.

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
        final_norms: tuple[Callable[[torch.Tensor], torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]
        | None = None,
    ) -> None:
        super().__init__()
        self.logit_loss = logit_loss
        self.keep = list(keep)
        self.hidden_weight = hidden_weight
        self.attention_weight = attention_weight
        narrower = hidden_weight > 0 and student_width != teacher_width
        self.project = torch.nn.Linear(student_width, teacher_width) if narrower else None
        # A plain tuple, not submodules: the norms belong to the models (the student's trains with it, the
        # teacher's is frozen), so they stay out of this loss's parameters.
        self.final_norms = final_norms

    @property
    def model_outputs(self) -> dict[str, bool]:
        """The extra outputs the training loop asks both models for."""
        return {"output_hidden_states": self.hidden_weight > 0, "output_attentions": self.attention_weight > 0}

    def forward(self, student: Any, labels: torch.Tensor, teacher: Any, attention_mask: torch.Tensor) -> torch.Tensor:
        loss = self.logit_loss(student.logits, labels, teacher.logits)
        if self.hidden_weight > 0:
            layers = [0, *(i + 1 for i in self.keep)]  # hidden_states[0] is the embeddings output
            student_states = list(student.hidden_states)
            teacher_states = [teacher.hidden_states[i] for i in layers]
            if self.final_norms is not None:
                student_norm, teacher_norm = self.final_norms
                student_states = final_normed(
                    student_states, range(len(student_states)), len(student_states), student_norm
                )
                teacher_states = final_normed(teacher_states, layers, len(teacher.hidden_states), teacher_norm)
            loss = loss + self.hidden_weight * hidden_state_loss(
                student_states, teacher_states, attention_mask, self.project
            )
        if self.attention_weight > 0:
            teacher_attentions = [teacher.attentions[i] for i in self.keep]
            loss = loss + self.attention_weight * attention_loss(student.attentions, teacher_attentions, attention_mask)
        return loss
