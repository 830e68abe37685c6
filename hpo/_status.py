"""``hpo status``: what a storage holds, study by study, with running trials and stale ones flagged."""

from __future__ import annotations

import datetime

import optuna
from optuna.trial import TrialState

from hpo._config import config_from_dict
from hpo._study import CONFIG_ATTR
from hpo._table import best_trials, render, state_counts
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
        for trial in best_trials(study, top=1):
            values = ", ".join(f"{m}={v:.4g}" for m, v in zip(metric_names, trial.values, strict=True))
            lines.append(f"  best: trial {trial.number}: {values}")
        running = _running_table(study, _stale_ids(storage, study))
        if running:
            lines.append("\n".join(f"  {line}" for line in running.splitlines()))
        blocks.append("\n".join(lines))
    return "\n".join(blocks)
