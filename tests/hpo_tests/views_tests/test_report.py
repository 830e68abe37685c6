"""``hpo report``: a self-contained HTML file, rendered in a real headless Chromium with no network."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import optuna
import yaml
from optuna.trial import TrialState

from hpo.views import figures
from tests.hpo_tests.execution_tests.test_workers import SPACE, synthetic
from tests.hpo_tests.views_tests import browser

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def hpo(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hpo._cli", *args], cwd=cwd, capture_output=True, text=True, timeout=300, check=False
    )


def make_study(tmp_path: Path, config: dict) -> str:
    """Run a synthetic study to its budget in a SQLite file; returns the storage URL."""
    url = f"sqlite:///{tmp_path / 'report.db'}"
    path = tmp_path / f"{config['name']}.yaml"
    path.write_text(yaml.safe_dump(config))
    result = hpo("run", str(path), "--storage", url, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    return url


def multi_objective(name: str = "pareto") -> dict:
    return synthetic(
        name,
        n_trials=12,
        directions={"accuracy": "maximize", "latency_ms": "minimize"},
        sampler={"name": "nsga2"},
        synthetic={"steps": 4, "crash_trials": [2]},
        worker={"max_retries": 0},
        search_space={**SPACE, "student.num_layers": {"type": "int", "low": 1, "high": 4}},
    )


TEACHER = {"model": "minilm-l6", "accuracy": 0.81, "f1": 0.8099, "latency_ms": 6.32, "latency_ms_p95": 7.94}


def test_multi_objective_report_renders_every_figure_offline_with_the_exported_pick(tmp_path: Path) -> None:
    url = make_study(tmp_path, multi_objective())
    study = optuna.load_study(study_name="pareto", storage=url)
    pick = min(study.best_trials, key=lambda t: t.values[1]).number
    study.set_user_attr("export", {"trial": pick, "path": "exported/"})
    study.set_user_attr("teacher", {**TEACHER, "throughput": 251.0, "params": 22.7e6, "size_mb": 86.6})

    # 12 completed trials of 3 parameters: importances for accuracy over all three; latency, a cost, over the one
    # architecture parameter (the synthetic cost also follows train.lr, which a real student's latency cannot)
    figs = {f.slug: f for f in figures(study)}
    assert set(figs["importance_accuracy"].figure.data[0].y) == {
        "train.lr",
        "distill.temperature",
        "student.num_layers",
    }
    assert list(figs["importance_latency_ms"].figure.data[0].y) == ["student.num_layers"]
    assert "architecture parameters only" in figs["importance_latency_ms"].title

    out = tmp_path / "out" / "report.html"
    result = hpo("report", "--storage", url, "--study", "pareto", "--out", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"{out}: 8 figures" in result.stdout
    text = out.read_text()
    # Self-contained: plotly.js inlined, nothing loaded from elsewhere.
    assert "Plotly" in text and len(text) > 3_000_000
    assert "<h2>Each class (validation)</h2>" in text  # a classification study (TaskSpec.per_class)
    assert not re.search(r"<script[^>]+src=|<link[^>]+href=|<img[^>]+src=\"?http", text)

    page = browser.dom(out.as_uri(), offline=True)
    slugs = re.findall(r'<div id="fig-([\w.-]+)" class="plotly-graph-div js-plotly-plot"', page)
    assert sorted(slugs) == sorted(
        [
            "history_accuracy",
            "history_latency_ms",
            "pareto_front",
            "importance_accuracy",
            "importance_latency_ms",
            "intermediate_values",
            "parallel_accuracy",
            "parallel_latency_ms",
        ]
    )
    # Every figure rendered: plotly drew an SVG with its data inside each figure's div.
    for part in page.split('class="plotly-graph-div js-plotly-plot"')[1:]:
        assert 'class="main-svg"' in part.split('class="figure"')[0]
    assert f"exported: trial {pick}" in page  # the star on the Pareto front and its legend
    assert f"trial {pick} (exported)" in page  # and the students table
    assert "teacher (minilm-l6)" in page and "0.8100" in page and "22.7M" in page
    assert "RuntimeError: synthetic crash in trial 2" in page  # trial counts by state with fail reasons
    assert re.search(r"<td>FAIL</td><td>1</td>", page) and re.search(r"<td>COMPLETE</td><td>12</td>", page)

    shot = browser.screenshot(out.as_uri(), tmp_path / "report.png", size="1300,2600", offline=True)
    assert shot.read_bytes().startswith(PNG_MAGIC) and shot.stat().st_size > 20_000


def test_single_objective_report_marks_where_trials_were_pruned(tmp_path: Path) -> None:
    config = synthetic(
        "pruned",
        n_trials=12,
        pruner={"name": "median", "options": {"n_startup_trials": 2, "n_warmup_steps": 1}},
        synthetic={"steps": 6},
    )
    study = optuna.load_study(study_name="pruned", storage=make_study(tmp_path, config))
    pruned = [t for t in study.trials if t.state == TrialState.PRUNED]
    assert pruned, "the median pruner pruned nothing; the test needs pruned trials"

    figs = {f.slug: f for f in figures(study)}
    assert set(figs) == {"history_accuracy", "importance_accuracy", "intermediate_values", "parallel_accuracy"}
    assert all(f.figure is not None for slug, f in figs.items() if slug != "importance_accuracy")
    completed = len(study.get_trials(states=(TrialState.COMPLETE,)))  # pruned trials do not count toward the floor
    assert (figs["importance_accuracy"].figure is None) == (completed < 10), figs["importance_accuracy"].missing
    curves = figs["intermediate_values"].figure.data
    assert len(curves) == len(study.trials)
    marked = [trace for trace in curves if "x" in trace.marker.symbol]
    assert len(marked) == len(pruned)
    for trace, trial in zip(marked, pruned, strict=True):
        last = max(trial.intermediate_values)
        assert trace.marker.symbol[-1] == "x" and trace.x[-1] == last  # the cross sits where it was pruned


def test_report_errors_are_one_line_naming_the_flag(tmp_path: Path) -> None:
    url = make_study(tmp_path, synthetic("small", n_trials=2))
    missing = hpo("report", "--storage", url, "--study", "nope", cwd=tmp_path)
    assert missing.returncode == 2
    assert missing.stderr.strip() == f"hpo: error: --study: no study named 'nope' in {url} (studies: small)"
    empty = hpo("report", "--storage", f"sqlite:///{tmp_path / 'empty.db'}", "--study", "x", cwd=tmp_path)
    assert empty.returncode == 2 and empty.stderr.startswith("hpo: error: --storage: ")


def test_png_export_needs_the_png_extra(tmp_path: Path) -> None:
    url = make_study(tmp_path, synthetic("png", n_trials=3))
    result = hpo("report", "--storage", url, "--study", "png", "--out", "r.html", "--png", "figs", cwd=tmp_path)
    try:
        import kaleido  # noqa: F401
    except ImportError:
        assert result.returncode == 2
        assert result.stderr.strip() == "hpo: error: --png: writing PNGs needs kaleido: pip install 'distill-hpo[png]'"
        assert not (tmp_path / "r.html").exists()  # checked before any work
        return
    assert result.returncode == 0, result.stderr
    pngs = sorted((tmp_path / "figs").glob("*.png"))
    assert pngs and all(p.read_bytes().startswith(PNG_MAGIC) for p in pngs)


def test_report_of_a_study_without_finished_trials_says_why_figures_are_missing(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'report.db'}"
    path = tmp_path / "new.yaml"
    path.write_text(yaml.safe_dump(synthetic("new")))
    assert hpo("create", str(path), "--storage", url, cwd=tmp_path).returncode == 0
    out = tmp_path / "r.html"
    result = hpo("report", "--storage", url, "--study", "new", "--out", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert ": 0 figures" in result.stdout and result.stdout.count("not available") == 4
    assert "No completed trials yet." in out.read_text()


def run_here(tmp_path: Path, config: dict) -> optuna.Study:
    """Run a synthetic study to its budget in this process (no CLI start-up) in a SQLite file."""
    from hpo import config_from_dict
    from hpo.execution import run

    url = f"sqlite:///{tmp_path / (config['name'] + '.db')}"
    run(config_from_dict(config), url)
    return optuna.load_study(study_name=config["name"], storage=url)


def test_importances_need_enough_trials_and_a_cost_needs_a_searched_architecture_parameter(tmp_path: Path) -> None:
    # 4 trials searching distill.alpha and the depth: too few for any importance (the floor is 10), however plotly
    # would rank them
    few = synthetic(
        "few",
        n_trials=4,
        directions={"accuracy": "maximize", "latency_ms": "minimize"},
        search_space={
            "distill.alpha": {"type": "float", "low": 0.0, "high": 1.0},
            "student.num_layers": {"type": "int", "low": 1, "high": 4},
        },
    )
    figs = {f.slug: f for f in figures(run_here(tmp_path, few))}
    assert figs["importance_accuracy"].figure is None and figs["importance_latency_ms"].figure is None
    floor = "not available: 4 completed trials; importances over {} parameters need at least 10"
    assert figs["importance_accuracy"].missing.startswith(floor.format(2))
    assert figs["importance_latency_ms"].missing.startswith(floor.format(1))  # the depth alone: latency is a cost

    # latency is a cost and no architecture parameter is searched: nothing to rank, whatever the number of trials
    costs = synthetic("costs", n_trials=2, directions={"latency_ms": "minimize"})
    (latency,) = [f for f in figures(run_here(tmp_path, costs)) if f.slug.startswith("importance_")]
    assert latency.figure is None
    assert "latency_ms is a cost moved only by architecture parameters" in latency.missing
    assert "none is searched" in latency.missing
