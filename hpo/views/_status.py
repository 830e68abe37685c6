"""``hpo status``: what a storage holds, study by study, with running trials and stale ones flagged."""

from __future__ import annotations

import datetime

import optuna
from optuna.trial import TrialState

from hpo.study import BUDGET_ATTR, CONFIG_ATTR, TEACHER_ATTR, config_from_dict, survey, teacher_warning
from hpo.views._table import best_trials, format_cell, never_predicted_notes, render, state_counts
from objectives import ConfigError
from storage import FAIL_REASON, create_storage, redact_url


def _stale_ids(storage: optuna.storages.RDBStorage, study: optuna.Study) -> set[int]:
    """Ids of RUNNING trials without a heartbeat for the study's grace period (their worker is gone)."""
    stored = study.user_attrs.get(CONFIG_ATTR)
    if stored is None:
        return set()
    worker = config_from_dict(stored).worker
    # The storage was opened without heartbeats (status must not send any); give it the study's settings to ask.
    storage.heartbeat_interval, storage.grace_period = worker.heartbeat_interval, worker.grace_period
    return set(storage._get_stale_trial_ids(study._study_id))


def _running_table(study: optuna.Study, stale: set[int]) -> str:
    now = datetime.datetime.now()
    rows = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        a = trial.user_attrs
        elapsed = (now - trial.datetime_start).total_seconds() if trial.datetime_start else 0.0
        flag = "STALE (no heartbeat)" if trial._trial_id in stale else ""
        rows.append(
            [
                f"trial {trial.number}",
                a.get("host", "-"),
                str(a.get("gpu", "-")),
                str(a.get("pid", "-")),
                f"{elapsed:.0f}s",
                flag,
            ]
        )
    if not rows:
        return ""
    return render(["running", "host", "gpu", "pid", "elapsed", ""], rows)


def _failed_table(study: optuna.Study, last: int = 5) -> str:
    """The last failed trials and why (``fail_reason``: the exception, oom, worker stopped or lost)."""
    failed = study.get_trials(deepcopy=False, states=(TrialState.FAIL,))[-last:]
    rows = [[f"trial {t.number}", str(t.user_attrs.get(FAIL_REASON, "-"))] for t in failed]
    return render(["failed", "reason"], rows) if rows else ""


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _rate(study: optuna.Study, now: datetime.datetime | None = None) -> tuple[int, float]:
    """Finished trials and the rate (per second) they have finished at since the first trial started."""
    trials = study.get_trials(deepcopy=False)
    finished = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    starts = [t.datetime_start for t in trials if t.datetime_start is not None]
    if not finished or not starts:
        return finished, 0.0
    span = ((now or datetime.datetime.now()) - min(starts)).total_seconds()
    return finished, finished / span if span > 0 else 0.0


def eta(study: optuna.Study, now: datetime.datetime | None = None) -> str:
    """Time left for the trial budget at the rate trials have finished so far (all workers together)."""
    budget = study.user_attrs.get(BUDGET_ATTR)
    finished, rate = _rate(study, now)
    if not isinstance(budget, int):
        return "ETA: - (no trial budget)"
    left = budget - finished
    if left <= 0:
        return f"budget spent ({finished} of {budget} trials finished)"
    if not finished:
        return f"ETA: - ({left} of {budget} trials left, none finished yet)"
    if rate <= 0:
        return f"ETA: - ({left} of {budget} trials left)"
    return f"ETA: {_duration(left / rate)} ({left} of {budget} trials left at {rate * 60:.3g} trials/min)"


def _best_cell(study: optuna.Study, metric_names: list[str]) -> str:
    if len(metric_names) > 1:
        front = best_trials(study)
        return f"{len(front)} on the front" if front else "-"
    top = best_trials(study, top=1)
    return f"{metric_names[0]} {top[0].value:.4g}" if top else "-"


def studies_table(storage: optuna.storages.RDBStorage) -> str:
    """One row per study: state (running, paused, done), priority, budget, running trials, best value, ETA; a
    study whose teacher looks broken is named below the table."""
    rows, notes = [], []
    for s in survey(storage):
        study = optuna.load_study(study_name=s.name, storage=storage)
        budget = s.config.n_trials
        finished, rate = _rate(study)
        left = None if budget is None else budget - finished
        if s.done or s.paused:
            time_left = "-"
        elif left is None or rate <= 0:
            time_left = "?"
        else:
            time_left = _duration(left / rate)
        rows.append(
            [
                s.name,
                s.state,
                str(s.config.priority),
                f"{finished}/{budget if budget is not None else '-'}",
                str(s.running) + ("" if s.config.max_parallel is None else f" (max {s.config.max_parallel})"),
                _best_cell(study, s.config.metric_names),
                time_left,
            ]
        )
        warning = teacher_warning(study.user_attrs.get(TEACHER_ATTR) or {})
        if warning:
            notes.append(f"warning: study {s.name!r}: {warning}")
    return "\n".join([render(["study", "state", "priority", "finished", "running", "best", "ETA"], rows), *notes])


def _best_table(study: optuna.Study, metric_names: list[str]) -> str:
    """Best values per objective: the best trial of a single objective, the Pareto front of several; a best trial
    that never predicts a class is flagged below the table."""
    best = best_trials(study, top=1 if len(metric_names) == 1 else 10)
    if not best:
        return ""
    rows = [
        [f"trial {t.number}", *(format_cell(m, v) for m, v in zip(metric_names, t.values, strict=True))] for t in best
    ]
    notes = never_predicted_notes({f"trial {t.number}": t.user_attrs for t in best})
    return "\n".join([render(["best", *metric_names], rows), *notes])


def _indent(text: str) -> str:
    return "\n".join(f"  {line}" for line in text.splitlines())


def status(storage_url: str, study_name: str | None = None) -> str:
    """Trial counts by state, the best values and the running trials (stale ones flagged) of one study; without
    ``study_name``, one row per study (:func:`studies_table`)."""
    storage = create_storage(storage_url, create_tables=False)
    try:
        if not study_name:
            return studies_table(storage) if storage.get_all_studies() else f"no studies in {redact_url(storage_url)}"
        try:
            study = optuna.load_study(study_name=study_name, storage=storage)
        except KeyError:
            raise ConfigError("--study", f"no study named {study_name!r} in {redact_url(storage_url)}") from None
        metric_names = study.metric_names or [f"objective {i}" for i in range(len(study.directions))]
        lines = [f"study {study_name!r}: {state_counts(study)} (budget {study.user_attrs.get(BUDGET_ATTR, '-')})"]
        lines.append(f"  {eta(study)}")
        warning = teacher_warning(study.user_attrs.get(TEACHER_ATTR) or {})
        if warning:
            lines.append(f"  warning: {warning}")
        tables = (
            _best_table(study, metric_names),
            _running_table(study, _stale_ids(storage, study)),
            _failed_table(study),
        )
        for table in tables:
            if table:
                lines.append(_indent(table))
        return "\n".join(lines)
    finally:
        storage.engine.dispose()
