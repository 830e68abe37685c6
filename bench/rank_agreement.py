"""How closely a trial on 2 ranks (CPU, gloo) trains the model one process does: the same finetune trial of a tiny
BERT (``tests.conftest.tiny_bert``, 4 layers of width 64) on a generated labelled CSV of 160 reviews (global batch 16,
6 steps, validated every 2), run in one process and on 2 ranks, per strategy (``ddp``, ``fsdp``) and gradient
accumulation (1, 2 micro-batches a step). Prints the largest |difference| of the validation loss over the 3
validations and of the final val_loss / accuracy / F1, per arm and seed.

    python bench/rank_agreement.py [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import optuna

from hpo.execution import prepare_runner, trial_seed
from hpo.study import config_from_dict
from tests.conftest import sentiment_csv, tiny_config

PARAMS = {"student.num_layers": 2}


def config(data: str, seed: int, devices: int, strategy: str, accumulate: int) -> Any:
    train = {"max_steps": 6, "lr": 1e-2, "warmup_ratio": 0.0, "batch_size": 16, "eval_every": 2, "dropout": 0.0}
    train.update({"grad_accum_steps": accumulate, "devices": devices, "strategy": strategy})
    return config_from_dict(
        tiny_config(
            "agree",
            objective="finetune",
            seed=seed,
            n_trials=1,
            data={"name": data, "max_length": 32},
            pruning_metric="val_loss",
            train=train,
            search_space={"student.num_layers": {"type": "int", "low": 2, "high": 2}},
        )
    )


def one_process(cfg: Any, seed: int) -> tuple[list[float], dict[str, float]]:
    curve: list[float] = []
    metrics = prepare_runner(cfg, optuna.create_study()).train(
        cfg, PARAMS, trial_seed(seed, 0), 0, lambda step, scores, final: curve.append(scores["val_loss"])
    )
    return curve, metrics


def two_ranks(cfg: Any, seed: int) -> tuple[list[float], dict[str, float]]:
    study = optuna.create_study(direction="maximize")  # the one parameter has one value: PARAMS
    study.optimize(prepare_runner(cfg, study), n_trials=1)
    [trial] = study.trials
    assert trial.user_attrs["seed"] == trial_seed(seed, 0), "the trial's seed is not the 1-process run's"
    return [-trial.intermediate_values[s] for s in sorted(trial.intermediate_values)], trial.user_attrs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    data = sentiment_csv(Path(tempfile.mkdtemp()) / "reviews.csv", rows=160)
    print("strategy accum seed  max|d val_loss| curve  |d val_loss|  |d accuracy|  |d f1|")
    for strategy in ("ddp", "fsdp"):
        for accumulate in (1, 2):
            for seed in args.seeds:
                curve, alone = one_process(config(data, seed, 1, "ddp", accumulate), seed)
                ranks, spread = two_ranks(config(data, seed, 2, strategy, accumulate), seed)
                assert len(curve) == len(ranks) == 3
                worst = max(abs(a - b) for a, b in zip(curve, ranks, strict=True))
                d = {k: abs(alone[k] - spread[k]) for k in ("val_loss", "accuracy", "f1")}
                print(
                    f"{strategy:8s} {accumulate:5d} {seed:4d}  {worst:21.2e}  {d['val_loss']:12.2e}  "
                    f"{d['accuracy']:12.2e}  {d['f1']:6.2e}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
