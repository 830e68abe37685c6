"""``hpo train``: full training of an exported job, with the benchmark a model card needs.

Trains the chosen student (distilled, or fine-tuned for a ``finetune`` study) and, for distillation, the same
student fine-tuned without the teacher; evaluates them and the teacher on the held-out test split, which no trial
of the study ever read; writes a Hugging Face model directory, ``metrics.json`` and a model card ``README.md``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch

from hpo._config import TrainJob, dump_job
from hpo._run import resolve_device
from hpo._table import render
from objectives import (
    Report,
    cost_hardware,
    distill_student,
    finetune_student,
    finetune_teacher,
    heldout_metrics,
    load_teacher,
    prepare_workload,
)

log = logging.getLogger("hpo")

CARD_METRICS = ("accuracy", "f1", "latency_ms", "latency_ms_p95", "throughput", "params", "size_mb")


def _progress(label: str, total: int) -> Report:
    def report(step: int, scores: dict[str, float], final: bool) -> None:
        log.info(
            "%s: step %d/%d, validation accuracy %.4f, f1 %.4f", label, step, total, scores["accuracy"], scores["f1"]
        )

    return report


def _cell(metric: str, value: float) -> str:
    if metric == "params":
        return f"{value / 1e6:.1f}M"
    return {"accuracy": f"{value:.4f}", "f1": f"{value:.4f}", "throughput": f"{value:.0f}"}.get(metric, f"{value:.2f}")


def tradeoff(rows: dict[str, dict[str, float]], student: str) -> str:
    """The trade-off in words: retention of the teacher's accuracy, speed-up and size reduction."""
    t, s = rows["teacher"], rows[student]
    text = (
        f"The {student} keeps {100 * s['accuracy'] / t['accuracy']:.1f}% of the teacher's test accuracy "
        f"({s['accuracy']:.4f} vs {t['accuracy']:.4f}) at {t['latency_ms'] / s['latency_ms']:.2f}x its speed "
        f"(p50 latency {s['latency_ms']:.2f} ms vs {t['latency_ms']:.2f} ms) and {100 * s['size_mb'] / t['size_mb']:.0f}% "
        f"of its size ({s['size_mb']:.1f} MB vs {t['size_mb']:.1f} MB, {100 * (1 - s['size_mb'] / t['size_mb']):.0f}% smaller)."
    )
    if "student without teacher" in rows:
        b = rows["student without teacher"]
        delta = 100 * (s["accuracy"] - b["accuracy"])
        text += (
            f" Distillation is worth {delta:+.1f} accuracy points over the same student fine-tuned without the "
            f"teacher ({b['accuracy']:.4f})."
        )
    return text


def model_card(job: TrainJob, rows: dict[str, dict[str, float]], student: str, n_test: int) -> str:
    """The model card (README.md) of the trained student."""
    table = render(
        ["model", *CARD_METRICS],
        [[name, *(_cell(m, r[m]) for m in CARD_METRICS)] for name, r in rows.items()],
    )
    src = job.source
    source = f"trial {src.trial} of study `{src.study}`" if src.study else "a hand-written job"
    params = "\n".join(f"- `{k}`: {v}" for k, v in src.params.items()) or "- (none)"
    device = resolve_device(job.device)
    return f"""---
library_name: transformers
pipeline_tag: text-classification
tags: [distill-hpo, knowledge-distillation]
---

# {job.name}

A {job.student.num_layers or len(job.student.layers or []) or "full-depth"}-layer student of `{job.teacher.model}`
for `{job.data.name}`, trained by distill-hpo ({job.objective}{", " + job.distill.approach if job.objective == "distill" else ""})
with the settings of {source}.

## Benchmark

Held-out test split: {n_test} examples, never read during the hyperparameter search. Latency: batch 1 at the
validation set's mean length, after warm-up, median (p50) and 95th percentile over repeats until the median is
stable; throughput: batch 32. Measured on {device.type} ({cost_hardware(device)}).

```
{table}
```

{tradeoff(rows, student)}

## Training

Searched parameters of the source trial:
{params}

Full training: {job.train.max_steps} steps at most, batch {job.train.batch_size}, lr {job.train.lr:g}, early stopping
after {job.train.patience} validations without a lower validation loss, best checkpoint kept. The exact job is in
`metrics.json` (`job`); `hpo train` on it reproduces this directory.
"""


def train_job(job: TrainJob, out: Path, threads: int | None = None) -> dict[str, Any]:
    """Run ``job`` and write the model directory ``out``; returns what ``metrics.json`` holds."""
    threads = threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    device = resolve_device(job.device)
    work = prepare_workload(job.data, job.teacher.model, device)
    out.mkdir(parents=True, exist_ok=True)
    teacher_dir = Path(job.teacher_path) if job.teacher_path else None
    if teacher_dir is None or not teacher_dir.is_dir():
        teacher_dir = out / "teacher"
        log.info("fine-tuning the teacher into %s (%d steps)", teacher_dir, job.teacher.train.max_steps)
        finetune_teacher(work, job.teacher, job.seed, teacher_dir)
    rows = {"teacher": heldout_metrics(load_teacher(teacher_dir, work.num_labels, device), work)}
    steps = job.train.max_steps
    if job.objective == "distill":
        name = "distilled student"
        model, validation = distill_student(
            work, teacher_dir, job.student, job.train, job.distill, job.seed, _progress(name, steps)
        )
        rows[name] = heldout_metrics(model, work)
        baseline, _ = finetune_student(
            work, job.teacher.model, job.student, job.train, job.seed, _progress("student without teacher", steps)
        )
        rows["student without teacher"] = heldout_metrics(baseline, work)
    else:
        name = "fine-tuned student"
        model, validation = finetune_student(
            work, job.teacher.model, job.student, job.train, job.seed, _progress(name, steps)
        )
        rows[name] = heldout_metrics(model, work)
    labels = work.task.rows.label_names
    model.config.id2label = dict(enumerate(labels))
    model.config.label2id = {label: i for i, label in enumerate(labels)}
    model.save_pretrained(out)
    work.tokenizer.save_pretrained(out)
    result = {"job": dataclasses.asdict(job), "validation": validation, "test": rows, "student": name}
    (out / "metrics.json").write_text(json.dumps(result, indent=2))
    (out / "README.md").write_text(model_card(job, rows, name, len(work.task.test_idx)))
    (out / "job.yaml").write_text(dump_job(job))
    return result
