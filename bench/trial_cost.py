"""Cost of one distillation trial with the teacher-logit cache, with the live teacher, and of plain fine-tuning.

The same 3-layer student, steps, batch and seed in each arm, on the offline movie-review snippets; the cache is
filled once before timing (its one-time cost is printed separately, as a study pays it once for all trials).

    python bench/trial_cost.py [--steps 40] [--batch 32] [--rows 4000] [--repeats 2]
    python bench/trial_cost.py --task causal-lm [--steps 10] [--batch 8] [--rows 64] [--block-size 64]

Prints seconds per arm (best of ``--repeats``) and the ratios cached / fine-tune, live / cached, fine-tuning with
length-grouped batches (the default) / unsorted batches, fused AdamW (the default) / the per-tensor loop, and with
``torch.compile`` / eager (first run and warm).

``--task causal-lm``: the offline SmolLM2-135M teacher (used as it is) on WikiText-2 blocks, a 4-layer student cut
from it: a distillation trial over the cached teacher (its final hidden states, the exact logits recomputed per
batch) against plain next-token fine-tuning of the same student from the same weights (the goal: at most 1.10x),
and against the live teacher; and the cache's bytes per token.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from dataclasses import replace
from functools import partial
from pathlib import Path
from unittest import mock

import torch

from hpo.execution import LogitCache, usable_cores
from objectives import (
    DataArgs,
    DistillArgs,
    StudentArgs,
    TeacherArgs,
    TrainArgs,
    _causal_lm,
    _optim,
    distill_student,
    finetune_student,
    load_classifier,
    load_teacher,
    prepare_workload,
)
from storage import ArtifactDir, Leases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rows", type=int, default=4000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--task", choices=["classification", "causal-lm"], default="classification")
    parser.add_argument("--block-size", type=int, default=64, help="causal-lm: tokens per block")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(usable_cores())
    tmp = Path(tempfile.mkdtemp(prefix="hpo-trial-cost-"))
    if args.task == "causal-lm":
        causal_lm(args, tmp)
        return
    work = prepare_workload(DataArgs(max_train_rows=args.rows, max_val_rows=200), "minilm-l6")
    teacher_dir = tmp / "teacher"
    load_classifier("minilm-l6", work.num_labels).save_pretrained(teacher_dir)  # timing does not need a good teacher
    teacher = load_teacher(teacher_dir, work)
    cache = LogitCache(ArtifactDir(tmp, "bench"), teacher_dir, Leases(f"sqlite:///{tmp}/leases.db"))
    start = time.perf_counter()
    cache("train", work.train, teacher)
    fill = time.perf_counter() - start

    train = TrainArgs(max_steps=args.steps, batch_size=args.batch, eval_every=args.steps, lr=1e-4)
    uniform = replace(train, group_by_length=False)  # batches drawn without grouping by length
    compiled = replace(train, compile=True)  # torch.compile; its first run in this process pays the compile
    student, distill = StudentArgs(num_layers=3), DistillArgs()
    finetune = partial(finetune_student, work, "minilm-l6", student, train, 0)
    arms = {
        "distill, cached teacher": lambda: distill_student(work, teacher_dir, student, train, distill, 0, logits=cache),
        "distill, live teacher": lambda: distill_student(work, teacher_dir, student, train, distill, 0),
        "fine-tune, no teacher": finetune,
        "fine-tune, AdamW loop": mock.patch.object(_optim, "FUSED_DEVICES", ())(finetune),  # per-tensor AdamW
        "fine-tune, unsorted": lambda: finetune_student(work, "minilm-l6", student, uniform, 0),
        "fine-tune, compiled": lambda: finetune_student(work, "minilm-l6", student, compiled, 0),
    }
    # train_seconds leaves compiling out (compile_seconds): the first compiled run's total adds it back
    runs = {
        name: [sum(arm()[1].get(key, 0.0) for key in ("train_seconds", "compile_seconds")) for _ in range(args.repeats)]
        for name, arm in arms.items()
    }
    seconds = {name: min(times) for name, times in runs.items()}
    threads = torch.get_num_threads()
    print(
        f"{args.steps} steps, batch {args.batch}, 3-layer student, {len(work.train)} training rows, {threads} threads"
    )
    print(f"cache fill (once per study): {fill:.1f} s for {len(work.train)} examples")
    for name, value in seconds.items():
        print(f"{name:<24} {value:7.1f} s")
    print(f"{'(compiled, first run)':<24} {runs['fine-tune, compiled'][0]:7.1f} s  (includes compiling)")
    cached, live, plain, looped, unsorted, warm = seconds.values()
    print(
        f"ratio cached / fine-tune: {cached / plain:.3f}   live / cached: {live / cached:.3f}   "
        f"length-grouped / unsorted: {plain / unsorted:.3f}   fused AdamW / loop: {plain / looped:.3f}   "
        f"compiled (warm) / eager: {warm / plain:.3f}   "
        f"compiled (first) / eager: {runs['fine-tune, compiled'][0] / plain:.3f}"
    )


def causal_lm(args: argparse.Namespace, tmp: Path) -> None:
    """The causal-LM arms: cached (exact, LM-head inputs) KD, live-teacher KD and plain fine-tuning of one 4-layer student."""
    data = DataArgs(name="wikitext-2", block_size=args.block_size, max_train_rows=args.rows, max_val_rows=16)
    work = _causal_lm.prepare_workload(data, "smollm2-135m")
    teacher_dir = tmp / "teacher"
    _causal_lm.finetune_teacher(work, TeacherArgs(model="smollm2-135m", train=TrainArgs(max_steps=0)), 0, teacher_dir)
    teacher = _causal_lm.load_teacher(teacher_dir, work)
    distill = DistillArgs()
    artifacts = ArtifactDir(tmp, "bench")
    cache = LogitCache(artifacts, teacher_dir, Leases(f"sqlite:///{tmp}/leases.db"), batch_size=8)
    start = time.perf_counter()
    cache("train", work.train, teacher)
    fill = time.perf_counter() - start
    stored = sum(f.stat().st_size for f in artifacts.path.glob("logits-train-*"))
    train = TrainArgs(max_steps=args.steps, batch_size=args.batch, eval_every=args.steps, lr=3e-4)
    student = StudentArgs(num_layers=4)
    arms = {
        "distill, cached": lambda: _causal_lm.distill_student(
            work, teacher_dir, student, train, distill, 0, logits=cache
        ),
        "distill, live teacher": lambda: _causal_lm.distill_student(work, teacher_dir, student, train, distill, 0),
        "fine-tune, no teacher": lambda: _causal_lm.finetune_student(work, str(teacher_dir), student, train, 0),
    }
    seconds = {name: min(arm()[1]["train_seconds"] for _ in range(args.repeats)) for name, arm in arms.items()}
    tokens = work.train.n_tokens
    print(
        f"{args.steps} steps, batch {args.batch} x {args.block_size} tokens, 4-layer student of SmolLM2-135M, "
        f"{len(work.train)} training blocks, {torch.get_num_threads()} threads"
    )
    print(f"cache fill (once per study): {fill:.1f} s for {tokens:,} tokens; {stored / tokens:.0f} bytes per token")
    for name, value in seconds.items():
        print(f"{name:<24} {value:7.1f} s")
    cached, live, plain = seconds.values()
    print(f"ratio cached / fine-tune: {cached / plain:.3f}   live / cached: {live / cached:.3f}")


if __name__ == "__main__":
    main()
