"""Pruning for multi-objective studies, where Optuna's pruners cannot run (``trial.report`` raises there).

Cost objectives (latency, size, params, FLOPs, throughput) depend on the student's architecture only, so they are
known before training; quality (the study's pruning metric, ``Config.pruning``: its quality objective unless
``pruning_metric`` names another) is reported at successive-halving rungs, signed so that higher is better. At a rung a trial is
pruned only when at least ``min_dominating`` other trials that reached the same rung dominate it: quality at that
rung no lower, every cost objective no worse, and better in at least one. A small, fast student is never pruned
for scoring lower than bigger ones, so the front is not biased toward size.

Rung values and costs are user attributes in the study's storage, so every worker sees every other worker's.
"""

from __future__ import annotations

from dataclasses import dataclass

import optuna

from objectives import QUALITY_METRICS, ConfigError


def rung_attr(rung: int) -> str:
    """User attribute holding a trial's quality (pruning metric, higher is better) at rung ``rung``."""
    return f"rung_{rung}"


@dataclass
class ParetoRungPruner:
    """Successive-halving rungs with Pareto dominance over (validation quality, cost objectives)."""

    min_resource: int = 20
    """Step of the first rung."""
    reduction_factor: int = 3
    """Rung k is at step min_resource * reduction_factor ** k."""
    min_trials: int = 3
    """Other trials that must have reached a rung before anything is pruned there."""
    min_dominating: int = 2
    """Trials that must dominate a trial at a rung to prune it."""

    def __post_init__(self) -> None:
        for key in ("min_resource", "min_trials", "min_dominating"):
            if getattr(self, key) < 1:
                raise ConfigError(f"options.{key}", f"must be >= 1, got {getattr(self, key)}")
        if self.reduction_factor < 2:
            raise ConfigError("options.reduction_factor", f"must be >= 2, got {self.reduction_factor}")

    def rung_of(self, step: int) -> int | None:
        """The highest rung at or below ``step``, or None before the first."""
        if step < self.min_resource:
            return None
        rung = 0
        while self.min_resource * self.reduction_factor ** (rung + 1) <= step:
            rung += 1
        return rung

    def dominators(
        self,
        study: optuna.Study,
        trial_number: int,
        rung: int,
        quality: float,
        costs: dict[str, float],
        directions: dict[str, str],
    ) -> tuple[int, int]:
        """(trials that reached ``rung``, how many of them dominate a trial with ``quality`` and ``costs``)."""
        key = rung_attr(rung)
        peers = dominating = 0
        for other in study.get_trials(deepcopy=False):
            attrs = other.user_attrs
            if other.number == trial_number or key not in attrs or any(m not in attrs for m in costs):
                continue
            peers += 1
            better = [attrs[key] > quality]
            no_worse = attrs[key] >= quality
            for metric, mine in costs.items():
                theirs = attrs[metric]
                sign = 1 if directions[metric] == "minimize" else -1
                no_worse = no_worse and sign * theirs <= sign * mine
                better.append(sign * theirs < sign * mine)
            dominating += int(no_worse and any(better))
        return peers, dominating

    def should_prune(
        self,
        study: optuna.Study,
        trial: optuna.Trial,
        step: int,
        quality: float,
        directions: dict[str, str],
    ) -> bool:
        """Record the trial's quality at the rung ``step`` reached (once) and decide whether to prune it."""
        rung = self.rung_of(step)
        if rung is None or rung_attr(rung) in trial.user_attrs:
            return False
        trial.set_user_attr(rung_attr(rung), quality)
        costs = {m: trial.user_attrs[m] for m in directions if m not in QUALITY_METRICS and m in trial.user_attrs}
        peers, dominating = self.dominators(study, trial.number, rung, quality, costs, directions)
        return peers >= self.min_trials and dominating >= self.min_dominating
