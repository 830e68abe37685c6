"""Do narrow and one-layer students leave the majority class? Before and after the two fixes, on two data sets.

On MiniLM-L6 fine-tuned on a data set, the students ``examples/compress_pareto.yaml`` found stuck at the majority
class after 100 steps are distilled (integrated KD, the teacher's logits cached) from the same teacher, seed and
steps, in pairs that differ in one thing:

- one layer: the teacher's first layer (the old even choice; after it the [CLS] token the head reads hardly
  depends on the input) against its last (the choice now);
- narrow (hidden 0.375, FFN 0.25, heads 0.25, 2 layers): the output layer as
  pruning slices it (its logits 1-4% of the teacher's spread) against rescaled to the teacher's logits on the
  calibration sample (``objectives.students._pruning.calibrate_head``, the default now).

    python bench/narrow_students.py [--data rt-snippets sms-spam] [--steps 100] [--seeds 1]
    python bench/narrow_students.py --data rt-snippets --rows 64 --steps 2 --teacher-steps 2   # smoke run
    python bench/narrow_students.py --teacher-dir rt-snippets=DIR   # a teacher this script's settings made before

Prints per student the validation accuracy, macro-F1 and ``top_share`` (the share of examples given the most
often predicted class: 1.0 is a constant prediction), mean ± sd over seeds, and the majority class's share.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from hpo import load_config
from hpo.execution import LogitCache, usable_cores
from objectives import StudentArgs, build_student, distill_student, finetune_teacher, load_teacher, prepare_workload
from objectives.training._train import evaluate
from storage import ArtifactDir, Leases

EXAMPLES = {"rt-snippets": "compress_pareto.yaml", "sms-spam": "sms_spam_pareto.yaml"}
"""Each data set's study: its data settings and teacher fine-tuning."""

NARROW = {"hidden_ratio": 0.375, "ffn_ratio": 0.25, "heads_ratio": 0.25}
STUDENTS: dict[str, tuple[StudentArgs, bool]] = {
    "1 layer: teacher's first (old)": (StudentArgs(layers=[0]), True),
    "1 layer: teacher's last (now)": (StudentArgs(num_layers=1), True),
    "2 layers, narrow, head as sliced (old)": (StudentArgs(num_layers=2, **NARROW), False),
    "2 layers, narrow, head calibrated (now)": (StudentArgs(num_layers=2, **NARROW), True),
}
"""Students by name: the architecture and whether the narrowed student's head is calibrated."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", nargs="+", default=list(EXAMPLES), choices=list(EXAMPLES))
    parser.add_argument("--steps", type=int, default=100, help="training steps of every student (100)")
    parser.add_argument("--seeds", type=int, default=1, help="training seeds of every student (1)")
    parser.add_argument("--rows", type=int, help="training rows (default: all)")
    parser.add_argument("--teacher-steps", type=int, help="teacher fine-tuning steps (default: the example's)")
    parser.add_argument(
        "--teacher-dir",
        nargs="+",
        default=[],
        metavar="DATA=DIR",
        help="use the teacher saved in DIR for DATA (fine-tuned by the example's settings) instead of fine-tuning one",
    )
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(usable_cores())
    root = Path(__file__).parents[1] / "examples"
    for name in args.data:
        config = load_config(root / EXAMPLES[name])
        data = config.data if args.rows is None else replace(config.data, max_train_rows=args.rows)
        work = prepare_workload(data, config.teacher.model)
        teacher_args = config.teacher
        if args.teacher_steps is not None:
            teacher_args = replace(teacher_args, train=replace(teacher_args.train, max_steps=args.teacher_steps))
        tmp = Path(tempfile.mkdtemp(prefix="hpo-narrow-"))
        start = time.perf_counter()
        given = dict(pair.split("=", 1) for pair in args.teacher_dir)
        teacher_dir = Path(given[name]) if name in given else tmp / "teacher"
        if name not in given:
            finetune_teacher(work, teacher_args, config.seed, teacher_dir)
        teacher = load_teacher(teacher_dir, work)
        scored = evaluate(teacher, work.validation, 128)
        row = {"accuracy": scored.accuracy, "f1": scored.f1}
        print(f"{name}: teacher {row['accuracy']:.3f} ({time.perf_counter() - start:.0f} s)", flush=True)
        cache = LogitCache(ArtifactDir(tmp, "bench"), teacher_dir, Leases(f"sqlite:///{tmp}/leases.db"))
        train = replace(config.train, max_steps=args.steps, eval_every=args.steps, patience=None, lr=1e-4)
        scores: dict[str, list[tuple[float, float, float]]] = {}
        for seed in range(args.seeds):
            for label, (student, calibrate) in STUDENTS.items():
                start = time.perf_counter()
                torch.manual_seed(seed)
                init = build_student(teacher, student, train.dropout, work.train, calibrate=calibrate)
                before = evaluate(init, work.validation, train.eval_batch_size)
                model, _ = distill_student(
                    work, teacher_dir, student, train, config.distill, seed, logits=cache, init=init
                )
                after = evaluate(model, work.validation, train.eval_batch_size)
                scores.setdefault(label, []).append((after.accuracy, after.f1, after.top_share))
                print(
                    f"  seed {seed}, {label}: top_share {before.top_share:.2f} -> {after.top_share:.2f}, accuracy "
                    f"{after.accuracy:.3f}, {time.perf_counter() - start:.0f} s",
                    flush=True,
                )
        labels = work.validation.labels
        majority = max(labels.count(c) for c in set(labels)) / len(labels)
        print(
            f"\n{name}: {len(work.train)} training rows, {len(labels)} validation rows (majority class "
            f"{majority:.3f}); teacher {row['accuracy']:.3f} accuracy, {row['f1']:.3f} F1; students {args.steps} "
            f"steps of batch {train.batch_size}, lr {train.lr}, seeds 0..{args.seeds - 1} (mean ± sd)"
        )
        print(f"{'student':48} {'accuracy':>15} {'F1':>15} {'top_share':>15}")
        for label, runs in scores.items():
            cells = [
                f"{statistics.mean(v):.3f} ± {statistics.stdev(v) if len(v) > 1 else float('nan'):.3f}"
                for v in zip(*runs, strict=True)
            ]
            print(f"{label:48} " + " ".join(f"{c:>15}" for c in cells))
        print(flush=True)


if __name__ == "__main__":
    main()
