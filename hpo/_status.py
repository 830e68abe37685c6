"""``hpo status``: what a storage holds, study by study."""

from __future__ import annotations

import optuna

from hpo._table import best_trials, state_counts
from storage import create_storage, redact_url


def status(storage_url: str, study_name: str | None = None) -> str:
    """Trial counts by state and the best values of one study, or of every study in the storage."""
    storage = create_storage(storage_url)
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
        lines = [f"study {name!r}: {state_counts(study)}"]
        for trial in best_trials(study, top=1):
            values = ", ".join(f"{m}={v:.4g}" for m, v in zip(metric_names, trial.values, strict=True))
            lines.append(f"  best: trial {trial.number}: {values}")
        blocks.append("\n".join(lines))
    return "\n".join(blocks)
