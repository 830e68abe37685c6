"""Depth-only against depth+width students of the quickstart teacher, at equal training steps.

The teacher is fine-tuned as in ``examples/quickstart.yaml`` (the same data, split and settings); every student is
distilled from it (integrated KD, the teacher's logits cached once) for the same number of steps, batch and seed.
Width-pruned students keep the teacher's most important heads, FFN neurons and hidden channels
(``objectives._pruning``).

    python bench/compression.py [--steps 100] [--rows 4000] [--teacher-steps N]

Prints accuracy, p50 latency (batch 1, one thread, the trial's ``measure_cost``), params and size of each model,
and the most accurate student at no more than a third of the teacher's latency, with its share of the teacher's
accuracy.
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from hpo import load_config
from hpo._teacher import LogitCache
from objectives import StudentArgs, distill_student, finetune_teacher, load_teacher, prepare_workload
from storage import ArtifactDir

STUDENTS = {
    "depth 1": StudentArgs(num_layers=1),
    "depth 2": StudentArgs(num_layers=2),
    "depth 3": StudentArgs(num_layers=3),
    "depth 2, widths 0.5": StudentArgs(num_layers=2, hidden_ratio=0.5, ffn_ratio=0.5, heads_ratio=0.5),
    "depth 3, widths 0.5": StudentArgs(num_layers=3, hidden_ratio=0.5, ffn_ratio=0.5, heads_ratio=0.5),
    "depth 4, widths 0.5": StudentArgs(num_layers=4, hidden_ratio=0.5, ffn_ratio=0.5, heads_ratio=0.5),
    "depth 3, hidden 0.75 ffn 0.5 heads 0.5, importance layers": StudentArgs(
        num_layers=3, hidden_ratio=0.75, ffn_ratio=0.5, heads_ratio=0.5, layer_selection="importance"
    ),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=100, help="training steps of every student")
    parser.add_argument("--rows", type=int, default=4000, help="training rows (the teacher's and the students')")
    parser.add_argument("--teacher-steps", type=int, help="teacher fine-tuning steps (default: the quickstart's)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(os.cpu_count() or 1)
    config = load_config(Path(__file__).parents[1] / "examples" / "quickstart.yaml")
    data = replace(config.data, max_train_rows=args.rows)
    work = prepare_workload(data, config.teacher.model)
    tmp = Path(tempfile.mkdtemp(prefix="hpo-compression-"))
    start = time.perf_counter()
    teacher_args = config.teacher
    if args.teacher_steps is not None:
        teacher_args = replace(teacher_args, train=replace(teacher_args.train, max_steps=args.teacher_steps))
    rows = {"teacher (6 layers)": finetune_teacher(work, teacher_args, config.seed, tmp / "teacher")}
    print(f"teacher fine-tuned in {time.perf_counter() - start:.0f} s", flush=True)
    teacher = load_teacher(tmp / "teacher", work)
    cache = LogitCache(ArtifactDir(tmp, "bench"), tmp / "teacher")
    train = replace(config.train, max_steps=args.steps, eval_every=args.steps, patience=None)
    for name, student in STUDENTS.items():
        start = time.perf_counter()
        rows[name] = distill_student(work, tmp / "teacher", student, train, config.distill, 0, logits=cache)[1]
        print(f"{name}: {time.perf_counter() - start:.0f} s", flush=True)
    del teacher

    n = len(work.validation)
    print(
        f"\n{len(work.train)} training rows, {n} validation rows, students {args.steps} steps of batch "
        f"{train.batch_size}, seed 0; latency batch 1, 1 thread; {torch.get_num_threads()} training threads"
    )
    print(f"{'model':58} {'accuracy':>8} {'p50 ms':>7} {'params':>11} {'MB':>6}")
    for name, m in rows.items():
        print(f"{name:58} {m['accuracy']:8.3f} {m['latency_ms']:7.2f} {int(m['params']):11,d} {m['size_mb']:6.1f}")
    t = rows["teacher (6 layers)"]
    p = t["accuracy"]
    print(f"standard error of one accuracy on {n} rows: {math.sqrt(p * (1 - p) / n):.3f}")
    fast = {k: m for k, m in rows.items() if k in STUDENTS and m["latency_ms"] <= t["latency_ms"] / 3}
    if not fast:
        print("no student at <= 1/3 of the teacher's latency")
        return
    best = max(fast, key=lambda k: fast[k]["accuracy"])
    b = fast[best]
    print(
        f"best student at <= 1/3 of the teacher's latency: {best}: accuracy {b['accuracy']:.3f} = "
        f"{100 * b['accuracy'] / p:.1f}% of the teacher's, latency {b['latency_ms'] / t['latency_ms']:.2f}x, "
        f"params {b['params'] / t['params']:.2f}x"
    )


if __name__ == "__main__":
    main()
