"""``hpo train``: full training of an exported job, with the benchmark a model card needs.

Trains the chosen student (distilled, or fine-tuned for a ``finetune`` study) and, for distillation, the same
student without the teacher: the same architecture from the same initial weights (the fine-tuned teacher's layers),
the same steps, schedule and data, cross-entropy on the task's own targets alone with no teacher loaded (no KD,
hidden-state or attention term), plus the student fine-tuned from the pretrained base
model. With ``seeds`` > 1 each is trained once per seed on the same data and reported as mean and standard
deviation. Everything is evaluated on the held-out test split, which no trial of the study ever read; writes a
Hugging Face model directory, ``metrics.json`` and a model card ``README.md``.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import statistics
from pathlib import Path
from typing import Any

import torch

from hpo.execution import resolve_device, usable_cores
from hpo.study import TrainJob, dump_job, open_store, store_error, teacher_warning
from hpo.views import PER_CLASS_HEADER, format_cell, per_class_rows, render
from objectives import HIGHER_IS_BETTER, ConfigError, Report, cost_hardware

log = logging.getLogger("hpo")


def _progress(label: str, total: int) -> Report:
    def report(step: int, scores: dict[str, float], final: bool) -> None:
        shown = ", ".join(f"{name} {value:.4f}" for name, value in scores.items() if name != "val_loss")
        log.info("%s: step %d/%d, validation %s", label, step, total, shown)

    return report


NO_TEACHER = "student without teacher"
"""The distilled student's architecture and initial weights, trained with the same steps, schedule, data and seed
on cross-entropy alone, no teacher loaded."""

FROM_BASE = "student from the pretrained base"
"""The same architecture initialised from the pretrained (not fine-tuned) base model, trained on the labels."""

_T95 = (
    *(12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228),
    *(2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086),
    *(2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042),
)
"""Two-sided 95% quantiles of Student's t for 1..30 degrees of freedom (1.96, the normal's, beyond: under 2.1% off)."""


def interval95(values: list[float]) -> tuple[float, float]:
    """(mean, half-width) of the 95% t interval of the mean of ``values`` (half-width nan for one value)."""
    mean = statistics.mean(values)
    if len(values) < 2:
        return mean, math.nan
    t = _T95[len(values) - 2] if len(values) - 1 <= len(_T95) else 1.96
    return mean, t * statistics.stdev(values) / math.sqrt(len(values))


def distillation_gain(by_seed: dict[str, list[dict[str, float]]], student: str, metric: str = "accuracy") -> str:
    """What distillation is worth in words: the paired per-seed difference in ``metric`` between the distilled
    student and the no-teacher student (accuracy in points, i.e. x100; perplexity as it is); a gain or loss is named
    only where its 95% interval excludes zero."""
    scale, unit = (100, f"{metric} points") if metric in ("accuracy", "f1", "token_accuracy") else (1, metric)
    d = 1 if scale == 100 else 2  # decimals: points of accuracy, or a perplexity
    pairs = zip(by_seed[student], by_seed[NO_TEACHER], strict=True)
    diffs = [scale * (s[metric] - b[metric]) for s, b in pairs]
    mean, half = interval95(diffs)
    same = "the same student from the same initial weights trained without the teacher (cross-entropy only)"
    if len(diffs) == 1:
        return (
            f"On one seed the {student} scores {mean:+.{d}f} {unit} against {same}; one seed gives no "
            "estimate of seed noise (`hpo train --seeds 3` does)."
        )
    where = f"mean over {len(diffs)} seeds, 95% interval {mean - half:+.{d}f} to {mean + half:+.{d}f}"
    if mean - half > 0 or mean + half < 0:
        better = (mean > 0) == (metric in HIGHER_IS_BETTER)
        word = "worth" if better else "costs"
        return f"Distillation is {word} {abs(mean):.{d}f} {unit} against {same} ({where})."
    return f"The {student} and {same} differ by {mean:+.{d}f} {unit}, within seed noise ({where})."


def tradeoff(rows: dict[str, dict[str, float]], student: str, metric: str = "accuracy") -> str:
    """The trade-off in words: the student's quality against the teacher's (share kept of a score; a perplexity
    ratio), speed-up and size reduction."""
    t, s = rows["teacher"], rows[student]
    if metric in HIGHER_IS_BETTER:
        quality = f"keeps {100 * s[metric] / t[metric]:.1f}% of the teacher's test {metric}"
    else:
        quality = f"has {s[metric] / t[metric]:.2f}x the teacher's test {metric}"
    return (
        f"The {student} {quality} ({s[metric]:.4f} vs {t[metric]:.4f}) at {t['latency_ms'] / s['latency_ms']:.2f}x its speed "
        f"(p50 latency {s['latency_ms']:.2f} ms vs {t['latency_ms']:.2f} ms) and {100 * s['size_mb'] / t['size_mb']:.0f}% "
        f"of its size ({s['size_mb']:.1f} MB vs {t['size_mb']:.1f} MB, {100 * (1 - s['size_mb'] / t['size_mb']):.0f}% smaller)."
    )


def _card_cell(metric: str, values: list[float], spread: tuple[str, ...]) -> str:
    """A table cell: the value, or mean ± standard deviation over seeds for the ``spread`` metrics (quality)."""
    if len(values) > 1 and metric in spread:
        return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"
    return format_cell(metric, statistics.mean(values))


def model_card(
    job: TrainJob,
    by_seed: dict[str, list[dict[str, Any]]],
    student: str,
    n_test: int,
    teacher_note: str | None,
    label_names: list[str],
    narrow_heads: bool = False,
) -> str:
    """The model card (README.md) of the trained student; ``by_seed`` holds each model's test metrics per seed
    (with ``per_class`` scores of a classifier, ``samples`` of a language model's greedy continuations).
    ``narrow_heads``: the student keeps its teacher's head size at another hidden size (width pruning), which
    plain ``from_pretrained`` cannot rebuild, so the card says how to load it."""
    spec = job.task_spec
    columns, quality = spec.card_metrics, spec.quality
    rows = {name: {m: statistics.mean(r[m] for r in runs) for m in columns} for name, runs in by_seed.items()}
    spread_of = spec.validation_metrics[:2]
    table = render(
        ["model", *columns],
        [[name, *(_card_cell(m, [r[m] for r in runs], spread_of) for m in columns)] for name, runs in by_seed.items()],
    )
    seeds = len(by_seed[student])
    spread = (
        f" {' and '.join(spread_of)}: mean ± standard deviation over {seeds} seeds (same data)." if seeds > 1 else ""
    )
    summary = tradeoff(rows, student, quality)
    if job.student.quantize != "none":
        summary += " " + quantization_note(rows, student, job.student.quantize, quality)
    if NO_TEACHER in by_seed:
        summary += (
            f" {distillation_gain(by_seed, student, quality)}\n\nRows: *{NO_TEACHER}* is the {student}'s architecture"
            " from its initial weights (the teacher's kept layers), trained with the same steps, schedule, data and"
            " seed on cross-entropy alone: no teacher, so no KD, hidden-state or attention term."
        )
    if FROM_BASE in by_seed:
        summary += (
            f" *{FROM_BASE}* is the same architecture from the pretrained, not fine-tuned, base model, trained on the"
            " task's own targets the same way."
        )
    warning = f"\n**Warning:** {teacher_note}\n" if teacher_note else ""
    first_seed = f" (seed {job.seed})" if seeds > 1 else ""
    details = ""
    if "per_class" in by_seed[student][0]:
        classes = render(
            PER_CLASS_HEADER, per_class_rows({name: runs[0]["per_class"] for name, runs in by_seed.items()})
        )
        labels = ", ".join(f"{i} = `{name}`" for i, name in enumerate(label_names))
        details = (
            f"Each class on the test split{first_seed} (precision, recall, F1; support: its rows; predicted: rows "
            f"predicted as it):\n\n```\n{classes}\n```\n\nLabels (`id2label` of the model): {labels}."
        )
    if "samples" in by_seed[student][0]:
        shown = []
        for name, runs in by_seed.items():
            shown += [f"- {name}: `{prompt}` → `{text}`" for prompt, text in runs[0]["samples"]]
        details = f"Greedy continuations of fixed prompts{first_seed}:\n\n" + "\n".join(shown)
    if narrow_heads:
        details += (
            "\n\nLoad it with `objectives.load_classifier(DIR, num_labels)`: its attention keeps the teacher's head "
            "size at a pruned hidden size (`attention_head_size` in `config.json`), which plain `from_pretrained` "
            "cannot rebuild."
        )
    src = job.source
    source = f"trial {src.trial} of study `{src.study}`" if src.study else "a hand-written job"
    params = "\n".join(f"- `{k}`: {v}" for k, v in src.params.items()) or "- (none)"
    device = resolve_device(job.device)
    depth = job.student.num_layers or len(job.student.layers or []) or "full-depth"
    approach = f", {job.distill.approach}" if job.objective == "distill" else ""
    return f"""---
library_name: transformers
pipeline_tag: {spec.pipeline_tag}
tags: [distill-hpo, knowledge-distillation]
---

# {job.name}

A {depth}-layer student of `{job.teacher.model}` for `{job.data.name}`, trained by distill-hpo
({job.objective}{approach}) with the settings of {source}.

## Benchmark

Held-out test split: {n_test:,} {spec.unit}, never read during the hyperparameter search. {spec.cost_note}
Measured on {device.type} ({cost_hardware(device)}).{spread}
{warning}
```
{table}
```

{summary}

{details}

## Training

Searched parameters of the source trial:
{params}

Full training: {job.train.max_steps} steps at most, batch {job.train.batch_size}, lr {job.train.lr:g}, early stopping
after {job.train.patience} validations without a lower validation loss, best checkpoint kept. The exact job is in
`metrics.json` (`job`); `hpo train` on it reproduces this directory.
"""


def warn_short_training(job: TrainJob) -> bool:
    """Warn (and return True) when the full training's step budget is below the steps its source trial ran: its
    scores would not carry over from the trial that picked it."""
    trial_steps = job.source.metrics.get("steps")
    if trial_steps is None or job.train.max_steps >= trial_steps:
        return False
    log.warning(
        "full training of %d steps is shorter than the %d steps of trial %s it comes from; export with "
        "--steps-factor >= 1 for a training at least as long as the trial",
        job.train.max_steps,
        trial_steps,
        job.source.trial,
    )
    return True


def trained_models(job: TrainJob) -> list[str]:
    """The models ``hpo train`` trains per seed, in order: the fine-tuned student alone, or the distilled student,
    the :data:`NO_TEACHER` baseline and the :data:`FROM_BASE` one where it starts elsewhere: not with a teacher used
    as it is (``teacher.train.max_steps: 0``: the teacher is the base model) nor with a ``student.model`` of its own
    (the baseline already starts from that pretrained model), where it would repeat the baseline."""
    if job.objective != "distill":
        return ["fine-tuned student"]
    from_base = job.teacher.train.max_steps > 0 and job.student.model is None
    return ["distilled student", NO_TEACHER, *([FROM_BASE] if from_base else [])]


def quantized_name(student: str, quantize: str) -> str:
    """The model card's row of ``student`` quantized with ``quantize``."""
    return f"{student}, {quantize}"


def _quantized_row(job: TrainJob, name: str, model: torch.nn.Module, work: Any) -> dict[str, dict[str, Any]]:
    """Test metrics of a quantized copy of ``model`` under its :func:`quantized_name` (none without
    ``student.quantize``)."""
    quantize = job.student.quantize
    if quantize == "none":
        return {}
    return {quantized_name(name, quantize): job.task_spec.implementation().heldout_metrics(model, work, quantize)}


def quantization_note(rows: dict[str, dict[str, float]], student: str, quantize: str, metric: str) -> str:
    """The quantized student against its fp32 weights in words, and how to load it quantized."""
    fp32, q = rows[student], rows[quantized_name(student, quantize)]
    return (
        f"Quantized to {quantize} (post-training, weight-only, torchao; `student.quantize: {quantize}`), the {student} "
        f"scores {q[metric]:.4f} {metric} against {fp32[metric]:.4f} in fp32, at {fp32['latency_ms'] / q['latency_ms']:.2f}x "
        f"the fp32 speed and {q['size_mb']:.1f} MB saved against {fp32['size_mb']:.1f} MB. This directory holds the fp32 "
        f"weights; load it quantized with `objectives.students.quantize(model, '{quantize}')` after "
        "`from_pretrained` (it quantizes every linear layer but a tied output head in place, as measured here)."
    )


def _train_models(
    job: TrainJob, work: Any, teacher_dir: Path, seed: int
) -> tuple[torch.nn.Module, dict[str, float], dict[str, dict[str, float]]]:
    """One seed's models: (the chosen student, its validation metrics, test metrics of every model trained)."""
    task = job.task_spec.implementation()
    steps = job.train.max_steps
    if job.objective != "distill":
        name = "fine-tuned student"
        model, validation = task.finetune_student(
            work, job.teacher.model, job.student, job.train, seed, _progress(f"{name}, seed {seed}", steps)
        )
        return model, validation, {name: task.heldout_metrics(model, work), **_quantized_row(job, name, model, work)}
    name = "distilled student"
    start = task.initial_student(work, teacher_dir, job.student, job.train, seed)
    untaught = copy.deepcopy(start)  # the same initial weights, kept before the distilled student trains
    report = _progress(f"{name}, seed {seed}", steps)
    model, validation = task.distill_student(
        work, teacher_dir, job.student, job.train, job.distill, seed, report, init=start
    )
    rows = {name: task.heldout_metrics(model, work), **_quantized_row(job, name, model, work)}
    # Cross-entropy on the task's own targets only: no teacher is loaded or run (no KD, hidden or attention term).
    report = _progress(f"{NO_TEACHER}, seed {seed}", steps)
    baseline, _ = task.finetune_student(work, job.teacher.model, job.student, job.train, seed, report, init=untaught)
    rows[NO_TEACHER] = task.heldout_metrics(baseline, work)
    if FROM_BASE in trained_models(job):  # else this row would be the one above
        base, _ = task.finetune_student(
            work, job.teacher.model, job.student, job.train, seed, _progress(f"{FROM_BASE}, seed {seed}", steps)
        )
        rows[FROM_BASE] = task.heldout_metrics(base, work)
    return model, validation, rows


def store_teacher(job: TrainJob, artifacts: str | None = None) -> Path:
    """The study's teacher named by ``job`` (``teacher_entry`` in ``artifacts_dir``, or in ``artifacts``: the same
    store under this machine's path), as a local folder: downloaded into this node's cache from a remote store.
    Raises ConfigError naming ``artifacts_dir`` and ``--artifacts`` when it cannot be reached."""
    fix = "reach the study's store with hpo train --artifacts PATH (or HPO_ARTIFACTS_DIR)"
    store = open_store(artifacts or job.artifacts_dir, job.source.study, job.artifacts_options)
    try:
        path = store.fetch(job.teacher_entry)
    except FileNotFoundError:
        raise ConfigError(
            "artifacts_dir",
            f"the study's teacher {job.teacher_entry} is not in {store.location}; {fix}, or remove artifacts_dir and "
            "teacher_entry from the job to fine-tune a new teacher",
        ) from None
    except Exception as exc:
        raise ConfigError("artifacts_dir", f"cannot reach {store.location} ({store_error(exc)}); {fix}") from None
    log.info("teacher %s from the study's store %s (%s)", job.teacher_entry, store.location, path)
    return path


def train_job(
    job: TrainJob,
    out: Path,
    threads: int | None = None,
    seeds: int = 1,
    artifacts: str | None = None,
    adapter_only: bool = False,
) -> dict[str, Any]:
    """Run ``job`` and write the model directory ``out``; returns what ``metrics.json`` holds. A job exported from
    a study distils from the study's teacher in its store (at ``artifacts`` when given: :func:`store_teacher`).
    A student with a LoRA adapter (``student.adapter``) is written merged into its weights; ``adapter_only``: the
    student's weights before training and the adapter alone in ``out/adapter``.

    With ``seeds`` > 1 the students are trained with seeds ``job.seed``, ``job.seed + 1``, ...; the saved model is
    the first seed's; ``test`` holds the means over seeds and ``test_by_seed`` every run."""
    threads = threads or usable_cores()
    torch.set_num_threads(threads)
    warn_short_training(job)
    device = resolve_device(job.device)
    task = job.task_spec.implementation()
    teacher_dir = store_teacher(job, artifacts) if job.teacher_entry else None
    work = task.prepare_workload(job.data, job.teacher.model, device)
    out.mkdir(parents=True, exist_ok=True)
    if teacher_dir is None and job.teacher_path and Path(job.teacher_path).is_dir():
        teacher_dir = Path(job.teacher_path)
    if teacher_dir is None:
        teacher_dir = out / "teacher"
        log.info("fine-tuning the teacher into %s (%d steps)", teacher_dir, job.teacher.train.max_steps)
        task.finetune_teacher(work, job.teacher, job.seed, teacher_dir)
    teacher = task.heldout_metrics(task.load_teacher(teacher_dir, work), work)
    teacher_note = teacher_warning(teacher)
    if teacher_note:
        log.warning("%s", teacher_note)
    by_seed: dict[str, list[dict[str, Any]]] = {"teacher": [teacher]}
    for i in range(seeds):
        trained, valid, rows = _train_models(job, work, teacher_dir, job.seed + i)
        if i == 0:
            model, validation = trained, valid
        for name, metrics in rows.items():
            by_seed.setdefault(name, []).append(metrics)
    name = next(n for n in by_seed if n != "teacher")
    task.save_model(model, work, out, adapter_only)
    # Means of the numbers; per-class scores and samples (not numbers) are kept per seed in ``test_by_seed``.
    means = {
        n: {m: statistics.mean(r[m] for r in runs) for m, v in runs[0].items() if isinstance(v, int | float)}
        for n, runs in by_seed.items()
    }
    result = {
        "job": dataclasses.asdict(job),
        "validation": validation,
        "test": means,
        "test_by_seed": by_seed,
        "seeds": [job.seed + i for i in range(seeds)],
        "student": name,
    }
    (out / "metrics.json").write_text(json.dumps(result, indent=2))
    (out / "README.md").write_text(
        model_card(
            job,
            by_seed,
            name,
            work.n_test,
            teacher_note,
            getattr(work, "label_names", []),
            narrow_heads=hasattr(model.config, "attention_head_size"),
        )
    )
    (out / "job.yaml").write_text(dump_job(job))
    return result
