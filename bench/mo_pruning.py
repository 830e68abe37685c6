"""Hypervolume of a multi-objective search with and without the Pareto-rung pruner, at equal training steps.

The ``synthetic`` objective (accuracy up, latency down; 8 steps per trial, noise 0.01) runs under the real trial
runner and worker loop; each search may spend the same number of training steps (``--budget-trials`` full trials'
worth). Pruned trials give their unspent steps to new trials. Same seeds for both arms.

    python bench/mo_pruning.py [--seeds 5] [--budget-trials 40]

Prints the hypervolume of each run's front of completed trials (reference point: accuracy 0.5, latency 10 ms) and
the ratio pruned / unpruned.
"""

from __future__ import annotations

import argparse
import statistics

import numpy as np
import optuna
from optuna._hypervolume import compute_hypervolume

from hpo import config_from_dict
from hpo._runner import TrialRunner
from hpo._study import open_study
from hpo._worker import Budget, Retry, Worker

STEPS = 8
REFERENCE = np.array([-0.5, 10.0])  # (-accuracy, latency_ms): both minimised


def _config(seed: int, pruner: dict) -> dict:
    return {
        "name": f"mo-{pruner['name']}-{seed}",
        "objective": "synthetic",
        "directions": {"accuracy": "maximize", "latency_ms": "minimize"},
        "n_trials": None,
        "timeout": 3600,
        "seed": seed,
        "sampler": {"name": "tpe", "options": {"n_startup_trials": 8}},
        "pruner": pruner,
        "synthetic": {"steps": STEPS, "noise": 0.01},
        "search_space": {
            "train.lr": {"type": "float", "low": 1e-5, "high": 1e-3, "log": True},
            "distill.temperature": {"type": "float", "low": 1.0, "high": 8.0},
            "student.num_layers": {"type": "int", "low": 1, "high": 6},
        },
    }


def _steps(trial: optuna.trial.FrozenTrial) -> int:
    """Training steps a trial consumed: all of them, or up to its last report when pruned."""
    if trial.state == optuna.trial.TrialState.COMPLETE:
        return STEPS
    reported = [int(k.rsplit("_", 1)[1]) for k in trial.user_attrs if k.startswith("val_accuracy_step_")]
    return max(reported, default=0)


def search(seed: int, pruner: dict, budget_steps: int) -> tuple[float, int]:
    """(hypervolume of the completed front, trials run) for one search spending ``budget_steps`` steps."""
    config = config_from_dict(_config(seed, pruner))
    study = open_study(config, optuna.storages.InMemoryStorage())
    runner = TrialRunner(config)
    worker = Worker(study, runner, Budget(n_trials=None, max_trials=1), max_retries=0, retry=Retry(1))
    while sum(_steps(t) for t in study.trials) < budget_steps:
        worker.ran = 0
        worker.run()
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    points = np.array([[-t.user_attrs["accuracy"], t.user_attrs["latency_ms"]] for t in done])
    inside = points[(points < REFERENCE).all(axis=1)]
    return (compute_hypervolume(inside, REFERENCE) if len(inside) else 0.0), len(study.trials)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--budget-trials", type=int, default=40)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    budget = args.budget_trials * STEPS
    pareto = {
        "name": "pareto",
        "options": {"min_resource": 2, "reduction_factor": 2, "min_trials": 4, "min_dominating": 2},
    }
    print(f"budget: {budget} training steps per search ({args.budget_trials} unpruned trials of {STEPS} steps)")
    print(f"{'seed':>4} {'HV no pruning':>14} {'trials':>6} {'HV pareto':>10} {'trials':>6} {'ratio':>6}")
    ratios = []
    for seed in range(args.seeds):
        hv_none, n_none = search(seed, {"name": "none"}, budget)
        hv_pareto, n_pareto = search(seed, pareto, budget)
        ratios.append(hv_pareto / hv_none)
        print(f"{seed:>4} {hv_none:>14.4f} {n_none:>6} {hv_pareto:>10.4f} {n_pareto:>6} {ratios[-1]:>6.3f}")
    print(
        f"hypervolume ratio pareto / none: mean {statistics.mean(ratios):.3f}, min {min(ratios):.3f}, max {max(ratios):.3f}"
    )


if __name__ == "__main__":
    main()
