"""``hpo status``: what a storage holds, study by study, with running trials and stale ones flagged."""

from __future__ import annotations

import datetime

import optuna
from optuna.trial import TrialState

from hpo._config import config_from_dict
from hpo._study import CONFIG_ATTR
from hpo._table import best_trials, render, state_counts
from hpo._teacher import TEACHER_ATTR, teacher_warning
from storage import create_storage, redact_url


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


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def eta(study: optuna.Study, now: datetime.datetime | None = None) -> str:
    """Time left for the trial budget at the rate trials have finished so far (all workers together)."""
    budget = study.user_attrs.get("n_trials")
    trials = study.get_trials(deepcopy=False)
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    if not isinstance(budget, int):
        return "ETA: - (no trial budget)"
    left = budget - len(finished)
    if left <= 0:
        return f"budget spent ({len(finished)} of {budget} trials finished)"
    starts = [t.datetime_start for t in trials if t.datetime_start is not None]
    if not finished or not starts:
        return f"ETA: - ({left} of {budget} trials left, none finished yet)"
    now = now or datetime.datetime.now()
    span = (now - min(starts)).total_seconds()
    rate = len(finished) / span if span > 0 else 0.0
    if rate <= 0:
        return f"ETA: - ({left} of {budget} trials left)"
    return f"ETA: {_duration(left / rate)} ({left} of {budget} trials left at {rate * 60:.3g} trials/min)"


def _best_table(study: optuna.Study, metric_names: list[str]) -> str:
    """Best values per objective: the best trial of a single objective, the Pareto front of several."""
    rows = [
        [f"trial {t.number}", *(format(v, ".4g") for v in t.values)]
        for t in best_trials(study, top=1 if len(metric_names) == 1 else 10)
    ]
    return render(["best", *metric_names], rows) if rows else ""


def _indent(text: str) -> str:
    return "\n".join(f"  {line}" for line in text.splitlines())


def status(storage_url: str, study_name: str | None = None) -> str:
    """Trial counts by state, the best values and the running trials of one study, or of every study."""
    storage = create_storage(storage_url, create_tables=False)
    names = [study_name] if study_name else [s.study_name for s in optuna.get_all_study_summaries(storage)]
    if not names:
        return f"no studies in {redact_url(storage_url)}"
    blocks = []
    for name in names:
        try:
            study = optuna.load_study(study_name=name, storage=storage)
        except KeyError:
            raise KeyError(f"no study named {name!r} in {redact_url(storage_url)}") from None
        metric_names = study.metric_names or [f"objective {i}" for i in range(len(study.directions))]
        lines = [f"study {name!r}: {state_counts(study)} (budget {study.user_attrs.get('n_trials', '-')})"]
        lines.append(f"  {eta(study)}")
        warning = teacher_warning(study.user_attrs.get(TEACHER_ATTR) or {})
        if warning:
            lines.append(f"  warning: {warning}")
        for table in (_best_table(study, metric_names), _running_table(study, _stale_ids(storage, study))):
            if table:
                lines.append(_indent(table))
        blocks.append("\n".join(lines))
    storage.engine.dispose()
    return "\n\n".join(blocks)
