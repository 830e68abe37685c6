"""How far cached KD is from live full-vocabulary KD on SmolLM2-135M: the earlier top-k cache against the exact one.

The offline SmolLM2-135M teacher on ``--blocks`` WikiText-2 training blocks of ``--block-size`` tokens; the student's
logits are those of a 4-layer student cut from it (layers 0, 10, 20, 29, untrained: a student at the start of
distillation, whose distribution differs from the teacher's everywhere). For each temperature T and divergence
(forward KL, reverse KL, generalised JSD at beta 0.5) the KD term alpha = 1 of ``objectives.training.lm_kd_loss``

    loss = T^2 * mean over predicted tokens of D(q_T, p_T)

is computed against the live teacher's logits and against each cache, with its gradient with respect to the student's
logits; printed are |loss_cache - loss_live| / loss_live and ||g_cache - g_live|| / ||g_live||.

- ``top-k``: the scheme of earlier versions (``TopKLogits``, reproduced here as it was): the k largest logits per
  token stored as fp16 log-probabilities plus the log-sum-exp of the rest, both distributions folded into k + 1
  buckets, the tail's tempered mass taken as if its V - k logits were equal.
- ``exact``: the study cache as it is now (``hpo.execution.LogitCache`` through ``objectives.teacher_logits``): each
  token's final hidden state in fp16 and the LM head, the logits recomputed per batch.

Also printed: the teacher's mean top-1 probability at each T (live, and as the top-64 cache's buckets give it), the
bytes per token of each cache, and the time of the per-batch head matmul against the teacher's forward pass.

    python bench/topk_cache.py [--blocks 4] [--block-size 64]
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from hpo.execution import LogitCache
from objectives import DataArgs, TeacherArgs, TrainArgs, cut_decoder
from objectives.tasks import _causal_lm
from objectives.training import lm_kd_loss
from objectives.training._losses import token_divergence
from storage import ArtifactDir, Leases

TEMPERATURES = (1.0, 2.0, 4.0)
DIVERGENCES = ("forward_kl", "reverse_kl", "jsd")
KS = (16, 64, 256)


def topk_buckets(z_t: torch.Tensor, z_s: torch.Tensor, k: int, t: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The earlier top-k cache's (teacher, student) log-distributions over k + 1 buckets at temperature ``t``:
    teacher logits stored as fp16 log-probabilities of its top k plus the fp32 log-mass of the rest, the tail
    tempered as if flat, log sum_tail exp(z / T) ~ (rest - log(V - k)) / T + log(V - k)."""
    values, indices = z_t.topk(k, dim=-1)
    rest = z_t.scatter(-1, indices, -math.inf).logsumexp(-1)
    total = z_t.logsumexp(-1)
    values, rest = (values - total[..., None]).half().float(), rest - total  # as stored
    tail = math.log(z_t.shape[-1] - k)
    log_q = torch.cat([values / t, ((rest - tail) / t + tail)[..., None]], dim=-1).log_softmax(-1)
    log_p = F.log_softmax(z_s / t, dim=-1)
    top = log_p.gather(-1, indices)
    log_p = torch.cat([top, torch.log(torch.clamp(-torch.expm1(top.logsumexp(-1)), min=1e-12))[..., None]], dim=-1)
    return log_q, log_p


def topk_kd(z_s: torch.Tensor, z_t: torch.Tensor, k: int, t: float, divergence: str) -> torch.Tensor:
    """``lm_kd_loss`` at alpha = 1 (no ignored targets) as the top-k cache computed it."""
    log_q, log_p = topk_buckets(z_t[:, :-1], z_s[:, :-1], k, t)
    return t * t * token_divergence(log_p, log_q, divergence, 0.5).mean()


def errors(loss_fn, student: torch.Tensor, live_loss: torch.Tensor, live_grad: torch.Tensor) -> tuple[float, float]:
    z = student.clone().requires_grad_()
    loss = loss_fn(z)
    loss.backward()
    return abs(loss.item() - live_loss.item()) / live_loss.item(), (
        (z.grad - live_grad).norm() / live_grad.norm()
    ).item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blocks", type=int, default=4, help="WikiText-2 training blocks")
    parser.add_argument("--block-size", type=int, default=64, help="tokens per block")
    args = parser.parse_args()
    data = DataArgs(name="wikitext-2", block_size=args.block_size, max_train_rows=args.blocks, max_val_rows=1)
    work = _causal_lm.prepare_workload(data, "smollm2-135m")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        teacher_dir = tmp / "teacher"
        as_it_is = TeacherArgs(model="smollm2-135m", train=TrainArgs(max_steps=0))
        _causal_lm.finetune_teacher(work, as_it_is, 0, teacher_dir)
        teacher = _causal_lm.load_teacher(teacher_dir, work)
        rows = torch.arange(len(work.train))
        batch = work.train.batch(rows.tolist())
        with torch.no_grad():
            teacher(input_ids=batch["input_ids"])  # warm-up: the first forward pass is slower
            start = time.perf_counter()
            live = teacher(input_ids=batch["input_ids"]).logits.float()
            forward = time.perf_counter() - start
        with torch.no_grad():
            student = cut_decoder(teacher, [0, 10, 20, 29])(input_ids=batch["input_ids"]).logits.float()
        artifacts = ArtifactDir(tmp, "bench")
        cache = LogitCache(artifacts, teacher_dir, Leases(f"sqlite:///{tmp}/leases.db"), batch_size=args.blocks)
        stored = cache("train", work.train, teacher).head_to("cpu")
        stored.logits(rows)  # warm-up, as for the teacher
        start = time.perf_counter()
        exact = stored.logits(rows)
        matmul = time.perf_counter() - start
        cache_bytes = sum(f.stat().st_size for f in artifacts.path.glob("logits-train-*"))
    tokens = batch["input_ids"].numel()
    labels = batch["labels"]
    vocab = live.shape[-1]
    print(
        f"SmolLM2-135M, {args.blocks} WikiText-2 blocks x {args.block_size} tokens ({tokens} tokens, "
        f"{tokens - args.blocks} predicted), vocabulary {vocab}, {torch.get_num_threads()} threads"
    )
    print(f"exact cache: logits within {(exact - live).abs().max().item():.4f} of the live teacher's (max abs)")
    print("\nrelative error of cached against live KD (loss | gradient w.r.t. the student's logits)")
    print(f"{'cache':<11}{'divergence':<12}" + "".join(f"{f'T = {t:g}':>24}" for t in TEMPERATURES))
    reference = {}  # (divergence, T) -> the live teacher's loss and gradient
    for divergence in DIVERGENCES:
        for t in TEMPERATURES:
            z = student.clone().requires_grad_()
            loss = lm_kd_loss(z, labels, live, temperature=t, alpha=1.0, divergence=divergence)
            loss.backward()
            reference[divergence, t] = (loss.detach(), z.grad)
    for name in [*(f"top-{k}" for k in KS), "exact"]:
        for divergence in DIVERGENCES:
            cells = []
            for t in TEMPERATURES:
                if name == "exact":
                    fn = lambda z, t=t, d=divergence: lm_kd_loss(  # noqa: E731
                        z, labels, exact, temperature=t, alpha=1.0, divergence=d
                    )
                else:
                    k = int(name.split("-")[1])
                    fn = lambda z, t=t, d=divergence, k=k: topk_kd(z, live, k, t, d)  # noqa: E731
                loss_err, grad_err = errors(fn, student, *reference[divergence, t])
                cells.append(f"{loss_err:10.2e} | {grad_err:9.2e}")
            print(f"{name:<11}{divergence:<12}" + "".join(f"{c:>24}" for c in cells))
    print("\nteacher's mean top-1 probability (live | as the top-64 cache's buckets give it)")
    for t in TEMPERATURES:
        live_top1 = (live[:, :-1] / t).softmax(-1).max(-1).values.mean().item()
        log_q, _ = topk_buckets(live[:, :-1], student[:, :-1], 64, t)
        print(f"T = {t:g}: {live_top1:.4f} | {log_q[..., 0].exp().mean().item():.4f}")
    hidden = stored.states.shape[-1]
    head = stored.weight.numel() * 4
    print(
        f"\nbytes per token: exact cache {2 * hidden} (+ the head once, {head / 2**20:.0f} MiB; this cache file "
        f"{cache_bytes / 2**20:.1f} MiB), top-64 cache {64 * 6 + 4}"
    )
    print(
        f"per batch of {tokens} tokens: head matmul {matmul * 1e3:.0f} ms, teacher forward {forward * 1e3:.0f} ms "
        f"(ratio {matmul / forward:.3f})"
    )


if __name__ == "__main__":
    main()
