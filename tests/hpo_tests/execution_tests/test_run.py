"""End-to-end studies through the real `hpo` CLI: real MiniLM models, real data, SQLite and PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import optuna
import pytest
import torch
import yaml

from hpo import apply_params
from hpo.execution import prepare_runner, trial_seed, usable_cores
from hpo.study import load_study
from objectives import METRICS
from storage import create_storage
from tests.conftest import tiny_bert, tiny_config

LAYERS = {"student.num_layers": {"type": "int", "low": 1, "high": 2}}
"""A search space for finetune studies (which refuse distill.* keys)."""


def hpo(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.pop("HPO_STORAGE", None)
    return subprocess.run(
        [sys.executable, "-m", "hpo._cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


def write(tmp_path: Path, config: dict) -> Path:
    path = tmp_path / f"{config['name']}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def check_metrics(trial: optuna.trial.FrozenTrial) -> None:
    a = trial.user_attrs
    assert set(METRICS) <= set(a), set(METRICS) - set(a)
    assert 0 <= a["accuracy"] <= 1 and 0 <= a["f1"] <= 1
    assert 0 < a["latency_ms"] <= a["latency_ms_p95"] < 1000
    assert a["throughput"] > 1
    assert a["speedup"] > 1  # a 1-2 layer cut of a 4- or 6-layer teacher, timed against it in the same process
    assert 1e6 < a["params"] < 23e6  # a 1-2 layer cut of the tiny BERT or of MiniLM
    assert a["size_mb"] == pytest.approx(a["params"] * 4 / 2**20, rel=0.01)  # the saved fp32 state: 4 bytes a param
    assert a["train_seconds"] > 0 and a["peak_memory_mb"] >= 0
    assert 0.001 < a["gflops"] < 10
    assert a["seed"] == trial_seed(0, trial.number)
    assert a["pid"] > 0 and a["host"]


@pytest.mark.slow  # a minute or more of real training and several processes; CI runs it
def test_distill_study_on_sqlite_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    minilm = {"model": "minilm-l6", "train": {"max_steps": 4, "batch_size": 16, "eval_every": 4}}
    config = write(tmp_path, tiny_config("e2e", teacher=minilm))  # the real offline MiniLM, end to end
    url = f"sqlite:///{tmp_path}/study.db"
    first = hpo("run", str(config), "--storage", url, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "fine-tuning the teacher" in first.stderr
    assert "teacher (minilm-l6)" in first.stdout and "trial 0" in first.stdout

    study = optuna.load_study(study_name="e2e", storage=url)
    assert study.metric_names == ["accuracy"]
    assert study.user_attrs["config"]["search_space"]["distill.temperature"]["high"] == 4.0
    teacher = study.user_attrs["teacher"]
    assert teacher["params"] == 22_713_986 and Path(teacher["path"]).is_dir()
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 2
    for trial in complete:
        check_metrics(trial)
        assert trial.intermediate_values  # validation accuracy reported during training, for pruning
        assert trial.value == trial.user_attrs["accuracy"]
        assert trial.user_attrs["params"] < teacher["params"]

    # A second run loads the study and the teacher artifact: budget spent, nothing retrained.
    again = hpo("run", str(config), "--storage", url, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "fine-tuning the teacher" not in again.stderr and "already spent" in again.stderr
    assert len(optuna.load_study(study_name="e2e", storage=url).trials) == 2

    # The same name with another config is refused, and the difference is named.
    changed = write(tmp_path, tiny_config("e2e", seed=7, teacher=minilm))
    refused = hpo("run", str(changed), "--storage", url, cwd=tmp_path)
    assert refused.returncode == 2
    assert "study 'e2e' exists with another config (seed: 0 -> 7)" in refused.stderr

    status = hpo("status", "--storage", url, "--study", "e2e", cwd=tmp_path)
    assert status.returncode == 0 and "study 'e2e': COMPLETE 2" in status.stdout and "\n  best " in status.stdout

    # Re-running a finished trial's parameters with its recorded seed reproduces its metrics on CPU.
    monkeypatch.chdir(tmp_path)  # the teacher artifact lives under ./hpo-artifacts
    torch.set_num_threads(usable_cores())  # as the worker ran it
    study, config = load_study(create_storage(url), "e2e")  # the config as stored in the study
    runner = prepare_runner(config, study)
    for trial in complete:
        again = runner.train(apply_params(config, trial.params), trial.params, trial.user_attrs["seed"], trial.number)
        for key in ("accuracy", "f1", "val_loss"):
            assert again[key] == pytest.approx(trial.user_attrs[key], abs=1e-6), key


def test_a_pruner_that_must_prune_prunes_real_trials(tmp_path: Path) -> None:
    # Validation accuracy can never reach 1.01, so the threshold pruner stops every trial at its first report.
    config = tiny_config("pruned", pruner={"name": "threshold", "options": {"lower": 1.01}})
    url = f"sqlite:///{tmp_path}/study.db"
    result = hpo("run", str(write(tmp_path, config)), "--storage", url, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    trials = optuna.load_study(study_name="pruned", storage=url).trials
    assert [t.state for t in trials] == [optuna.trial.TrialState.PRUNED] * 2
    assert all(list(t.intermediate_values) == [2] for t in trials)
    assert "PRUNED" in result.stderr


def test_finetune_study_on_postgresql(tmp_path: Path, pg_url: str) -> None:
    name = f"ft-{uuid.uuid4().hex[:8]}"
    config = tiny_config(name, objective="finetune", n_trials=1, directions={"f1": "maximize"}, search_space=LAYERS)
    result = hpo("run", str(write(tmp_path, config)), "--storage", pg_url, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    study = optuna.load_study(study_name=name, storage=pg_url)
    (trial,) = study.trials
    assert trial.state == optuna.trial.TrialState.COMPLETE
    check_metrics(trial)
    assert trial.value == trial.user_attrs["f1"]
    optuna.delete_study(study_name=name, storage=pg_url)


@pytest.mark.slow  # 20-26 s: a grid of two real trials through the CLI
def test_speedup_is_an_objective_and_a_constraint(tmp_path: Path) -> None:
    # speedup over the teacher (4 layers) measured in the trial's process: a 1-layer cut is faster than a 2-layer one
    config = tiny_config(
        "speedup",
        objective="finetune",
        search_space={"student.num_layers": {"type": "categorical", "choices": [1, 2]}},
        sampler={"name": "grid"},
        directions={"accuracy": "maximize", "speedup": "maximize"},
        constraints={"speedup": ">= 1.2"},
    )
    url = f"sqlite:///{tmp_path}/study.db"
    result = hpo("run", str(write(tmp_path, config)), "--storage", url, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    trials = {t.params["student.num_layers"]: t for t in optuna.load_study(study_name="speedup", storage=url).trials}
    for trial in trials.values():
        assert trial.state == optuna.trial.TrialState.COMPLETE
        assert trial.values[1] == trial.user_attrs["speedup"] > 1.2
        assert trial.user_attrs["feasible"] is True
        assert trial.constraints == {"speedup": pytest.approx(1.2 - trial.user_attrs["speedup"])}
    assert trials[1].user_attrs["speedup"] > trials[2].user_attrs["speedup"]


def test_unreachable_database_is_retried_then_fails_in_one_line_without_the_password(tmp_path: Path) -> None:
    config = write(tmp_path, tiny_config("down", worker={"storage_retries": 3}))
    url = "postgresql+psycopg://hpo:s3cret@127.0.0.1:9/test"
    result = hpo("run", str(config), "--storage", url, cwd=tmp_path)
    assert result.returncode == 1
    assert "s3cret" not in result.stdout + result.stderr
    assert result.stderr.count("retry ") == 2  # backoff between the three tries
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("hpo: error: --storage: connecting to postgresql+psycopg://hpo:***@127.0.0.1:9/test: ")
    assert "did not answer after 3 tries" in last and "Connection refused" in last


def test_bad_config_is_rejected_before_anything_starts(tmp_path: Path) -> None:
    config = write(tmp_path, tiny_config("bad", train={"lr": -1}))
    result = hpo("run", str(config), "--storage", f"sqlite:///{tmp_path}/s.db", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == "hpo: error: train.lr: must be > 0, got -1.0"
    assert not (tmp_path / "s.db").exists() and not (tmp_path / "hpo-artifacts").exists()


def test_pruning_sees_the_study_metric_and_never_stops_a_trial_at_its_final_validation(tmp_path: Path) -> None:
    # {f1: maximize} on the imbalanced SMS set: the value pruners see must be f1, not accuracy (a few steps of
    # training mostly predict "ham": accuracy about 0.87, f1 far lower). The threshold pruner would stop any trial
    # (nothing reaches 1.01), but each trial's only validation is its final one: it has trained its whole budget.
    config = tiny_config(
        f"f1-{uuid.uuid4().hex[:8]}",
        objective="finetune",
        directions={"f1": "maximize"},
        search_space=LAYERS,
        pruner={"name": "threshold", "options": {"lower": 1.01}},
        data={"name": "sms-spam", "max_train_rows": 64, "max_val_rows": 64, "max_length": 32},
        train={"max_steps": 4, "batch_size": 16, "eval_every": 4},
    )
    url = f"sqlite:///{tmp_path}/study.db"
    result = hpo("run", str(write(tmp_path, config)), "--storage", url, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    trials = optuna.load_study(study_name=config["name"], storage=url).trials
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 2
    for trial in trials:
        assert trial.intermediate_values == {4: trial.user_attrs["f1"]} == {4: trial.value}
    assert any(t.user_attrs["f1"] != t.user_attrs["accuracy"] for t in trials)


def test_a_minimised_pruning_metric_prunes_the_worse_trials(tmp_path: Path) -> None:
    # A study minimising validation loss: the median pruner must stop trials whose loss is above the median,
    # never the ones below it (reporting a maximised score in a minimised study would prune the best).
    name = f"loss-{uuid.uuid4().hex[:8]}"
    config = {
        "name": name,
        "objective": "synthetic",
        "directions": {"val_loss": "minimize"},
        "n_trials": 14,
        "sampler": {"name": "random"},
        "pruner": {"name": "median", "options": {"n_startup_trials": 3, "n_warmup_steps": 0}},
        "synthetic": {"steps": 4},
        "search_space": {
            "train.lr": {"type": "float", "low": 1e-5, "high": 1e-3, "log": True},
            "distill.temperature": {"type": "float", "low": 1.0, "high": 8.0},
        },
    }
    url = f"sqlite:///{tmp_path}/study.db"
    result = hpo("run", str(write(tmp_path, config)), "--storage", url, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    trials = optuna.load_study(study_name=name, storage=url).trials
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    pruned = [t for t in trials if t.state == optuna.trial.TrialState.PRUNED]
    assert complete and pruned
    for trial in complete:
        assert trial.intermediate_values[4] == trial.user_attrs["val_loss"] == trial.value
    for trial in pruned:
        step = max(trial.intermediate_values)
        assert step < 4  # never at the final validation
        # Optuna's median rule: against the median of the trials completed before it, at the same step.
        others = sorted(t.intermediate_values[step] for t in complete if t.number < trial.number)
        median = (others[(len(others) - 1) // 2] + others[len(others) // 2]) / 2
        assert trial.intermediate_values[step] > median  # a higher loss than the median: the worse trial


def test_a_broken_teacher_is_called_out_in_the_log_status_and_report(tmp_path: Path) -> None:
    # A learning rate far too high collapses the teacher onto the majority label of the imbalanced SMS set.
    name = f"broken-{uuid.uuid4().hex[:8]}"
    config = tiny_config(
        name,
        n_trials=1,
        data={"name": "sms-spam", "max_train_rows": 96, "max_val_rows": 96, "max_length": 32},
        teacher={"model": tiny_bert(), "train": {"lr": 0.05, "max_steps": 4, "batch_size": 16, "eval_every": 4}},
        train={"max_steps": 2, "batch_size": 16, "eval_every": 2},
    )
    url = f"sqlite:///{tmp_path}/study.db"
    result = hpo("run", str(write(tmp_path, config)), "--storage", url, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    teacher = optuna.load_study(study_name=name, storage=url).user_attrs["teacher"]
    assert teacher["top_share"] == 1.0 and teacher["accuracy"] - teacher["f1"] > 0.3  # one label for everything
    assert "the teacher looks broken: it gives one label to 100% of the validation examples" in result.stderr
    overview = hpo("status", "--storage", url, cwd=tmp_path)  # one row per study, the broken teacher named below
    assert f"warning: study {name!r}: the teacher looks broken" in overview.stdout
    status = hpo("status", "--storage", url, "--study", name, cwd=tmp_path)
    assert "warning: the teacher looks broken" in status.stdout
    report = hpo("report", "--storage", url, "--study", name, "--out", str(tmp_path / "r.html"), cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    assert '<p class="warning">Warning: the teacher looks broken' in (tmp_path / "r.html").read_text()
