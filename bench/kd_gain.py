"""What distillation from a bigger teacher is worth: SmolLM2-135M fine-tuned as a classifier, distilled into a
MiniLM student of another architecture and tokenizer, against the same student trained without it.

Per data set (``rt-snippets``, ``sms-spam``): the teacher (``teacher.model: smollm2-135m``, a sequence classifier
with a new head) is fine-tuned once; MiniLM-L6 is fine-tuned once on the same rows, steps and batch, to say whether
the bigger teacher is the better one. Then per seed the student (``student.model: minilm-l6`` cut to ``--layers``
layers, a new head) is built once (``initial_student``) and trained twice from those same weights, for the same
steps, schedule, data and seed, as ``hpo train`` trains its baseline: distilled (integrated KD, the teacher's
logits over its own tokens of each example cached once), and on the labels alone with no teacher
(``finetune_student(init=...)``). Every model is scored on the held-out test split (``heldout_metrics``).

With ``--transfer-rows N`` the distilled student also reads N more training texts without their labels (the rows
after the first ``--rows`` of the training split), as a user with few labels and more in-domain text would:
sequential distillation (``distill.approach: sequential``), KD alone on the labelled and unlabelled texts for
``--transfer-ratio`` of the steps, then cross-entropy on the labelled rows. The student without teacher, which
cannot use unlabelled text, trains the same steps on the labelled rows.

    python bench/kd_gain.py [--data rt-snippets sms-spam] [--seeds 3] [--rows 1200] [--teacher-steps 80]
                            [--steps 120] [--layers 3] [--transfer-rows 0] [--json out.json]
    python bench/kd_gain.py --data sms-spam --seeds 2 --rows 96 --teacher-steps 2 --steps 2 --val-rows 32
                            # a smoke run of the whole path (minutes; its figures mean nothing)

Prints, per data set, accuracy and macro-F1 (mean +- sd over seeds; the teacher and MiniLM-L6: one run), the paired
distilled - no-teacher difference with its 95% t interval (``hpo._training.interval95``), "within noise" where the
interval holds zero, and each model's batch-1 p50 latency (one thread) with the student's share of the teacher's.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from hpo._training import interval95
from hpo.execution import LogitCache, usable_cores
from objectives import (
    DataArgs,
    DistillArgs,
    StudentArgs,
    TeacherArgs,
    TrainArgs,
    distill_student,
    finetune_student,
    finetune_teacher,
    heldout_metrics,
    load_teacher,
    open_data,
    prepare_workload,
)
from objectives.tasks._classification import initial_student
from storage import ArtifactDir, Leases

TEACHER = "smollm2-135m"
REFERENCE = "minilm-l6"
DISTILLED = "distilled student"
NO_TEACHER = "student without teacher"


def _fine_tuned(data: DataArgs, model: str, train: TrainArgs, out: Path) -> tuple[dict[str, Any], float]:
    """``model`` fine-tuned on ``data`` as the study's teacher is (seed 0): its test metrics and the seconds taken."""
    start = time.perf_counter()
    work = prepare_workload(data, model)
    finetune_teacher(work, TeacherArgs(model=model, train=train), 0, out)
    return heldout_metrics(load_teacher(out, work), work), time.perf_counter() - start


def run_data_set(name: str, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """Every model of one data set: the teacher's and MiniLM-L6's test metrics, and the students' per seed."""
    data = DataArgs(name=name, max_length=64, max_train_rows=args.rows, max_val_rows=args.val_rows)
    teacher_train = TrainArgs(lr=args.teacher_lr, max_steps=args.teacher_steps, batch_size=16, eval_every=10**6)
    teacher_dir = tmp / name / "teacher"
    rows: dict[str, list[dict[str, Any]]] = {}
    teacher, seconds = _fine_tuned(data, TEACHER, teacher_train, teacher_dir)
    rows["teacher (SmolLM2-135M)"] = [teacher]
    print(f"{name}: teacher fine-tuned and scored in {seconds:.0f} s, test accuracy {teacher['accuracy']:.3f}")
    reference, seconds = _fine_tuned(data, REFERENCE, teacher_train, tmp / name / "minilm")
    rows["MiniLM-L6 fine-tuned"] = [reference]
    print(f"{name}: MiniLM-L6 fine-tuned and scored in {seconds:.0f} s, test accuracy {reference['accuracy']:.3f}")
    work = prepare_workload(data, TEACHER)
    cache = LogitCache(ArtifactDir(tmp / name, "bench"), teacher_dir, Leases(f"sqlite:///{tmp / name}/leases.db"))
    student = StudentArgs(model=REFERENCE, num_layers=args.layers)
    train = TrainArgs(lr=args.lr, max_steps=args.steps, batch_size=32, eval_every=args.steps)
    distill = DistillArgs(temperature=args.temperature, alpha=args.alpha)
    if args.transfer_rows:  # the training split's next rows, their labels dropped
        more = open_data(replace(data, max_train_rows=args.rows + args.transfer_rows)).train().texts[args.rows :]
        unlabelled = tmp / name / "unlabelled.jsonl"
        unlabelled.write_text("".join(json.dumps({"text": text}) + "\n" for text in more))
        distill = replace(
            distill, approach="sequential", transfer_files=[str(unlabelled)], transfer_ratio=args.transfer_ratio
        )
        print(f"{name}: {len(more)} more training texts without labels for the distilled student", flush=True)
    for seed in range(args.seeds):
        start = time.perf_counter()
        first = initial_student(work, teacher_dir, student, train, seed)
        untaught = copy.deepcopy(first)  # the same initial weights for the run without the teacher
        model, _ = distill_student(work, teacher_dir, student, train, distill, seed, logits=cache, init=first)
        rows.setdefault(DISTILLED, []).append(heldout_metrics(model, work))
        baseline, _ = finetune_student(work, TEACHER, student, train, seed, init=untaught)
        rows.setdefault(NO_TEACHER, []).append(heldout_metrics(baseline, work))
        accuracies = ", ".join(f"{k} {v[-1]['accuracy']:.3f}" for k, v in rows.items() if len(v) > seed)
        print(f"{name}, seed {seed}: {accuracies} ({time.perf_counter() - start:.0f} s)", flush=True)
    return {"rows": rows, "n_train": len(work.train), "n_test": work.n_test}


def _cell(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def _gain(rows: dict[str, list[dict[str, Any]]], metric: str) -> str:
    """The paired distilled - no-teacher difference in points: mean and 95% t interval, "within noise" when it
    holds zero."""
    diffs = [100 * (d[metric] - b[metric]) for d, b in zip(rows[DISTILLED], rows[NO_TEACHER], strict=True)]
    mean, half = interval95(diffs)
    if half != half:  # one seed: no interval
        return f"{mean:+.1f} (one seed)"
    noise = ", within noise" if mean - half <= 0 <= mean + half else ""
    return f"{mean:+.1f} [{mean - half:+.1f}, {mean + half:+.1f}]{noise}"


def table(name: str, result: dict[str, Any]) -> str:
    """The markdown table of one data set."""
    rows = result["rows"]
    teacher_ms = rows["teacher (SmolLM2-135M)"][0]["latency_ms"]
    teacher_accuracy = rows["teacher (SmolLM2-135M)"][0]["accuracy"]
    lines = [
        f"{name} ({result['n_train']} training rows, {result['n_test']} test rows)",
        "",
        "| model | accuracy | macro-F1 | share of teacher accuracy | p50 ms | latency vs teacher | params |",
        "|---|---|---|---|---|---|---|",
    ]
    for model, runs in rows.items():
        accuracy = [r["accuracy"] for r in runs]
        ms = statistics.median(r["latency_ms"] for r in runs)
        lines.append(
            f"| {model} | {_cell(accuracy)} | {_cell([r['f1'] for r in runs])} | "
            f"{100 * statistics.mean(accuracy) / teacher_accuracy:.1f}% | {ms:.2f} | {ms / teacher_ms:.2f}x | "
            f"{runs[0]['params'] / 1e6:.1f}M |"
        )
    lines += [
        "",
        f"distilled - no teacher, points (mean, paired 95% t interval over {len(rows[DISTILLED])} seeds): "
        f"accuracy {_gain(rows, 'accuracy')}; macro-F1 {_gain(rows, 'f1')}",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", nargs="+", default=["rt-snippets", "sms-spam"])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--rows", type=int, default=1200, help="training rows (data.max_train_rows)")
    parser.add_argument("--val-rows", type=int, default=200, help="validation rows (data.max_val_rows)")
    parser.add_argument("--teacher-steps", type=int, default=80, help="steps of batch 16 for both teachers")
    parser.add_argument("--teacher-lr", type=float, default=5e-5)
    parser.add_argument("--steps", type=int, default=120, help="student steps of batch 32, with and without KD")
    parser.add_argument("--lr", type=float, default=1e-4, help="student learning rate")
    parser.add_argument("--layers", type=int, default=3, help="MiniLM layers the student keeps")
    parser.add_argument("--temperature", type=float, default=2.0)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument(
        "--transfer-rows", type=int, default=0, help="unlabelled training texts the distilled student also reads"
    )
    parser.add_argument("--transfer-ratio", type=float, default=0.5, help="share of steps distilling on them")
    parser.add_argument("--json", type=Path, help="also write every model's test metrics per seed here")
    args = parser.parse_args()
    torch.set_num_threads(usable_cores())
    start = time.perf_counter()
    results = {}
    with tempfile.TemporaryDirectory(prefix="hpo-kd-gain-") as tmp:
        for name in args.data:
            results[name] = run_data_set(name, args, Path(tmp))
    kd = f"integrated KD, T {args.temperature} alpha {args.alpha}"
    if args.transfer_rows:
        kd = (
            f"sequential KD, T {args.temperature}: KD alone on the labelled and {args.transfer_rows} unlabelled texts "
            f"for {args.transfer_ratio:.0%} of the steps, then cross-entropy on the labelled rows"
        )
    print(
        f"\nstudents: MiniLM-L6 cut to {args.layers} layers, {args.steps} steps of batch 32 (lr {args.lr}), {kd}; "
        f"teachers {args.teacher_steps} steps of batch 16 (lr "
        f"{args.teacher_lr}); seeds 0..{args.seeds - 1}; latency batch 1, one thread; "
        f"{torch.get_num_threads()} training threads; {time.perf_counter() - start:.0f} s in all; "
        f"load average {os.getloadavg()[0]:.1f}\n"
    )
    for name, result in results.items():
        print(table(name, result) + "\n")
    if args.json:
        per_class = {"per_class"}
        clean = {
            n: {
                m: [{k: v for k, v in r.items() if k not in per_class} for r in runs] for m, runs in res["rows"].items()
            }
            for n, res in results.items()
        }
        args.json.write_text(json.dumps(clean, indent=2))


if __name__ == "__main__":
    main()
