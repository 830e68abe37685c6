"""Search efficiency: TPE with a median pruner against random search without pruning, on the offline movie reviews.

Real fine-tuning trials (a 2-layer student copied from the bundled all-MiniLM-L6-v2, a small training subset, short
trials) run under the real trial runner and worker loop, in-memory study storage. Both arms search the same space
with the same seeds and may spend the same number of student training steps (``--budget-trials`` full trials'
worth); pruned trials hand their unspent steps to new trials.

    python bench/search_efficiency.py [--seeds 3] [--budget-trials 12] [--targets 0.76 0.78 0.80]

Prints, per target validation accuracy, the training steps (and seconds) until each search first reached it and
the ratio of mean steps TPE+pruner / random (the goal: at most 1/3); then each arm's mean best accuracy within a
third, half and all of the budget.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import optuna
import torch

from hpo import config_from_dict
from hpo._runner import TrialRunner
from hpo._study import open_study
from hpo._worker import Budget, Retry, Worker
from objectives import DataArgs, Workload, prepare_workload

STEPS = 60
SPACE = {
    "train.lr": {"type": "float", "low": 1e-5, "high": 3e-3, "log": True},
    "train.warmup_ratio": {"type": "float", "low": 0.0, "high": 0.3},
    "train.weight_decay": {"type": "float", "low": 0.0, "high": 0.1},
    "train.dropout": {"type": "float", "low": 0.0, "high": 0.3},
    "train.lr_decay": {"type": "float", "low": 0.5, "high": 1.0},
}
ARMS = {
    "random": ({"name": "random"}, {"name": "none"}),
    "tpe+median": (
        {"name": "tpe", "options": {"n_startup_trials": 4}},
        {"name": "median", "options": {"n_startup_trials": 3, "n_warmup_steps": 10}},
    ),
}


def _config(arm: str, seed: int, data: DataArgs) -> dict:
    sampler, pruner = ARMS[arm]
    return {
        "name": f"efficiency-{arm}-{seed}",
        "objective": "finetune",
        "directions": {"accuracy": "maximize"},
        "n_trials": None,
        "timeout": 3600,  # the step budget below ends each search; the study itself needs an end
        "seed": seed,
        "sampler": sampler,
        "pruner": pruner,
        "data": {
            "max_length": data.max_length,
            "max_train_rows": data.max_train_rows,
            "max_val_rows": data.max_val_rows,
        },
        "student": {"num_layers": 2},
        "train": {"max_steps": STEPS, "batch_size": 32, "eval_every": 10},
        "search_space": SPACE,
    }


def _steps(trial: optuna.trial.FrozenTrial) -> int:
    """Training steps a trial consumed: all of them when complete, up to its last report when pruned."""
    return int(trial.user_attrs.get("steps") or max(trial.intermediate_values, default=0))


def _accuracy(trial: optuna.trial.FrozenTrial) -> float:
    """Best validation accuracy the trial showed (its final value, or its best report when pruned)."""
    values = list(trial.intermediate_values.values()) + (trial.values or [])
    return max(values, default=0.0)


def search(arm: str, seed: int, work: Workload, data: DataArgs, budget: int) -> list[tuple[int, float, float]]:
    """One search spending ``budget`` steps: (cumulative steps, cumulative seconds, best accuracy) after each trial."""
    config = config_from_dict(_config(arm, seed, data))
    study = open_study(config, optuna.storages.InMemoryStorage())
    worker = Worker(
        study, TrialRunner(config, work), Budget(n_trials=None, max_trials=1), max_retries=0, retry=Retry(1)
    )
    curve, steps, seconds, best = [], 0, 0.0, 0.0
    while steps < budget:
        start = time.perf_counter()
        worker.ran = 0
        worker.run()
        seconds += time.perf_counter() - start
        trial = study.trials[-1]
        steps += _steps(trial)
        best = max(best, _accuracy(trial))
        curve.append((steps, seconds, best))
    return curve


def first_reaching(curve: list[tuple[int, float, float]], target: float, budget: int) -> tuple[int, float, bool]:
    """(steps, seconds, reached) when the search first reached ``target``; the whole budget when it never did."""
    return next(((s, t, True) for s, t, best in curve if best >= target), (budget, curve[-1][1], False))


def best_within(curve: list[tuple[int, float, float]], steps: int) -> float:
    """Best accuracy among the trials that had finished within ``steps`` steps of the search."""
    return max((best for s, _, best in curve if s <= steps), default=0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--budget-trials", type=int, default=12)
    parser.add_argument("--targets", type=float, nargs="+", default=[0.76, 0.78, 0.80])
    parser.add_argument("--rows", type=int, default=3000)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    torch.set_num_threads(os.cpu_count() or 1)
    data = DataArgs(max_length=48, max_train_rows=args.rows, max_val_rows=300)
    work = prepare_workload(data, "minilm-l6")
    budget = args.budget_trials * STEPS
    print(
        f"budget {budget} steps per search ({args.budget_trials} full trials of {STEPS} steps, batch 32); "
        f"{len(work.train)} train / {len(work.validation)} validation rows"
    )
    curves: dict[str, list] = {arm: [] for arm in ARMS}
    for seed in range(args.seeds):
        for arm in ARMS:
            curve = search(arm, seed, work, data, budget)
            curves[arm].append(curve)
            print(f"{arm:<11} seed {seed}: {len(curve):>3} trials, {curve[-1][1]:5.0f} s, best {curve[-1][2]:.3f}")
    print("\nsteps (seconds) until a search first reached the target; a miss counts as the whole budget, marked *")
    for target in args.targets:
        cells, means = [], {}
        for arm in ARMS:
            hits = [first_reaching(c, target, budget) for c in curves[arm]]
            means[arm] = statistics.mean(h[0] for h in hits)
            cells.append(f"{arm} " + " ".join(f"{s}{'' if ok else '*'}({t:.0f})" for s, t, ok in hits))
        ratio = means["tpe+median"] / means["random"]
        print(f"target {target:.2f}: " + " | ".join(cells) + f" | ratio of mean steps tpe+median/random {ratio:.3f}")
    for share in (1 / 3, 1 / 2, 1):
        at = round(budget * share)
        best = {arm: statistics.mean(best_within(c, at) for c in curves[arm]) for arm in ARMS}
        print(f"mean best accuracy within {at} steps: " + ", ".join(f"{a} {v:.3f}" for a, v in best.items()))


if __name__ == "__main__":
    main()
