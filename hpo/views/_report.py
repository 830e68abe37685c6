"""``hpo report``: one self-contained HTML file (plotly.js inlined, opens offline) that shows a study.

Figures: optimisation history per objective, the Pareto front of a multi-objective study (with the exported trial
highlighted), parameter importances per objective (from :func:`importance_floor` completed trials on; for a cost,
over the architecture parameters alone), validation curves with the pruned trials marked, parallel
coordinates; tables: teacher against the best students, trial counts by state and fail reasons.
"""

from __future__ import annotations

import html
import logging
import re
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpo.study import CURVE_PREFIX, TEACHER_ATTR, study_task, teacher_warning
from hpo.views._table import PER_CLASS_HEADER, best_trials, format_cell, per_class_rows
from objectives import ARCHITECTURE_COSTS, ARCHITECTURE_PARAMS, ConfigError
from storage import FAIL_REASON

MIN_IMPORTANCE_TRIALS = 10
"""Completed trials below which the report shows no parameter importances, whatever the search space."""

TRIALS_PER_PARAM = 2
"""Completed trials per parameter an importance is computed over, at least (:func:`importance_floor`)."""


def importance_floor(n_params: int) -> int:
    """The completed trials parameter importances need: max(:data:`MIN_IMPORTANCE_TRIALS`, :data:`TRIALS_PER_PARAM`
    x ``n_params``). Optuna's default evaluator (fANOVA) fits a random forest from the parameters to the objective
    and splits its variance among them; on a handful of trials every parameter is confounded with the others (each
    trial differs from the next in all of them), and the forest hands the variance to whichever happened to line up
    with it: a 4-trial LM study ranked ``distill.alpha`` first for per-token latency, which alpha cannot change. Ten
    trials is Optuna's own default for a TPE sampler's random start (``n_startup_trials``) before it trusts what it
    has seen; two per parameter lets each parameter vary against the others more than once."""
    return max(MIN_IMPORTANCE_TRIALS, TRIALS_PER_PARAM * n_params)


EXPORT_ATTR = "export"
"""Study user attribute written by ``hpo export``: a dict with at least ``{"trial": <trial number>}``."""

_HEADERS = {
    "f1": "F1",
    "token_accuracy": "token accuracy",
    "latency_ms": "latency p50 (ms)",
    "latency_ms_p95": "latency p95 (ms)",
    "prefill_ms": "prefill (ms)",
    "speedup": "speedup over the teacher (x)",
    "throughput": "throughput (/s)",
    "size_mb": "size (MB)",
}
"""Column titles of metrics whose name is not already one."""

_STATE_COLORS = {"COMPLETE": "#1f77b4", "PRUNED": "#ff7f0e", "FAIL": "#d62728", "RUNNING": "#7f7f7f"}


@dataclass
class Figure:
    """One figure of the report: a plotly figure, or the reason there is none."""

    slug: str
    title: str
    figure: Any = None
    missing: str = ""


@dataclass
class Report:
    """What ``write_report`` wrote."""

    html: Path
    figures: list[Figure]
    pngs: list[Path] = field(default_factory=list)


def exported_trial(study: optuna.Study) -> int | None:
    """The trial number ``hpo export`` picked, if any."""
    export = study.user_attrs.get(EXPORT_ATTR)
    if isinstance(export, dict) and isinstance(export.get("trial"), int):
        return export["trial"]
    return None


def curve(trial: FrozenTrial) -> dict[int, float]:
    """The validation score ``trial`` reported for pruning, by step: reported values, or the user attributes of a
    multi-objective trial."""
    if trial.intermediate_values:
        return dict(sorted(trial.intermediate_values.items()))
    points = {
        int(key.removeprefix(CURVE_PREFIX)): float(value)
        for key, value in trial.user_attrs.items()
        if key.startswith(CURVE_PREFIX) and key.removeprefix(CURVE_PREFIX).isdigit()
    }
    return dict(sorted(points.items()))


def _metric_names(study: optuna.Study) -> list[str]:
    return study.metric_names or [f"objective {i}" for i in range(len(study.directions))]


def _target(index: int) -> Callable[[FrozenTrial], float]:
    return lambda trial: trial.values[index]


def _safely(slug: str, title: str, build: Callable[[], Any]) -> Figure:
    """Optuna raises or warns when a plot cannot be made (too few trials, one parameter value); say why instead."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            figure = build()
        except (ValueError, RuntimeError, ZeroDivisionError) as exc:
            return Figure(slug, title, missing=f"not available: {exc}")
    if figure is None or not figure.data:
        return Figure(slug, title, missing="not available: no completed trials with these values yet")
    figure.update_layout(title=title, template="plotly_white", height=420, margin={"t": 60, "l": 60, "r": 30})
    return Figure(slug, title, figure)


def _pareto(study: optuna.Study, names: list[str]) -> Figure:
    import plotly.graph_objects as go
    from optuna.visualization import plot_pareto_front

    picked = exported_trial(study)
    title = "Pareto front" + (f" (exported: trial {picked})" if picked is not None else "")

    def build() -> Any:
        figure = plot_pareto_front(study, target_names=names)
        if picked is None or len(names) != 2:
            return figure
        trial = next((t for t in study.get_trials(deepcopy=False) if t.number == picked), None)
        if trial is None or trial.values is None:
            return figure
        figure.add_trace(
            go.Scatter(
                x=[trial.values[0]],
                y=[trial.values[1]],
                mode="markers+text",
                name=f"exported: trial {picked}",
                text=[f"exported: trial {picked}"],
                textposition="top center",
                marker={"symbol": "star", "size": 22, "color": "gold", "line": {"color": "black", "width": 1.5}},
            )
        )
        figure.update_layout(legend={"orientation": "h", "y": -0.2})
        return figure

    return _safely("pareto_front", title, build)


def _curves(study: optuna.Study) -> Figure:
    import plotly.graph_objects as go

    title = "Validation score (pruning metric) during training (x: pruned here)"
    figure = go.Figure()
    shown: set[str] = set()
    for trial in study.get_trials(deepcopy=False):
        points = curve(trial)
        if not points:
            continue
        state = trial.state.name
        steps, values = list(points), list(points.values())
        pruned = trial.state == TrialState.PRUNED
        reason = trial.user_attrs.get(FAIL_REASON)
        label = f"trial {trial.number} {state}" + (f" ({reason})" if reason else "")
        figure.add_trace(
            go.Scatter(
                x=steps,
                y=values,
                mode="lines+markers",
                name=state,
                legendgroup=state,
                showlegend=state not in shown,
                line={"color": _STATE_COLORS.get(state, "#7f7f7f"), "width": 1.5},
                marker={
                    "size": [10 if pruned and i == len(steps) - 1 else 4 for i in range(len(steps))],
                    "symbol": ["x" if pruned and i == len(steps) - 1 else "circle" for i in range(len(steps))],
                },
                hovertext=[f"{label}<br>step {s}: {v:.4f}" for s, v in points.items()],
                hoverinfo="text",
            )
        )
        shown.add(state)
    if not figure.data:
        return Figure("intermediate_values", title, missing="not available: no trial reported a validation score")
    figure.update_layout(xaxis_title="step", yaxis_title="validation score (pruning metric)")
    return _safely("intermediate_values", title, lambda: figure)


def _importance(
    study: optuna.Study, index: int, name: str, completed: int, searched: list[str], plot: Callable[..., Any]
) -> Figure:
    """Parameter importances for objective ``name`` over the ``searched`` parameters, or why there are none: fewer
    completed trials than :func:`importance_floor`; for an :data:`objectives.ARCHITECTURE_COSTS` metric only the
    searched :data:`objectives.ARCHITECTURE_PARAMS` count, as no other parameter can move it."""
    slug, title = f"importance_{name}", f"Parameter importances for {name}"
    params = searched
    if name in ARCHITECTURE_COSTS:
        params = [p for p in searched if p in ARCHITECTURE_PARAMS]
        title += " (over architecture parameters only: a cost is moved by the architecture alone)"
        if not params:
            why = (
                f"not available: {name} is a cost moved only by architecture parameters (student.num_layers, "
                "width ratios, ...), and none is searched; any difference between trials is measurement noise"
            )
            return Figure(slug, title, missing=why)
    floor = importance_floor(len(params))
    if completed < floor:
        why = (
            f"not available: {completed} completed trials; importances over {len(params)} parameters need at least "
            f"{floor} (max({MIN_IMPORTANCE_TRIALS}, {TRIALS_PER_PARAM} x parameters)): on fewer, every parameter "
            "varies with every other and the ranking is noise"
        )
        return Figure(slug, title, missing=why)
    return _safely(slug, title, lambda: plot(study, params=params, target=_target(index), target_name=name))


def figures(study: optuna.Study) -> list[Figure]:
    """Every figure of the report, in order."""
    from optuna.visualization import (
        plot_optimization_history,
        plot_parallel_coordinate,
        plot_param_importances,
    )

    names = _metric_names(study)
    multi = len(names) > 1
    out = []
    for i, name in enumerate(names):
        out.append(
            _safely(
                f"history_{name}",
                f"Optimisation history: {name}",
                lambda i=i, name=name: plot_optimization_history(study, target=_target(i), target_name=name),
            )
        )
    if multi:
        out.append(_pareto(study, names))
    completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    searched = sorted({param for trial in completed for param in trial.params})
    for i, name in enumerate(names):
        out.append(_importance(study, i, name, len(completed), searched, plot_param_importances))
    out.append(_curves(study))
    for i, name in enumerate(names):
        out.append(
            _safely(
                f"parallel_{name}",
                f"Parallel coordinates: {name}",
                lambda i=i, name=name: plot_parallel_coordinate(study, target=_target(i), target_name=name),
            )
        )
    return out


def _table(header: list[str], rows: list[list[str]], css: str = "") -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{css}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def models_table(study: optuna.Study, top: int = 5) -> str:
    """Teacher against the best students (the Pareto front of a multi-objective study), as an HTML table."""
    columns = study_task(study).card_metrics
    rows = []
    teacher = study.user_attrs.get(TEACHER_ATTR)
    if teacher:
        rows.append([f"teacher ({teacher.get('model', '?')})", *(format_cell(m, teacher.get(m)) for m in columns)])
    picked = exported_trial(study)
    for trial in best_trials(study, top):
        label = f"trial {trial.number}" + (" (exported)" if trial.number == picked else "")
        rows.append([label, *(format_cell(m, trial.user_attrs.get(m)) for m in columns)])
    if not rows:
        return "<p>No completed trials yet.</p>"
    return _table(["model", *(_HEADERS.get(m, m) for m in columns)], rows, "models")


def per_class_table(study: optuna.Study, top: int = 5) -> str:
    """Validation precision, recall and F1 of each class for the teacher and the best students (classes a model
    never predicts flagged), as an HTML table."""
    teacher = study.user_attrs.get(TEACHER_ATTR) or {}
    models = {f"teacher ({teacher.get('model', '?')})": teacher.get("per_class")}
    models.update({f"trial {t.number}": t.user_attrs.get("per_class") for t in best_trials(study, top)})
    rows = per_class_rows({name: scores for name, scores in models.items() if scores})
    if not rows:
        return "<p>No per-class scores recorded.</p>"
    return _table(PER_CLASS_HEADER, rows, "classes")


def states_table(study: optuna.Study) -> str:
    """Trial counts by state, and each fail (or prune) reason with its count."""
    trials = study.get_trials(deepcopy=False)
    counts = Counter(t.state.name for t in trials)
    states = _table(["state", "trials"], [[s, str(n)] for s, n in sorted(counts.items())], "states")
    reasons = Counter(
        (t.state.name, t.user_attrs.get(FAIL_REASON) or "pruned by the pruner")
        for t in trials
        if t.state in (TrialState.FAIL, TrialState.PRUNED)
    )
    if not reasons:
        return states
    rows = [[state, reason, str(n)] for (state, reason), n in sorted(reasons.items(), key=lambda kv: -kv[1])]
    return states + _table(["state", "reason", "trials"], rows, "reasons")


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { margin-bottom: 0.2em; } .sub { color: #666; margin-top: 0; }
table { border-collapse: collapse; margin: 0.5em 1.5em 1em 0; display: inline-table; vertical-align: top; }
th, td { padding: 4px 10px; border-bottom: 1px solid #ddd; text-align: right; }
th:first-child, td:first-child { text-align: left; }
.figure { margin: 1.5em 0; } .missing { color: #888; font-style: italic; }
.warning { background: #fff3cd; border-left: 4px solid #d39e00; padding: 0.6em 1em; }
details pre { background: #f6f6f6; padding: 1em; overflow-x: auto; }
"""


def _teacher_warning(study: optuna.Study) -> list[str]:
    """A warning paragraph when the study's teacher looks broken (:func:`hpo.execution._teacher.teacher_warning`)."""
    warning = teacher_warning(study.user_attrs.get(TEACHER_ATTR) or {})
    return [f'<p class="warning">Warning: {html.escape(warning)}</p>'] if warning else []


def render_html(study: optuna.Study, figs: list[Figure]) -> str:
    """The report page: tables, then every figure, with plotly.js inlined once."""
    import plotly.offline
    import yaml

    names = _metric_names(study)
    directions = ", ".join(f"{n} ({d.name.lower()})" for n, d in zip(names, study.directions, strict=True))
    budget = study.user_attrs.get("n_trials", "-")
    config = study.user_attrs.get("config")
    parts = [
        f"<h1>Study {html.escape(study.study_name)}</h1>",
        f'<p class="sub">{html.escape(directions)}; trial budget {html.escape(str(budget))}</p>',
        "<h2>Teacher and best students</h2>",
        *_teacher_warning(study),
        models_table(study),
        *(["<h2>Each class (validation)</h2>", per_class_table(study)] if study_task(study).per_class else []),
        "<h2>Trials by state</h2>",
        states_table(study),
    ]
    for fig in figs:
        parts.append(f'<div class="figure" id="section-{fig.slug}">')
        if fig.figure is None:
            parts.append(f'<h3>{html.escape(fig.title)}</h3><p class="missing">{html.escape(fig.missing)}</p>')
        else:
            parts.append(
                fig.figure.to_html(
                    full_html=False, include_plotlyjs=False, div_id=f"fig-{fig.slug}", config={"responsive": True}
                )
            )
        parts.append("</div>")
    if config:
        dumped = yaml.safe_dump(config, sort_keys=False)
        parts.append(f"<details><summary>Study config</summary><pre>{html.escape(dumped)}</pre></details>")
    return (
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'>"
        f"<title>Study {html.escape(study.study_name)}</title><style>{_CSS}</style>"
        f"<script type='text/javascript'>{plotly.offline.get_plotlyjs()}</script></head>"
        f"<body>{''.join(parts)}</body></html>\n"
    )


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)


def _need_kaleido() -> None:
    try:
        import kaleido  # noqa: F401
    except ImportError:
        raise ConfigError("--png", "writing PNGs needs kaleido: pip install 'distill-hpo[png]'") from None


def write_pngs(figs: list[Figure], out_dir: Path) -> list[Path]:
    """Each figure as a PNG in ``out_dir`` (needs kaleido, the ``png`` extra)."""
    _need_kaleido()
    for name in ("kaleido", "choreographer", "logistro"):  # they log every browser start at INFO
        logging.getLogger(name).setLevel(logging.WARNING)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for fig in figs:
        if fig.figure is None:
            continue
        path = out_dir / f"{_slug(fig.slug)}.png"
        fig.figure.write_image(path, width=1100, height=500)
        written.append(path)
    return written


def write_report(study: optuna.Study, out: Path, png_dir: Path | None = None) -> Report:
    """Write the HTML report of ``study`` to ``out`` (and the PNGs to ``png_dir``)."""
    if png_dir is not None:
        _need_kaleido()  # before any work
    figs = figures(study)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_html(study, figs), encoding="utf-8")
    pngs = write_pngs(figs, png_dir) if png_dir is not None else []
    return Report(out, figs, pngs)
