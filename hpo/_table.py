"""Plain-text tables of a study: the teacher baseline against the best students, and trial counts."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import optuna

from hpo._teacher import TEACHER_ATTR
from objectives import METRICS

_FORMATS = {
    "accuracy": ".4f",
    "f1": ".4f",
    "latency_ms": ".2f",
    "latency_ms_p95": ".2f",
    "throughput": ".0f",
    "size_mb": ".1f",
    "train_seconds": ".0f",
    "peak_memory_mb": ".0f",
    "gflops": ".3f",
}


def _cell(metric: str, value: Any) -> str:
    if value is None:
        return "-"
    if metric == "params":
        return f"{value / 1e6:.1f}M"
    return format(value, _FORMATS.get(metric, ".4g"))


def render(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns aligned by width: the first left, the rest right."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def best_trials(study: optuna.Study, top: int = 3) -> list[optuna.trial.FrozenTrial]:
    """The best finished trials: the top ``top`` by the objective, or the Pareto front of a multi-objective study."""
    if len(study.directions) > 1:
        return sorted(study.best_trials, key=lambda t: t.number)
    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    sign = -1 if study.direction == optuna.study.StudyDirection.MAXIMIZE else 1
    return sorted(done, key=lambda t: sign * t.value)[:top]


def results_table(study: optuna.Study, top: int = 3) -> str:
    """Teacher baseline vs the best students, with every metric a trial records."""
    header = ["model", *METRICS]
    rows = []
    teacher = study.user_attrs.get(TEACHER_ATTR)
    if teacher:
        rows.append([f"teacher ({teacher['model']})", *(_cell(m, teacher.get(m)) for m in METRICS)])
    for trial in best_trials(study, top):
        rows.append([f"trial {trial.number}", *(_cell(m, trial.user_attrs.get(m)) for m in METRICS)])
    table = render(header, rows)
    params = [
        f"trial {t.number}: "
        + ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in t.params.items())
        for t in best_trials(study, top)
    ]
    return table + ("\n\n" + "\n".join(params) if params else "")


def state_counts(study: optuna.Study) -> str:
    """Trial counts by state, e.g. ``COMPLETE 8, PRUNED 2``."""
    counts = Counter(t.state.name for t in study.get_trials(deepcopy=False))
    return ", ".join(f"{state} {n}" for state, n in sorted(counts.items())) or "no trials"
