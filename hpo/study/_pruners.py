"""Pruners by name. Optuna's stop single-objective trials from their reported validation score (the study's pruning
metric, ``Config.pruning``); ``pareto`` prunes multi-objective trials by dominance at successive-halving rungs (see
:mod:`hpo.study._pareto_pruner`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import optuna

from hpo.study._pareto_pruner import ParetoRungPruner
from hpo.study._samplers import _construct
from objectives import ConfigError


def _patient(options: dict[str, Any]) -> optuna.pruners.BasePruner:
    # Patience on top of the median rule: a trial is pruned only after `patience` reports without improvement.
    options = {"patience": 2, **options}
    wrapped = options.pop("wrapped", "median")
    if wrapped not in PRUNERS or wrapped == "patient":
        valid = [n for n in PRUNERS if n != "patient"]
        raise ConfigError("options.wrapped", f"unknown pruner {wrapped!r}; valid: {', '.join(valid)}")
    return _construct(optuna.pruners.PatientPruner, options, PRUNERS[wrapped]({}))


def _threshold(options: dict[str, Any]) -> optuna.pruners.BasePruner:
    if "lower" not in options and "upper" not in options:
        raise ConfigError("options", "threshold needs lower and/or upper, e.g. {lower: 0.6}")
    return _construct(optuna.pruners.ThresholdPruner, options)


PRUNERS: dict[str, Callable[[dict[str, Any]], optuna.pruners.BasePruner]] = {
    "none": lambda options: _construct(optuna.pruners.NopPruner, options),
    "median": lambda options: _construct(optuna.pruners.MedianPruner, options),
    "percentile": lambda options: _construct(optuna.pruners.PercentilePruner, {"percentile": 25.0, **options}),
    "sha": lambda options: _construct(optuna.pruners.SuccessiveHalvingPruner, options),
    "hyperband": lambda options: _construct(optuna.pruners.HyperbandPruner, options),
    "patient": _patient,
    "threshold": _threshold,
    "pareto": lambda options: _construct(ParetoRungPruner, options),
}


WILCOXON = (
    "Optuna's WilcoxonPruner takes each step for an evaluation instance (a validation example or fold) and pairs "
    "it with the best trial's score on that instance, while a trial here reports one validation score per "
    "training step"
)
"""Why ``pruner: wilcoxon`` is refused: its steps are instance ids; ours are training steps, whose scores are neither
paired instances nor independent, so its test would compare learning curves as if they were."""


def make_pruner(name: str, options: dict[str, Any], n_objectives: int) -> optuna.pruners.BasePruner | ParetoRungPruner:
    """The pruner ``name``; multi-objective studies take ``pareto`` or ``none`` (Optuna's cannot prune them)."""
    if name == "wilcoxon":
        single = [n for n in PRUNERS if n != "pareto"]
        raise ConfigError("pruner.name", f"wilcoxon is not offered: {WILCOXON}; use {', '.join(single)}")
    if name not in PRUNERS:
        raise ConfigError("pruner.name", f"unknown pruner {name!r}; valid: {', '.join(PRUNERS)}")
    if n_objectives > 1 and name not in ("none", "pareto"):
        raise ConfigError(
            "pruner.name", f"{name} cannot prune a multi-objective study (Optuna reports one value); use pareto or none"
        )
    if n_objectives == 1 and name == "pareto":
        raise ConfigError("pruner.name", "pareto is for multi-objective studies; use median, sha, hyperband, ...")
    try:
        return PRUNERS[name](dict(options))
    except ConfigError as exc:
        raise exc.under("pruner") from None
