"""Plain-text tables: the one cell formatter and renderer of every table (results, status, export, model card), the
teacher baseline against the best students, per-class scores, and trial counts."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

import optuna

from hpo.study import TEACHER_ATTR
from objectives import METRICS, never_predicted

_FORMATS = {
    "accuracy": ".4f",
    "f1": ".4f",
    "token_accuracy": ".4f",
    "perplexity": ".2f",
    "prefill_ms": ".1f",
    "latency_ms": ".2f",
    "latency_ms_p95": ".2f",
    "speedup": ".2f",
    "throughput": ".0f",
    "size_mb": ".1f",
    "train_seconds": ".0f",
    "peak_memory_mb": ".0f",
    "gflops": ".3f",
    "precision": ".4f",
    "recall": ".4f",
    "support": ".0f",
    "predicted": ".0f",
}

_NUMBER = re.compile(r"^-?\d[\d.]*(e[-+]?\d+)?M?$|^-$")


def format_cell(metric: str, value: Any) -> str:
    """A metric's value as every table shows it: ``params`` in millions (``15.6M``), scores to 4 decimals, others
    by :data:`_FORMATS`; ``-`` when missing."""
    if value is None:
        return "-"
    if metric == "params":
        return f"{value / 1e6:.1f}M"
    return format(value, _FORMATS.get(metric, ".4g"))


def format_params(params: dict[str, Any]) -> str:
    """A trial's searched parameters in one line: ``distill.temperature=7.57, student.num_layers=4``."""
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def render(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns aligned by width: numbers right, text (and the first column) left; no trailing spaces."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    left = [i == 0 or any(not _NUMBER.match(str(r[i])) for r in rows) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            str(c).ljust(w) if left[i] else str(c).rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)])


PER_CLASS_HEADER = ["model", "class", "precision", "recall", "f1", "support", "predicted", "note"]


def per_class_rows(models: dict[str, dict[str, dict[str, float]]]) -> list[list[str]]:
    """Rows of :data:`PER_CLASS_HEADER` for each model's per-class scores (model name -> class name -> scores); a
    class with rows that the model never predicts is flagged."""
    rows = []
    for model, scores in models.items():
        missing = set(never_predicted(scores))
        for name, s in scores.items():
            cells = [format_cell(m, s[m]) for m in ("precision", "recall", "f1", "support", "predicted")]
            rows.append([model, name, *cells, "never predicted" if name in missing else ""])
    return rows


def never_predicted_notes(models: dict[str, dict[str, Any]]) -> list[str]:
    """One line per model (name -> its metrics or user attributes) whose ``per_class`` scores show a class with
    rows that it never predicts."""
    notes = []
    for model, attrs in models.items():
        missing = never_predicted(attrs.get("per_class") or {})
        if missing:
            notes.append(f"{model} never predicts class {', '.join(map(repr, missing))} (validation)")
    return notes


def best_trials(study: optuna.Study, top: int = 3) -> list[optuna.trial.FrozenTrial]:
    """The best finished trials: the top ``top`` by the objective, or the Pareto front of a multi-objective study."""
    if len(study.directions) > 1:
        return sorted(study.best_trials, key=lambda t: t.number)
    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    sign = -1 if study.direction == optuna.study.StudyDirection.MAXIMIZE else 1
    return sorted(done, key=lambda t: sign * t.value)[:top]


def results_table(study: optuna.Study, top: int = 3, metrics: tuple[str, ...] = METRICS) -> str:
    """Teacher baseline vs the best students, with every metric a trial of the task records (``metrics``)."""
    header = ["model", *metrics]
    rows = []
    teacher = study.user_attrs.get(TEACHER_ATTR)
    if teacher:
        rows.append([f"teacher ({teacher['model']})", *(format_cell(m, teacher.get(m)) for m in metrics)])
    best = best_trials(study, top)
    for trial in best:
        rows.append([f"trial {trial.number}", *(format_cell(m, trial.user_attrs.get(m)) for m in metrics)])
    table = render(header, rows)
    params = [f"trial {t.number}: {format_params(t.params)}" for t in best]
    notes = never_predicted_notes({"teacher": teacher or {}, **{f"trial {t.number}": t.user_attrs for t in best}})
    return table + "".join("\n\n" + "\n".join(block) for block in (params, notes) if block)


def state_counts(study: optuna.Study) -> str:
    """Trial counts by state, e.g. ``COMPLETE 8, PRUNED 2``."""
    counts = Counter(t.state.name for t in study.get_trials(deepcopy=False))
    return ", ".join(f"{state} {n}" for state, n in sorted(counts.items())) or "no trials"
