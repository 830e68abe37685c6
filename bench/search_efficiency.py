"""Search efficiency: TPE with a pruner against random search without pruning, on the offline movie reviews.

Real fine-tuning trials (a student copied from the bundled all-MiniLM-L6-v2, a small training subset, short trials)
run under the real trial runner and worker loop, in-memory study storage. Both arms search the same space with the
same seeds and may spend the same number of student training steps (``--budget-trials`` full trials' worth);
pruned trials hand their unspent steps to new trials. ``--space wide`` is a first search on a new task (learning
rates over four decades), ``narrow`` the region where nearly every setting trains well; ``--pruner`` is the
tuned arm's pruner (``median`` or ``hyperband``).

    python bench/search_efficiency.py [--space wide] [--pruner median] [--steps 60] [--val-rows 300]
        [--seeds 3] [--budget-trials 12] [--targets 0.76 0.78 0.80]

A search's score after each trial is what the study would report: the best final validation accuracy of its
completed trials (not the peak of a pruned trial's curve). Prints, per target validation accuracy, the training
steps (and seconds) until each search first reached it and the ratio of mean steps TPE+pruner / random (the goal:
at most 1/3); per seed, the steps TPE+pruner needed to reach the best accuracy random search found in its whole
budget, against the steps random search took to find it; then each arm's mean best accuracy within a third, half
and all of the budget. ``--out FILE`` also writes every search's curve (cumulative steps, seconds, best accuracy
after each trial) as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import optuna
import torch

from hpo import config_from_dict
from hpo.execution import Budget, Retry, TrialRunner, Worker, usable_cores
from hpo.study import open_study
from objectives import DataArgs, Workload, prepare_workload

SPACES = {
    # the region where nearly every setting trains well: what one searches after a first look
    "narrow": {
        "train.lr": {"type": "float", "low": 1e-5, "high": 3e-3, "log": True},
        "train.warmup_ratio": {"type": "float", "low": 0.0, "high": 0.3},
        "train.weight_decay": {"type": "float", "low": 0.0, "high": 0.1},
        "train.dropout": {"type": "float", "low": 0.0, "high": 0.3},
        "train.lr_decay": {"type": "float", "low": 0.5, "high": 1.0},
    },
    # a first search on a new task: learning rates over four decades, where many settings barely train
    "wide": {
        "train.lr": {"type": "float", "low": 1e-6, "high": 1e-2, "log": True},
        "train.warmup_ratio": {"type": "float", "low": 0.0, "high": 0.5},
        "train.weight_decay": {"type": "float", "low": 0.0, "high": 0.3},
        "train.dropout": {"type": "float", "low": 0.0, "high": 0.5},
        "train.lr_decay": {"type": "float", "low": 0.3, "high": 1.0},
    },
}
PRUNERS = {
    "median": lambda steps, every: {
        "name": "median",
        "options": {"n_startup_trials": 3, "n_warmup_steps": every},
    },
    "hyperband": lambda steps, every: {
        "name": "hyperband",
        "options": {"min_resource": every, "max_resource": steps, "reduction_factor": 3},
    },
}
TUNED = "tpe+pruner"


def arms(pruner: str, steps: int, every: int) -> dict[str, tuple[dict, dict]]:
    """The two searches compared: random without pruning, and TPE with ``pruner``."""
    return {
        "random": ({"name": "random"}, {"name": "none"}),
        TUNED: ({"name": "tpe", "options": {"n_startup_trials": 4}}, PRUNERS[pruner](steps, every)),
    }


def _config(
    arm: tuple[dict, dict], name: str, seed: int, data: DataArgs, space: dict, args: argparse.Namespace
) -> dict:
    sampler, pruner = arm
    return {
        "name": f"efficiency-{name.replace('+', '-')}-{seed}",  # a study name has no "+"
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
        "student": {"num_layers": args.layers},
        "train": {"max_steps": args.steps, "batch_size": args.batch_size, "eval_every": args.eval_every},
        "search_space": space,
    }


def _steps(trial: optuna.trial.FrozenTrial) -> int:
    """Training steps a trial consumed: all of them when complete, up to its last report when pruned."""
    return int(trial.user_attrs.get("steps") or max(trial.intermediate_values, default=0))


def _accuracy(trial: optuna.trial.FrozenTrial) -> float:
    """What the study reports for the trial: the final validation accuracy of a completed trial; a pruned or
    failed trial scores nothing (the peak of a pruned trial's curve is not a model anyone gets)."""
    return trial.value if trial.state == optuna.trial.TrialState.COMPLETE and trial.value is not None else 0.0


def search(config_dict: dict, work: Workload, budget: int) -> list[tuple[int, float, float]]:
    """One search spending ``budget`` steps: (cumulative steps, cumulative seconds, best accuracy) after each trial."""
    config = config_from_dict(config_dict)
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


def matching(curves: dict[str, list], budget: int) -> None:
    """Print, per seed, the steps until TPE+pruner matched random search's final best, against random's own."""
    cells, ratios = [], []
    for random_curve, tuned_curve in zip(curves["random"], curves[TUNED], strict=True):
        target = random_curve[-1][2]
        own, tuned = first_reaching(random_curve, target, budget), first_reaching(tuned_curve, target, budget)
        cells.append(f"{target:.3f}: random {own[0]}, {TUNED} {tuned[0]}{'' if tuned[2] else '*'}")
        ratios.append(tuned[0] / own[0])
    print(f"random search's best per seed, steps to reach it: {' | '.join(cells)}")
    print(f"ratio of steps {TUNED}/random to random's best: " + " ".join(f"{r:.2f}" for r in ratios))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--budget-trials", type=int, default=12)
    parser.add_argument("--targets", type=float, nargs="+", default=[0.76, 0.78, 0.80])
    parser.add_argument("--space", choices=sorted(SPACES), default="wide")
    parser.add_argument("--pruner", choices=sorted(PRUNERS), default="median")
    parser.add_argument("--steps", type=int, default=60, help="training steps of a full trial")
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--layers", type=int, default=2, help="student depth")
    parser.add_argument("--max-length", type=int, default=48)
    parser.add_argument("--rows", type=int, default=3000, help="training rows")
    parser.add_argument("--val-rows", type=int, default=300)
    parser.add_argument("--out", help="write every search's curve to this JSON file")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    torch.set_num_threads(usable_cores())
    data = DataArgs(max_length=args.max_length, max_train_rows=args.rows, max_val_rows=args.val_rows)
    work = prepare_workload(data, "minilm-l6")
    budget = args.budget_trials * args.steps
    compared = arms(args.pruner, args.steps, args.eval_every)
    print(
        f"{args.space} space, TPE + {args.pruner} pruner vs random; budget {budget} steps per search "
        f"({args.budget_trials} full trials of {args.steps} steps, batch {args.batch_size}, {args.layers}-layer "
        f"student); {len(work.train)} train / {len(work.validation)} validation rows"
    )
    curves: dict[str, list] = {name: [] for name in compared}
    for seed in range(args.seeds):
        for name, arm in compared.items():
            curve = search(_config(arm, name, seed, data, SPACES[args.space], args), work, budget)
            curves[name].append(curve)
            print(f"{name:<11} seed {seed}: {len(curve):>3} trials, {curve[-1][1]:5.0f} s, best {curve[-1][2]:.3f}")
    print("\nsteps (seconds) until a search first reached the target; a miss counts as the whole budget, marked *")
    for target in args.targets:
        cells, means = [], {}
        for name in compared:
            hits = [first_reaching(c, target, budget) for c in curves[name]]
            means[name] = statistics.mean(h[0] for h in hits)
            cells.append(f"{name} " + " ".join(f"{s}{'' if ok else '*'}({t:.0f})" for s, t, ok in hits))
        ratio = means[TUNED] / means["random"]
        print(f"target {target:.2f}: " + " | ".join(cells) + f" | ratio of mean steps {TUNED}/random {ratio:.3f}")
    matching(curves, budget)
    for share in (1 / 3, 1 / 2, 1):
        at = round(budget * share)
        best = {name: statistics.mean(best_within(c, at) for c in curves[name]) for name in compared}
        print(f"mean best accuracy within {at} steps: " + ", ".join(f"{a} {v:.3f}" for a, v in best.items()))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"args": vars(args), "curves": curves}, f)


if __name__ == "__main__":
    main()
