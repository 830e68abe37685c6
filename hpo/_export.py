"""``hpo export``: choose a trial (best by one metric, or the best feasible Pareto point by a preference) and write
it as a full-training job for ``hpo train``."""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpo.study import TEACHER_ATTR, TIMING_ATTRS, Constraint, SourceArgs, TrainJob, apply_params, dump_job, load_study
from hpo.views import format_cell, format_params, never_predicted_notes, render
from objectives import HIGHER_IS_BETTER, METRICS, ConfigError

EXPORT_ATTR = "export"
"""Study user attribute recording the last export: the trial number, the pick and the output path."""


def _better(metric: str, a: float, b: float) -> bool:
    return a > b if metric in HIGHER_IS_BETTER else a < b


def _key(metric: str, trial: FrozenTrial) -> float:
    value = trial.user_attrs[metric]
    return -value if metric in HIGHER_IS_BETTER else value


def _dominates(a: FrozenTrial, b: FrozenTrial, metrics: list[str]) -> bool:
    av, bv = [a.user_attrs[m] for m in metrics], [b.user_attrs[m] for m in metrics]
    no_worse = all(not _better(m, y, x) for m, x, y in zip(metrics, av, bv, strict=True))
    return no_worse and any(_better(m, x, y) for m, x, y in zip(metrics, av, bv, strict=True))


def pareto_front(trials: list[FrozenTrial], metrics: list[str]) -> list[FrozenTrial]:
    """Trials no other trial dominates on ``metrics``."""
    return [t for t in trials if not any(_dominates(o, t, metrics) for o in trials if o is not t)]


def complete_trials(study: optuna.Study, metrics: tuple[str, ...] = METRICS) -> list[FrozenTrial]:
    """Finished trials that carry every metric of the task (``metrics``)."""
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return [t for t in done if all(m in t.user_attrs for m in metrics)]


def pick_trial(
    study: optuna.Study,
    *,
    objective: str | None = None,
    picks: list[Constraint] | None = None,
    prefer: str | None = None,
    metrics: tuple[str, ...] = METRICS,
) -> FrozenTrial:
    """The best trial by ``objective``; or among trials meeting every pick, the Pareto-optimal ones (on the study's
    objectives), and of those the best by ``prefer``; trials carry the task's ``metrics``. Raises ConfigError
    listing the closest points if none fits."""
    trials = complete_trials(study, metrics)
    if not trials:
        raise ConfigError("--study", f"study {study.study_name!r} has no completed trials yet")
    if objective is not None:
        return min(trials, key=lambda t: _key(objective, t))
    picks = picks or []
    feasible = [t for t in trials if all(c.violation(t.user_attrs[c.metric]) <= 0 for c in picks)]
    if not feasible:
        closest = sorted(trials, key=lambda t: sum(max(0.0, c.violation(t.user_attrs[c.metric])) for c in picks))
        shown = "; ".join(
            f"trial {t.number}: " + ", ".join(f"{c.metric}={t.user_attrs[c.metric]:.4g}" for c in picks)
            for t in closest[:3]
        )
        wanted = " and ".join(str(c) for c in picks)
        raise ConfigError("--pick", f"no completed trial has {wanted}; closest: {shown}")
    objectives = study.metric_names or [metrics[0]]
    front = pareto_front(feasible, objectives)
    return min(front, key=lambda t: _key(prefer or objectives[0], t))


def front_table(
    study: optuna.Study, picks: list[Constraint] | None = None, task_metrics: tuple[str, ...] = METRICS
) -> str:
    """The Pareto front of the completed trials as a table, with a feasibility column for ``picks``; a trial that
    never predicts a class is flagged below it."""
    metrics = study.metric_names or [task_metrics[0]]
    front = sorted(pareto_front(complete_trials(study, task_metrics), metrics), key=lambda t: t.number)
    extra = [m for m in (*task_metrics[:2], "latency_ms", "size_mb", "params") if m not in metrics]
    header = ["trial", *metrics, *extra, *(["feasible"] if picks else []), "searched parameters"]
    rows = []
    for t in front:
        ok = all(c.violation(t.user_attrs[c.metric]) <= 0 for c in picks or [])
        values = [format_cell(m, t.user_attrs[m]) for m in (*metrics, *extra)]
        rows.append([str(t.number), *values, *([("yes" if ok else "no")] if picks else []), format_params(t.params)])
    notes = never_predicted_notes({f"trial {t.number}": t.user_attrs for t in front})
    return "\n".join([render(header, rows), *notes])


def build_job(study: optuna.Study, trial: FrozenTrial, *, steps_factor: float, patience: int) -> TrainJob:
    """The full-training job of ``trial``: its parameters applied to the study config, the whole training split,
    ``steps_factor`` times the trial's steps, early stopping on validation loss with the best checkpoint kept."""
    _, config = load_study(study._storage, study.study_name)
    if config.objective == "synthetic":
        raise ConfigError("--study", "a synthetic study has nothing to train; export from a finetune or distill study")
    chosen = apply_params(config, trial.params)
    steps = max(1, round(chosen.train.max_steps * steps_factor))
    train = dataclasses.replace(chosen.train, max_steps=steps, patience=patience, eval_every=max(1, steps // 10))
    data = dataclasses.replace(chosen.data, max_train_rows=None, max_val_rows=None)
    teacher = study.user_attrs.get(TEACHER_ATTR, {}) if chosen.objective == "distill" else {}
    stored = "entry" in teacher  # where the teacher lives in the study's store, not a worker's local path
    kept = (*config.task_spec.metrics, "val_loss", "steps", *TIMING_ATTRS)
    metrics = {m: trial.user_attrs[m] for m in kept if m in trial.user_attrs}
    return TrainJob(
        name=f"{study.study_name}-trial-{trial.number}",
        task=config.task,
        objective=chosen.objective,
        seed=trial.user_attrs.get("seed", config.seed),
        device=config.device,
        teacher_path=None if stored else teacher.get("path"),  # studies from before the store recorded entries
        artifacts_dir=config.artifacts_dir if stored else None,
        artifacts_options=config.artifacts_options if stored else {},
        teacher_entry=teacher["entry"] if stored else None,
        data=data,
        teacher=chosen.teacher,
        student=chosen.student,
        train=train,
        distill=chosen.distill,
        source=SourceArgs(study=study.study_name, trial=trial.number, params=dict(trial.params), metrics=metrics),
    )


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def job_seconds(
    step_s: float, row_s: float, steps: int, eval_every: int, val_rows: int, test_rows: int, models: int
) -> float:
    """The wall time of a full training, at most (early stopping shortens it), from per-step and per-row times:

    models * (steps * step_s + ceil(steps / eval_every) * val_rows * row_s) + (models + 1) * test_rows * row_s

    each model trained for ``steps`` and validated every ``eval_every`` steps and at the last, then every model and
    the teacher scored once on the test split (costs, samples and loading left out)."""
    validations = math.ceil(steps / eval_every)
    return models * (steps * step_s + validations * val_rows * row_s) + (models + 1) * test_rows * row_s


def cost_estimate(job: TrainJob) -> str | None:
    """What ``hpo train`` of ``job`` will roughly cost, in words: the source trial's recorded times per optimiser
    step and per evaluated row (blocks of a language model; the trial's hardware) times the job's steps and the
    rows of its evaluation passes (:func:`job_seconds`); None for a trial that recorded no times."""
    from hpo._training import trained_models

    times = job.source.metrics
    if not {"step_seconds", "eval_seconds", "eval_rows"} <= set(times):
        return None
    rows = job.task_spec.implementation().evaluation_rows(job.data, job.teacher.model)
    step_s, row_s = times["step_seconds"], times["eval_seconds"] / max(1.0, times["eval_rows"])
    models, steps, every = len(trained_models(job)), job.train.max_steps, job.train.eval_every
    total = job_seconds(step_s, row_s, steps, every, rows["validation"], rows["test"], models)
    cap = (
        f"data.max_eval_rows caps both at {job.data.max_eval_rows:,}"
        if job.data.max_eval_rows is not None
        else "set data.max_eval_rows in the job to cap both"
    )
    return (
        f"estimated cost, from trial {job.source.trial}'s recorded times on the machine it ran on "
        f"({step_s:.3g} s per step, {row_s:.3g} s per evaluated row; a language model's rows are its blocks): one "
        f"validation pass {rows['validation']:,} rows ~ {_duration(rows['validation'] * row_s)}, a test pass {rows['test']:,} rows ~ "
        f"{_duration(rows['test'] * row_s)}; the whole job at most ~ {_duration(total)} ({models} models x "
        f"({steps:,} steps + {math.ceil(steps / every)} validation passes), {models + 1} test passes, the teacher's "
        f"included); {cap}"
    )


def export(
    study: optuna.Study,
    out: Path,
    *,
    objective: str | None,
    picks: list[Constraint],
    prefer: str | None,
    steps_factor: float = 4.0,
    patience: int = 3,
) -> tuple[FrozenTrial, TrainJob]:
    """Pick a trial, write its job to ``out`` and record the export on the study."""
    _, config = load_study(study._storage, study.study_name)
    trial = pick_trial(study, objective=objective, picks=picks, prefer=prefer, metrics=config.task_spec.metrics)
    job = build_job(study, trial, steps_factor=steps_factor, patience=patience)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:  # written whole, then renamed: a reader (or a crash) never leaves a half-written job
        tmp.write_text(dump_job(job))
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    study.set_user_attr(
        EXPORT_ATTR,
        {
            "trial": trial.number,
            "out": str(out),
            "objective": objective,
            "pick": [str(c) for c in picks],
            "prefer": prefer,
        },
    )
    return trial, job
