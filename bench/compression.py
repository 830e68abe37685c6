"""Depth-only against depth+width students of the quickstart teacher, at equal training steps.

The teacher is fine-tuned on the data, split and settings of ``examples/quickstart.yaml`` but to convergence, not for
the quickstart's 150 steps (after which 3-layer students scored above it): validated every ``--teacher-eval-every``
steps, stopped after ``--teacher-patience`` validations without a lower validation loss (or at ``--teacher-steps``),
the best checkpoint kept (its learning-rate schedule spans ``--teacher-steps``). Every student is distilled from it
(integrated KD; the teacher's logits cached once, or the teacher live for the students that also learn its hidden
states) for the same number of steps, batch and seed. Width-pruned students keep the teacher's most
important heads, FFN neurons and hidden channels (``objectives.students._pruning``).

    python bench/compression.py [--steps 300] [--rows N] [--teacher-steps 3000] [--teacher-eval-every 50]
                                [--teacher-patience 3] [--rounds 5] [--seeds 3]
    python bench/compression.py --rows 64 --steps 2 --seeds 1 --rounds 1 --teacher-steps 6 --teacher-eval-every 2 \
        --teacher-patience 1     # a smoke run of the whole path (minutes; its figures mean nothing)
    python bench/compression.py --latency-only 3     # how much the latency ratios move between passes

Prints accuracy, p50 latency (batch 1, one thread), params and size of each model, the most accurate student at no
more than a third of the teacher's latency with its share of the teacher's accuracy, and each width-pruned student
against the layer-dropped student nearest to it in latency. Latencies are measured after all training, in
``--rounds`` interleaved rounds over every model (the median of each model's per-round p50): a burst of load on the
machine then touches every model alike instead of whichever was being measured.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from hpo import load_config
from hpo.execution import LogitCache, usable_cores
from objectives import (
    StudentArgs,
    build_student,
    distill_student,
    finetune_teacher,
    load_classifier,
    load_teacher,
    prepare_workload,
)
from objectives.evaluation import COST_THREADS, latency_ms
from objectives.tasks._classification import Workload, latency_input
from storage import ArtifactDir, Leases

WIDTHS = {"hidden_ratio": 0.5, "ffn_ratio": 0.5, "heads_ratio": 0.5}
KEEP_HIDDEN = {"ffn_ratio": 0.5, "heads_ratio": 0.5}
LAYER_KD = {"hidden_weight": 1.0}
STUDENTS: dict[str, tuple[StudentArgs, dict]] = {
    "depth 1": (StudentArgs(num_layers=1), {}),
    "depth 2": (StudentArgs(num_layers=2), {}),
    "depth 3": (StudentArgs(num_layers=3), {}),
    "depth 2, widths 0.5": (StudentArgs(num_layers=2, **WIDTHS), {}),
    "depth 3, widths 0.5": (StudentArgs(num_layers=3, **WIDTHS), {}),
    "depth 4, widths 0.5": (StudentArgs(num_layers=4, **WIDTHS), {}),
    "depth 3, widths 0.5, hidden-state KD": (StudentArgs(num_layers=3, **WIDTHS), LAYER_KD),
    "depth 3, ffn 0.5 heads 0.5": (StudentArgs(num_layers=3, **KEEP_HIDDEN), {}),
    "depth 4, ffn 0.5 heads 0.5": (StudentArgs(num_layers=4, **KEEP_HIDDEN), {}),
    "depth 4, ffn 0.5 heads 0.5, hidden-state KD": (StudentArgs(num_layers=4, **KEEP_HIDDEN), LAYER_KD),
    "depth 3, hidden 0.75 ffn 0.5 heads 0.5, importance layers": (
        StudentArgs(num_layers=3, hidden_ratio=0.75, layer_selection="importance", **KEEP_HIDDEN),
        {},
    ),
}
"""Students by name: their architecture and what their distillation changes from the quickstart's (a layer term:
those run the teacher live, its hidden states are not cached)."""


TEACHER = "teacher (6 layers)"


def interleaved_latency(models: dict[str, torch.nn.Module], one: dict[str, torch.Tensor], rounds: int) -> dict:
    """Each model's batch-1 p50 latency (ms, one thread): the median over ``rounds`` rounds, every round measuring
    every model once in turn."""
    threads = torch.get_num_threads()
    torch.set_num_threads(COST_THREADS)
    try:
        runs: dict[str, list[float]] = {name: [] for name in models}
        for _ in range(rounds):
            for name, model in models.items():
                runs[name].append(latency_ms(model, one)[0])
    finally:
        torch.set_num_threads(threads)
    return {name: statistics.median(values) for name, values in runs.items()}


def latency_spread(work: Workload, teacher_name: str, passes: int, rounds: int) -> None:
    """Each student's latency as a share of the teacher's, in ``passes`` separate interleaved measurements: how
    much the ratios move between runs on this machine (latency depends on the architecture, not the weights)."""
    teacher = load_classifier(teacher_name, work.num_labels).eval()
    models = {
        TEACHER: teacher,
        **{k: build_student(teacher, s, calibration=work.train) for k, (s, _) in STUDENTS.items()},
    }
    one = latency_input(work, torch.device("cpu"))
    ratios: dict[str, list[float]] = {name: [] for name in STUDENTS}
    for _ in range(passes):
        p50 = interleaved_latency(models, one, rounds)
        for name in STUDENTS:
            ratios[name].append(p50[name] / p50[TEACHER])
        print(f"pass: teacher {p50[TEACHER]:.2f} ms", flush=True)
    print(f"\n{'student':58} latency / teacher's, {passes} passes of {rounds} interleaved rounds")
    for name, values in ratios.items():
        print(f"{name:58} {'  '.join(f'{v:.2f}' for v in values)}   (min {min(values):.2f}, max {max(values):.2f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=300, help="training steps of every student")
    parser.add_argument("--rows", type=int, help="training rows, the teacher's and the students' (default: all)")
    parser.add_argument("--teacher-steps", type=int, default=3000, help="teacher fine-tuning steps at most (3000)")
    parser.add_argument("--teacher-eval-every", type=int, default=50, help="teacher validation every N steps (50)")
    parser.add_argument(
        "--teacher-patience", type=int, default=3, help="teacher early stopping: validations without improvement (3)"
    )
    parser.add_argument("--rounds", type=int, default=5, help="interleaved latency rounds over all models")
    parser.add_argument("--seeds", type=int, default=3, help="training seeds of every student")
    parser.add_argument(
        "--latency-only",
        type=int,
        metavar="PASSES",
        help="train nothing: time the architectures (untrained, built from the pretrained teacher) in PASSES "
        "separate passes of --rounds rounds and print each student's latency / teacher latency per pass",
    )
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(usable_cores())
    config = load_config(Path(__file__).parents[1] / "examples" / "quickstart.yaml")
    data = config.data if args.rows is None else replace(config.data, max_train_rows=args.rows)
    work = prepare_workload(data, config.teacher.model)
    if args.latency_only:
        latency_spread(work, config.teacher.model, args.latency_only, args.rounds)
        return
    tmp = Path(tempfile.mkdtemp(prefix="hpo-compression-"))
    start = time.perf_counter()
    converge = {
        "max_steps": args.teacher_steps,
        "eval_every": args.teacher_eval_every,
        "patience": args.teacher_patience,
    }
    teacher_args = replace(config.teacher, train=replace(config.teacher.train, **converge))
    rows = {TEACHER: finetune_teacher(work, teacher_args, config.seed, tmp / "teacher")}
    ran = int(rows[TEACHER]["steps"])
    ending = "stopped early" if ran < args.teacher_steps else "step budget reached: raise --teacher-steps"
    print(
        f"teacher fine-tuned in {time.perf_counter() - start:.0f} s: {ran} steps ({ending}), best checkpoint "
        f"validation accuracy {rows[TEACHER]['accuracy']:.3f}",
        flush=True,
    )
    models = {TEACHER: load_teacher(tmp / "teacher", work)}
    cache = LogitCache(ArtifactDir(tmp, "bench"), tmp / "teacher", Leases(f"sqlite:///{tmp}/leases.db"))
    train = replace(config.train, max_steps=args.steps, eval_every=args.steps, patience=None)
    accuracies: dict[str, list[float]] = {TEACHER: [rows[TEACHER]["accuracy"]]}
    for seed in range(args.seeds):
        for name, (student, changes) in STUDENTS.items():
            start = time.perf_counter()
            distill = replace(config.distill, **changes)
            logits = None if distill.needs_teacher_states else cache
            model, metrics = distill_student(work, tmp / "teacher", student, train, distill, seed, logits=logits)
            if seed == 0:  # one model per architecture for the latency rounds; every seed's accuracy
                models[name], rows[name] = model, metrics
            accuracies.setdefault(name, []).append(metrics["accuracy"])
            print(f"seed {seed}, {name}: {metrics['accuracy']:.3f}, {time.perf_counter() - start:.0f} s", flush=True)
    print(f"measuring latency: {args.rounds} interleaved rounds over {len(models)} models", flush=True)
    one = latency_input(work, next(models[TEACHER].parameters()).device)
    for name, p50 in interleaved_latency(models, one, args.rounds).items():
        rows[name]["latency_ms"] = p50
    mean = {k: statistics.mean(v) for k, v in accuracies.items()}
    sd = {k: statistics.stdev(v) if len(v) > 1 else 0.0 for k, v in accuracies.items()}

    n = len(work.validation)
    print(
        f"\n{len(work.train)} training rows, {n} validation rows, students {args.steps} steps of batch "
        f"{train.batch_size}, seeds 0..{args.seeds - 1} (accuracy: mean +- sd over seeds; the teacher: one run); "
        f"latency batch 1, {COST_THREADS} thread, median of {args.rounds} interleaved rounds; "
        f"{torch.get_num_threads()} training threads"
    )
    print(f"{'model':58} {'accuracy':>14} {'p50 ms':>7} {'params':>11} {'MB':>6}")
    for name, m in rows.items():
        accuracy = f"{mean[name]:.3f} +- {sd[name]:.3f}"
        print(f"{name:58} {accuracy:>14} {m['latency_ms']:7.2f} {int(m['params']):11,d} {m['size_mb']:6.1f}")
    t, p = rows[TEACHER], mean[TEACHER]
    print(f"standard error of one accuracy on {n} rows: {math.sqrt(p * (1 - p) / n):.3f}")
    fast = [k for k in STUDENTS if rows[k]["latency_ms"] <= t["latency_ms"] / 3]
    if fast:
        best = max(fast, key=mean.__getitem__)
        b = rows[best]
        print(
            f"best student at <= 1/3 of the teacher's latency: {best}: accuracy {mean[best]:.3f} = "
            f"{100 * mean[best] / p:.1f}% of the teacher's, latency {b['latency_ms'] / t['latency_ms']:.2f}x, "
            f"params {b['params'] / t['params']:.2f}x"
        )
    else:
        print("no student at <= 1/3 of the teacher's latency")
    # Within noise: the difference of two seed means is under twice its standard error (from the seeds' spread).
    depth_only = [k for k, (s, changes) in STUDENTS.items() if not s.narrower and not changes]
    for name, (student, _) in STUDENTS.items():
        if not student.narrower:
            continue
        latency = rows[name]["latency_ms"]
        near = min(depth_only, key=lambda k: abs(math.log(rows[k]["latency_ms"] / latency)))
        diff = mean[name] - mean[near]
        noise = 2 * math.sqrt((sd[name] ** 2 + sd[near] ** 2) / args.seeds)
        verdict = "within noise" if abs(diff) <= noise else ("better" if diff > 0 else "worse")
        print(
            f"{name}: {diff:+.3f} accuracy against {near} ({verdict}, 2 SE {noise:.3f}), at "
            f"{latency / rows[near]['latency_ms']:.2f}x its latency"
        )


if __name__ == "__main__":
    main()
