"""Samplers and pruners by name, on real Optuna studies in SQLite."""

import uuid
from pathlib import Path

import optuna
import pytest

from hpo import PRUNERS, SAMPLERS, ParamSpec, grid_of, make_pruner, make_sampler, suggest_params
from hpo.study import ParetoRungPruner
from objectives import ConfigError

SPACE = {
    "distill.temperature": ParamSpec(type="float", low=1.0, high=4.0, step=1.0),
    "train.lr": ParamSpec(type="float", low=1e-5, high=1e-3, log=True),
    "student.num_layers": ParamSpec(type="int", low=1, high=3),
    "train.batch_size": ParamSpec(type="categorical", choices=[16, 32]),
}


def test_grid_values() -> None:
    grid = grid_of({k: v for k, v in SPACE.items() if k != "train.lr"})
    assert grid == {
        "distill.temperature": [1.0, 2.0, 3.0, 4.0],
        "student.num_layers": [1, 2, 3],
        "train.batch_size": [16, 32],
    }


@pytest.mark.parametrize(
    ("name", "n_objectives"),
    # cmaes is single-objective; config validation rejects it for two objectives (tested in test_config.py)
    [(name, n) for name in SAMPLERS for n in (1, 2) if (name, n) != ("cmaes", 2)],
)
def test_every_sampler_runs_a_study(name: str, n_objectives: int, tmp_path: Path) -> None:
    space = {k: v for k, v in SPACE.items() if k != "train.lr"} if name == "grid" else SPACE
    sampler = make_sampler(name, {}, space, seed=1, n_objectives=n_objectives)
    study = optuna.create_study(
        storage=f"sqlite:///{tmp_path}/s.db", sampler=sampler, directions=["maximize"] * n_objectives
    )

    def objective(trial: optuna.Trial) -> list[float]:
        p = suggest_params(trial, space)
        score = -abs(p["distill.temperature"] - 2) - p["student.num_layers"] / 10
        return [score, -p["student.num_layers"]][:n_objectives]

    study.optimize(objective, n_trials=12)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 12
    for t in done:
        assert t.params["distill.temperature"] in (1.0, 2.0, 3.0, 4.0)
        assert t.params["train.batch_size"] in (16, 32)


def test_tpe_is_multivariate_with_constant_liar() -> None:
    sampler = make_sampler("tpe", {}, SPACE, seed=0, n_objectives=1)
    assert sampler._multivariate is True and sampler._constant_liar is True


@pytest.mark.parametrize("name", [n for n in PRUNERS if n != "pareto"])
def test_every_single_objective_pruner_builds(name: str) -> None:
    options = {"lower": 0.5} if name == "threshold" else {}
    assert isinstance(make_pruner(name, options, 1), optuna.pruners.BasePruner)


def test_pareto_pruner_is_for_multi_objective_studies() -> None:
    assert isinstance(make_pruner("pareto", {"min_trials": 2}, 2), ParetoRungPruner)
    with pytest.raises(ConfigError, match=r"pruner\.name: pareto is for multi-objective studies"):
        make_pruner("pareto", {}, 1)
    with pytest.raises(ConfigError, match=r"pruner.options.reduction_factor: must be >= 2"):
        make_pruner("pareto", {"reduction_factor": 1}, 2)


def test_threshold_pruner_prunes_in_a_real_study() -> None:
    study = optuna.create_study(direction="maximize", pruner=make_pruner("threshold", {"lower": 0.5}, 1))

    def objective(trial: optuna.Trial) -> float:
        trial.report(0.1, 1)
        if trial.should_prune():
            raise optuna.TrialPruned()
        return 0.1

    study.optimize(objective, n_trials=2)
    assert all(t.state == optuna.trial.TrialState.PRUNED for t in study.trials)


def _params(url: str, name: str) -> list[tuple]:
    return [tuple(sorted(t.params.items())) for t in optuna.load_study(study_name=name, storage=url).trials]


def test_a_fresh_study_is_reproducible_and_a_resumed_one_proposes_new_parameters(tmp_path: Path) -> None:
    from hpo import config_from_dict
    from hpo.execution import run

    def config(n_trials: int) -> object:
        space = {"train.lr": {"type": "float", "low": 1e-5, "high": 1e-3, "log": True}}
        data = {"name": "s", "objective": "synthetic", "n_trials": n_trials, "sampler": {"name": "random"}}
        return config_from_dict({**data, "pruner": {"name": "none"}, "search_space": space})

    first, other = f"sqlite:///{tmp_path}/a.db", f"sqlite:///{tmp_path}/b.db"
    run(config(3), first)
    run(config(3), other)
    assert _params(first, "s") == _params(other, "s")  # same seed, fresh study: the same trials
    run(config(6), first)  # resumed with a larger budget: a seeded sampler must not replay the first three
    params = _params(first, "s")
    assert len(params) == 6 and len(set(params)) == 6


def test_pareto_rungs_rank_a_minimised_pruning_metric_the_right_way_round(tmp_path: Path) -> None:
    from hpo import config_from_dict
    from hpo.execution import run
    from hpo.study import rung_attr

    name = f"mo-loss-{uuid.uuid4().hex[:8]}"
    config = {
        "name": name,
        "objective": "synthetic",
        "directions": {"val_loss": "minimize", "latency_ms": "minimize"},
        "n_trials": 16,
        "sampler": {"name": "random"},
        "pruner": {"name": "pareto", "options": {"min_resource": 1, "reduction_factor": 2, "min_trials": 2}},
        "synthetic": {"steps": 4},
        "search_space": {"train.lr": {"type": "float", "low": 1e-5, "high": 1e-3, "log": True}},
    }
    url = f"sqlite:///{tmp_path}/study.db"
    run(config_from_dict(config), url)
    trials = optuna.load_study(study_name=name, storage=url).trials
    assert any(t.state == optuna.trial.TrialState.PRUNED for t in trials)
    for trial in trials:
        attrs = trial.user_attrs
        for rung, step in ((0, 1), (1, 2)):
            if rung_attr(rung) in attrs:  # quality at a rung: the validation loss, negated so higher is better
                assert attrs[rung_attr(rung)] == -attrs[f"val_step_{step}"]
        if trial.state == optuna.trial.TrialState.COMPLETE:
            assert attrs["val_step_4"] == attrs["val_loss"] == trial.values[0]
            assert rung_attr(2) not in attrs  # the final validation is never a rung a trial can be pruned at
