"""Picking, exporting and fully training a trial; multi-objective pruning; the test split stays unread."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from optuna.distributions import FloatDistribution
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from hpo import config_from_dict
from hpo._export import job_seconds, pick_trial
from hpo.execution import run
from hpo.study import open_study, parse_constraint, rung_attr
from objectives import METRICS, ConfigError
from objectives.data import Task
from tests.conftest import sentiment_csv, tiny_config


def _metrics(accuracy: float, latency: float, size: float) -> dict[str, float]:
    base = dict.fromkeys(METRICS, 1.0)
    return {**base, "accuracy": accuracy, "f1": accuracy - 0.01, "latency_ms": latency, "size_mb": size}


@pytest.fixture
def prepared(tmp_path: Path) -> optuna.Study:
    """A multi-objective study (accuracy up, latency down) with hand-made trials."""
    config = config_from_dict(
        {
            "name": "prepared",
            "objective": "synthetic",
            "directions": {"accuracy": "maximize", "latency_ms": "minimize"},
            "pruner": {"name": "none"},
            "search_space": {"train.lr": {"type": "float", "low": 1e-5, "high": 1e-3}},
        }
    )
    study = open_study(config, f"sqlite:///{tmp_path}/p.db")
    rows = [(0.90, 5.0, 60.0), (0.85, 2.5, 50.0), (0.80, 1.5, 40.0), (0.84, 2.9, 30.0), (0.95, 9.0, 90.0)]
    for accuracy, latency, size in rows:
        study.add_trial(
            optuna.trial.create_trial(
                values=[accuracy, latency],
                params={"train.lr": 1e-4},
                distributions={"train.lr": FloatDistribution(1e-5, 1e-3)},
                user_attrs=_metrics(accuracy, latency, size),
            )
        )
    return study


def test_pick_under_constraints_chooses_the_right_trial(prepared: optuna.Study) -> None:
    pick = parse_constraint("latency_ms <= 3", "--pick")
    assert pick_trial(prepared, picks=[pick], prefer="accuracy").number == 1
    assert pick_trial(prepared, picks=[pick], prefer="latency_ms").number == 2
    assert pick_trial(prepared, objective="accuracy").number == 4
    assert pick_trial(prepared, objective="latency_ms").number == 2
    # trial 3 is dominated on the study's objectives, but it is the only one small enough
    assert pick_trial(prepared, picks=[parse_constraint("size_mb <= 35", "--pick")], prefer="accuracy").number == 3
    with pytest.raises(
        ConfigError, match=r"--pick: no completed trial has latency_ms <= 1; closest: trial 2: latency_ms=1\.5"
    ):
        pick_trial(prepared, picks=[parse_constraint("latency_ms <= 1", "--pick")], prefer="accuracy")


def test_bad_pick_expressions() -> None:
    with pytest.raises(ConfigError, match="--pick: expected 'METRIC <= NUMBER'"):
        parse_constraint("latency < 3", "--pick")
    with pytest.raises(ConfigError, match="--pick: unknown metric 'latency'"):
        parse_constraint("latency <= 3", "--pick")


def _pareto_config(name: str, **pruner: int) -> dict:
    config = tiny_config(
        name,
        n_trials=40,
        objective="synthetic",
        directions={"accuracy": "maximize", "latency_ms": "minimize"},
        sampler={"name": "random"},
        pruner={"name": "pareto", "options": {"min_resource": 2, "reduction_factor": 2, **pruner}},
        synthetic={"steps": 8},
    )
    config["search_space"] = {
        "train.lr": {"type": "float", "low": 1e-5, "high": 1e-3, "log": True},
        "distill.temperature": {"type": "float", "low": 1.0, "high": 8.0},
    }
    return config


def test_pareto_pruner_prunes_only_dominated_trials_and_spares_fast_ones(tmp_path: Path) -> None:
    config = config_from_dict(_pareto_config("mo", min_trials=3, min_dominating=2))
    run(config, f"sqlite:///{tmp_path}/mo.db")
    study = optuna.load_study(study_name="mo", storage=f"sqlite:///{tmp_path}/mo.db")
    trials = study.trials
    pruned = [t for t in trials if t.state == optuna.trial.TrialState.PRUNED]
    assert 5 <= len(pruned) < len(trials)
    for t in pruned:
        rung = max(int(k.split("_")[1]) for k in t.user_attrs if k.startswith("rung_"))
        key = rung_attr(rung)
        peers = [o for o in trials if o.number < t.number and key in o.user_attrs]
        dominating = [
            o
            for o in peers
            if o.user_attrs[key] >= t.user_attrs[key]
            and o.user_attrs["latency_ms"] <= t.user_attrs["latency_ms"]
            and (o.user_attrs[key] > t.user_attrs[key] or o.user_attrs["latency_ms"] < t.user_attrs["latency_ms"])
        ]
        assert len(peers) >= 3 and len(dominating) >= 2, t.number
        assert any(k.startswith("val_step_") for k in t.user_attrs)  # its curve is stored
    fastest = min(trials, key=lambda t: t.user_attrs["latency_ms"])
    assert fastest.state == optuna.trial.TrialState.COMPLETE  # nothing is faster, so nothing can dominate it


def test_real_multi_objective_trial_is_pruned_with_its_curve_stored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    raw = tiny_config(
        "mo-real",
        n_trials=2,
        directions={"accuracy": "maximize", "size_mb": "minimize"},
        pruner={"name": "pareto", "options": {"min_resource": 2, "min_trials": 1, "min_dominating": 1}},
        search_space={"distill.temperature": {"type": "float", "low": 1.0, "high": 4.0}},
    )
    url = f"sqlite:///{tmp_path}/s.db"
    config = config_from_dict(raw)
    study = open_study(config, url)
    # A finished peer that reached rung 0 with perfect accuracy and a tiny size dominates any real student there.
    study.add_trial(
        optuna.trial.create_trial(
            values=[1.0, 1.0],
            params={"distill.temperature": 2.0},
            distributions={"distill.temperature": FloatDistribution(1.0, 4.0)},
            user_attrs={**_metrics(1.0, 1.0, 1.0), rung_attr(0): 1.0},
        )
    )
    run(config, url)
    real = optuna.load_study(study_name="mo-real", storage=url).trials[1]
    assert real.state == optuna.trial.TrialState.PRUNED
    assert rung_attr(0) in real.user_attrs and "val_step_2" in real.user_attrs
    assert real.user_attrs["size_mb"] > 1  # cost was recorded before training


def hpo(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "hpo._cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=900
    )


@pytest.mark.slow  # a minute or more of real training and several processes; CI runs it
def test_study_export_and_full_training_round_trip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both approaches from study to exported job to a fully trained model, on a 240-row CSV: the export lifts the
    study's row cap, and full training (seeds, baselines, test split, card) runs on every row in seconds."""
    monkeypatch.chdir(tmp_path)
    url = f"sqlite:///{tmp_path}/s.db"
    raw = tiny_config("roundtrip", n_trials=2, sampler={"name": "grid"})
    raw["data"] = {**raw["data"], "name": sentiment_csv(tmp_path / "reviews.csv"), "text_column": "text"}
    raw["search_space"] = {"distill.approach": {"type": "categorical", "choices": ["integrated", "sequential"]}}
    raw["distill"] = {"transfer_ratio": 0.5}

    # The study never reads the test split: make reading it an error while the study runs.
    def forbidden(self: Task) -> None:
        raise AssertionError("the test split was read during the study")

    monkeypatch.setattr(Task, "test", forbidden)
    run(config_from_dict(raw), url)
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    trials = optuna.load_study(study_name="roundtrip", storage=url).trials
    assert {t.params["distill.approach"]: t.state.name for t in trials} == {
        "integrated": "COMPLETE",
        "sequential": "COMPLETE",
    }
    sequential = next(t for t in trials if t.params["distill.approach"] == "sequential")
    assert max(sequential.intermediate_values) == 4  # both stages: KD steps then label steps, numbered on

    listed = hpo("export", "--storage", url, "--study", "roundtrip", "--list", cwd=tmp_path)
    assert listed.returncode == 0 and "searched parameters" in listed.stdout
    for trial in trials:
        job_path = tmp_path / f"job-{trial.number}.yaml"
        exported = hpo(
            "export", "--storage", url, "--study", "roundtrip", "--out", str(job_path),
            "--pick", "accuracy >= 0", "--prefer", "accuracy", "--steps-factor", "1.5", cwd=tmp_path,
        )  # fmt: skip
        assert exported.returncode == 0, exported.stderr
        job = yaml.safe_load(job_path.read_text())
        job["source"]["trial"] = trial.number  # train each approach: point the job at this trial's parameters
        job["distill"]["approach"] = trial.params["distill.approach"]
        job["train"]["eval_every"] = 3
        job_path.write_text(yaml.safe_dump(job))
        assert (
            job["data"]["max_train_rows"] is None and job["train"]["max_steps"] == 6 and job["train"]["patience"] == 3
        )
        assert job["teacher_path"] is None and job["source"]["study"] == "roundtrip"
        assert (Path(job["artifacts_dir"]) / "roundtrip" / job["teacher_entry"]).is_dir()  # in the store

        out = tmp_path / f"model-{trial.number}"
        seeds = 2 if trial.params["distill.approach"] == "sequential" else 1
        trained = hpo("train", str(job_path), "--out", str(out), "--seeds", str(seeds), cwd=tmp_path)
        assert trained.returncode == 0, trained.stderr[-3000:]
        assert "validation accuracy" in trained.stderr  # progress during training
        metrics = json.loads((out / "metrics.json").read_text())
        rows = metrics["test"]
        assert set(rows) == {
            "teacher",
            "distilled student",
            "student without teacher",
            "student from the pretrained base",
        }
        assert metrics["seeds"] == [job["seed"] + i for i in range(seeds)]
        by_seed = metrics["test_by_seed"]
        assert [len(by_seed[name]) for name in rows] == [1, seeds, seeds, seeds]  # the teacher is trained once
        for name, runs in by_seed.items():
            assert rows[name]["accuracy"] == pytest.approx(sum(r["accuracy"] for r in runs) / len(runs))
        for row in rows.values():
            assert {"accuracy", "f1", "latency_ms", "latency_ms_p95", "throughput", "params", "size_mb"} <= set(row)
        assert rows["distilled student"]["params"] < rows["teacher"]["params"]
        card = (out / "README.md").read_text()
        for name in rows:
            assert name in card
        assert "of the teacher's test accuracy" in card and "x its speed" in card and "smaller" in card
        if seeds == 1:
            assert "one seed gives no estimate of seed noise" in card and " ± " not in card
        else:
            assert "mean ± standard deviation over 2 seeds" in card and "95% interval" in card

        model = AutoModelForSequenceClassification.from_pretrained(out)
        tokenizer = AutoTokenizer.from_pretrained(out)
        with torch.no_grad():
            logits = model(
                **tokenizer(["a gorgeous, moving film", "a dull mess"], return_tensors="pt", padding=True)
            ).logits
        assert logits.shape == (2, 2)
        assert model.config.id2label == {0: "negative", 1: "positive"}
    study = optuna.load_study(study_name="roundtrip", storage=url)
    assert study.user_attrs["export"]["prefer"] == "accuracy"


def test_the_card_names_a_distillation_gain_only_outside_seed_noise() -> None:
    from hpo._training import distillation_gain, interval95
    from hpo.study import teacher_warning

    def runs(*accuracies: float) -> list[dict[str, float]]:
        return [{"accuracy": a} for a in accuracies]

    # paired differences 5, 6, 7 points: mean 6, sd 1, 95% t interval 6 ± 4.303 / sqrt(3) = 6 ± 2.48
    assert interval95([5.0, 6.0, 7.0]) == pytest.approx((6.0, 4.303 / 3**0.5))
    clear = {"distilled student": runs(0.85, 0.86, 0.87), "student without teacher": runs(0.80, 0.80, 0.80)}
    assert "Distillation is worth 6.0 accuracy points" in distillation_gain(clear, "distilled student")
    assert "95% interval +3.5 to +8.5" in distillation_gain(clear, "distilled student")
    noisy = {"distilled student": runs(0.85, 0.80, 0.82), "student without teacher": runs(0.80, 0.83, 0.81)}
    text = distillation_gain(noisy, "distilled student")
    assert "within seed noise" in text and "worth" not in text
    one = {"distilled student": runs(0.85), "student without teacher": runs(0.75)}
    assert "one seed gives no estimate of seed noise" in distillation_gain(one, "distilled student")
    # the README screenshot's old teacher: 0.61 accuracy, 0.38 macro-F1 (one label for everything)
    assert "far below its accuracy" in (teacher_warning({"accuracy": 0.61, "f1": 0.38}) or "")
    assert teacher_warning({"accuracy": 0.97, "f1": 0.93, "top_share": 0.88}) is None


def test_the_job_estimate_counts_every_model_s_steps_and_validations_and_each_test_pass() -> None:
    # 3 models x (100 steps x 2 s + 10 validations x 50 rows x 0.1 s) + 4 test passes x 80 rows x 0.1 s
    assert job_seconds(2.0, 0.1, 100, 10, 50, 80, 3) == pytest.approx(3 * (200 + 50) + 4 * 8)
    assert job_seconds(2.0, 0.1, 95, 10, 50, 80, 1) == pytest.approx(190 + 10 * 5 + 2 * 8)  # the last step validates
