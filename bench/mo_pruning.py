"""Hypervolume of a multi-objective search with and without the Pareto-rung pruner, at equal training steps.

The ``synthetic`` objective (accuracy up, latency down; 8 steps per trial, noise 0.01) runs under the real trial
runner and worker loop; each search may spend the same number of training steps (``--budget-trials`` full trials'
worth). Pruned trials give their unspent steps to new trials. Same seeds for both arms. ``--curve rising``: every
setting's accuracy rises the same way toward its final value; ``--curve crossing``: the better a setting ends, the
slower it starts, so early rungs rank trials wrongly (the case where pruning can discard the best students).

    python bench/mo_pruning.py [--seeds 5] [--budget-trials 40] [--curve crossing]

Prints the hypervolume of each run's front of completed trials (reference point: accuracy 0.5, latency 10 ms), the
ratio pruned / unpruned, and the trials the pruner removed from the front: the pruned search's trials are all
re-run to the end without pruning (the objective is deterministic given a trial's parameters and seed), and the
count is how many trials of that unpruned front were pruned.
"""

from __future__ import annotations

import argparse
import statistics

import numpy as np
import optuna
from optuna._hypervolume import compute_hypervolume

from hpo import config_from_dict
from hpo.execution import Budget, Retry, TrialRunner, Worker, trial_seed
from hpo.study import CURVE_PREFIX, apply_params, open_study

STEPS = 8
REFERENCE = np.array([-0.5, 10.0])  # (-accuracy, latency_ms): both minimised


def _config(seed: int, pruner: dict, curve: str) -> dict:
    return {
        "name": f"mo-{pruner['name']}-{seed}",
        "objective": "synthetic",
        "directions": {"accuracy": "maximize", "latency_ms": "minimize"},
        "n_trials": None,
        "timeout": 3600,
        "seed": seed,
        "sampler": {"name": "tpe", "options": {"n_startup_trials": 8}},
        "pruner": pruner,
        "synthetic": {"steps": STEPS, "noise": 0.01, "curve": curve},
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
    reported = [int(k.rsplit("_", 1)[1]) for k in trial.user_attrs if k.startswith(CURVE_PREFIX)]
    return max(reported, default=0)


def _front(points: np.ndarray) -> np.ndarray:
    """Which rows of ``points`` (both columns minimised) no other row dominates."""
    return np.array([not ((points <= p).all(axis=1) & (points < p).any(axis=1)).any() for p in points], dtype=bool)


def _hypervolume(points: np.ndarray) -> float:
    inside = points[(points < REFERENCE).all(axis=1)]
    return compute_hypervolume(inside, REFERENCE) if len(inside) else 0.0


def search(seed: int, pruner: dict, budget_steps: int, curve: str) -> tuple[float, int, int, int]:
    """One search spending ``budget_steps`` steps: (hypervolume of the completed front, trials run, size of the front
    had no trial been pruned, how many trials of that front were pruned)."""
    config = config_from_dict(_config(seed, pruner, curve))
    study = open_study(config, optuna.storages.InMemoryStorage())
    runner = TrialRunner(config)
    worker = Worker(study, runner, Budget(n_trials=None, max_trials=1), max_retries=0, retry=Retry(1))
    while sum(_steps(t) for t in study.trials) < budget_steps:
        worker.ran = 0
        worker.run()
    finals, pruned = [], []
    for t in study.trials:
        if t.state == optuna.trial.TrialState.COMPLETE:
            metrics = t.user_attrs
        else:  # what the trial would have ended at: the same parameters and seed, run to the end
            seed_t = trial_seed(config.seed, t.number)
            metrics = runner.train(apply_params(config, t.params), t.params, seed_t, t.number)
        finals.append([-metrics["accuracy"], metrics["latency_ms"]])
        pruned.append(t.state == optuna.trial.TrialState.PRUNED)
    points, pruned_mask = np.array(finals), np.array(pruned)
    front = _front(points)
    completed = points[~pruned_mask]
    return _hypervolume(completed), len(study.trials), int(front.sum()), int((front & pruned_mask).sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--budget-trials", type=int, default=40)
    parser.add_argument("--curve", choices=["rising", "crossing"], default="rising")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    budget = args.budget_trials * STEPS
    pareto = {
        "name": "pareto",
        "options": {"min_resource": 2, "reduction_factor": 2, "min_trials": 4, "min_dominating": 2},
    }
    print(
        f"budget: {budget} training steps per search ({args.budget_trials} unpruned trials of {STEPS} steps); "
        f"learning curves: {args.curve}"
    )
    print(
        f"{'seed':>4} {'HV no pruning':>14} {'trials':>6} {'HV pareto':>10} {'trials':>6} {'ratio':>6} {'front lost':>10}"
    )
    ratios, lost, fronts = [], 0, 0
    for seed in range(args.seeds):
        hv_none, n_none, _, _ = search(seed, {"name": "none"}, budget, args.curve)
        hv_pareto, n_pareto, front, removed = search(seed, pareto, budget, args.curve)
        ratios.append(hv_pareto / hv_none)
        lost, fronts = lost + removed, fronts + front
        print(
            f"{seed:>4} {hv_none:>14.4f} {n_none:>6} {hv_pareto:>10.4f} {n_pareto:>6} {ratios[-1]:>6.3f} "
            f"{f'{removed}/{front}':>10}"
        )
    print(
        f"hypervolume ratio pareto / none: mean {statistics.mean(ratios):.3f}, min {min(ratios):.3f}, max {max(ratios):.3f}"
    )
    print(
        f"trials of the pruned searches' unpruned fronts that the pruner removed: {lost} of {fronts} "
        "(front lost = pruned / front size, the front as if every trial had run to the end)"
    )


if __name__ == "__main__":
    main()
