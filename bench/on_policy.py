"""On-policy (GKD) against off-policy distillation of the same causal-LM student, at equal steps, over seeds.

On the data of ``examples/smollm2_instruct.yaml`` (rt-snippets as ``Review: ...\\nSentiment:`` prompts with
`` positive`` / `` negative`` completions): SmolLM2-135M-Instruct is fine-tuned once on the completions
(``--teacher-steps``; or ``--teacher``, one already adapted), its final hidden states over the training examples are cached, then per seed one student
(``--layers`` evenly spaced decoder layers, weights copied) is distilled ``--steps`` steps twice from the same
initial weights, data order and seed: off-policy (``distill.on_policy`` 0, every batch the references, the cached
teacher) and on-policy (``--lambda``: that fraction of batches the student's own sampled completions, scored by the
live teacher with the divergence alone; the others read the cache). Each run is scored on ``--test-rows`` held-out
test examples, every one of them generated greedily: exact match, ROUGE-L and completion perplexity. Printed per
seed, then mean and standard deviation per setting, and the paired per-seed difference (on - off) with its 95% t
interval.

    python bench/on_policy.py [--layers 12] [--steps 30] [--seeds 3] [--lambda 0.5] [--teacher DIR]
"""

from __future__ import annotations

import argparse
import copy
import os
import tempfile
import time
from pathlib import Path

import torch
from _seeds import paired, summary

from hpo.execution import usable_cores
from objectives import DataArgs, DistillArgs, StudentArgs, TeacherArgs, TrainArgs
from objectives.tasks._causal_lm import (
    distill_student,
    finetune_teacher,
    initial_student,
    load_teacher,
    prepare_workload,
)
from objectives.training import teacher_logits

COLUMNS = ("exact_match", "rouge_l", "perplexity", "train_seconds")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m", help="registry name or directory of a causal LM")
    parser.add_argument("--layers", type=int, default=12, help="decoder layers the student keeps")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--train-rows", type=int, default=240)
    parser.add_argument("--test-rows", type=int, default=192)
    parser.add_argument("--teacher-steps", type=int, default=30)
    parser.add_argument(
        "--teacher", type=Path, help="a teacher already adapted (the example study's), not trained again"
    )
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--lambda", dest="fraction", type=float, default=0.5, help="distill.on_policy of the GKD arm")
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--temperature", type=float, default=2.0)
    parser.add_argument("--alpha", type=float, default=0.5)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(usable_cores())
    start = time.perf_counter()
    data = DataArgs(
        name="rt-snippets",
        format="prompt-completion",
        max_length=64,
        max_train_rows=args.train_rows,
        max_val_rows=16,
        max_eval_rows=args.test_rows,
        generation_rows=args.test_rows,
        max_new_tokens=2,
    )
    device = "cuda" if torch.cuda.is_available() else "cpu"
    work = prepare_workload(data, args.model, device)
    test = work.test()
    teacher_train = TrainArgs(lr=1e-4, max_steps=args.teacher_steps, batch_size=8, eval_every=args.teacher_steps)
    teacher_dir = args.teacher or Path(tempfile.mkdtemp(prefix="on-policy-teacher-"))
    if args.teacher is None:
        finetune_teacher(work, TeacherArgs(model=args.model, train=teacher_train), 0, teacher_dir)
    teacher = load_teacher(teacher_dir, work)
    teacher_scores = work.evaluate(teacher, test, 16).scores()
    cache = teacher_logits(teacher, work.train, 32)
    print(
        f"{args.model}: teacher {args.teacher or f'fine-tuned {args.teacher_steps} steps'}, on the test rows exact_match {teacher_scores['exact_match']:.3f}, rouge_l {teacher_scores['rouge_l']:.3f}; "
        f"{args.layers}-layer student, {args.steps} steps of {args.batch_size}, {len(work.train)} training / "
        f"{len(test)} test examples (all generated), {device}, {torch.get_num_threads()} threads",
        flush=True,
    )
    settings = {"off-policy": 0.0, f"on-policy {args.fraction:g}": args.fraction}
    train = TrainArgs(
        lr=args.lr, max_steps=args.steps, batch_size=args.batch_size, eval_every=args.steps, eval_batch_size=16
    )
    student = StudentArgs(num_layers=args.layers)
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in settings}
    for seed in range(args.seeds):
        init = initial_student(work, teacher_dir, student, train, seed)
        for name, fraction in settings.items():
            distill = DistillArgs(temperature=args.temperature, alpha=args.alpha, on_policy=fraction)
            model, metrics = distill_student(
                work, teacher_dir, student, train, distill, seed, logits=lambda *_: cache, init=copy.deepcopy(init)
            )
            scores = {**work.evaluate(model, test, 16).scores(), "train_seconds": metrics["train_seconds"]}
            runs[name].append(scores)
            shown = ", ".join(f"{c} {scores[c]:.3f}" for c in COLUMNS)
            print(f"seed {seed} {name}: {shown}", flush=True)
    print("\n" + summary(runs, COLUMNS, 3))
    off, on = runs.values()
    print()
    for column in COLUMNS[:3]:
        print(paired(off, on, column, "on - off", 3))
    print(f"total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
