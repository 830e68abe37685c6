"""The search space declared in the config: typed parameters addressed by dotted config paths."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import optuna

from objectives import ConfigError

Choice = bool | int | float | str

MAX_GRID_POINTS = 100_000
"""A grid search queues every point as a trial when the study is created; larger grids are refused."""


@dataclass
class ParamSpec:
    """One searchable parameter, e.g. ``train.lr: {type: float, low: 1e-5, high: 1e-3, log: true}``."""

    type: Literal["float", "int", "categorical"] = "float"
    """``float`` or ``int`` (a range from ``low`` to ``high``), or ``categorical`` (one of ``choices``)."""
    low: float | None = None
    """Lower bound (inclusive) of a float or int range."""
    high: float | None = None
    """Upper bound (inclusive) of a float or int range."""
    log: bool = False
    """Sample the range on a log scale (learning rates, weight decay)."""
    step: float | None = None
    """Quantisation of the range; a grid search enumerates low, low + step, ..., high."""
    choices: list[Choice] | None = None
    """Values of a categorical parameter (numbers, strings or booleans)."""

    def __post_init__(self) -> None:
        if self.type not in ("float", "int", "categorical"):
            raise ConfigError("type", f"must be float, int or categorical, got {self.type!r}")
        if self.type == "categorical":
            if not self.choices:
                raise ConfigError("choices", "a categorical parameter needs a non-empty list of choices")
            for key in ("low", "high", "step"):
                if getattr(self, key) is not None:
                    raise ConfigError(key, "is for float/int ranges; a categorical parameter takes only choices")
            return
        if self.choices is not None:
            raise ConfigError("choices", f"is for categorical parameters; a {self.type} range takes low and high")
        if self.low is None or self.high is None:
            raise ConfigError("low" if self.low is None else "high", f"a {self.type} range needs both low and high")
        if self.low > self.high:
            raise ConfigError("low", f"{self.low} is above high {self.high}")
        if self.log and self.low <= 0:
            raise ConfigError("low", f"a log range needs low > 0, got {self.low}")
        if self.log and self.step is not None:
            raise ConfigError("step", "cannot be combined with log: true (Optuna does not support it)")
        if self.step is not None and self.step <= 0:
            raise ConfigError("step", f"must be > 0, got {self.step}")
        if self.type == "int":
            for key in ("low", "high", "step"):
                value = getattr(self, key)
                if value is not None and value != int(value):
                    raise ConfigError(key, f"an int range needs whole numbers, got {value}")

    def bounds(self) -> list[Choice]:
        """The values a trial can take at the edges: low and high, or every choice (used to validate them)."""
        if self.type == "categorical":
            assert self.choices is not None
            return list(self.choices)
        assert self.low is not None and self.high is not None
        cast = int if self.type == "int" else float
        return [cast(self.low), cast(self.high)]

    def grid_size(self, name: str) -> int:
        """How many values a grid search visits, counted without listing them."""
        if self.type == "categorical":
            assert self.choices is not None
            return len(self.choices)
        assert self.low is not None and self.high is not None
        if self.type == "int":
            return max(0, (int(self.high) - int(self.low)) // int(self.step or 1) + 1)
        if self.step is None:
            raise ConfigError(
                f"search_space.{name}.step",
                "a float range needs a step (or use choices) to be searched by grid",
            )
        ratio = (self.high - self.low) / self.step
        return math.floor(ratio + 1e-9) + 1 if ratio < 1e18 else 10**18  # past any limit (and finite)

    def grid(self, name: str) -> list[Choice]:
        """Every value a grid search visits."""
        if self.type == "categorical":
            assert self.choices is not None
            return list(self.choices)
        assert self.low is not None and self.high is not None
        if self.type == "int":
            return list(range(int(self.low), int(self.high) + 1, int(self.step or 1)))
        count = self.grid_size(name)  # a float range without a step has no grid: a ConfigError
        assert self.step is not None
        return [round(self.low + i * self.step, 12) for i in range(count)]

    def normalise(self, value: Choice) -> float:
        """``value`` mapped to [0, 1]: position in the range (log-scaled when ``log``), or the choice's index."""
        if self.type == "categorical":
            assert self.choices is not None
            return self.choices.index(value) / max(1, len(self.choices) - 1)
        assert self.low is not None and self.high is not None
        if self.high == self.low:
            return 0.0
        if self.log:
            return math.log(float(value) / self.low) / math.log(self.high / self.low)
        return (float(value) - self.low) / (self.high - self.low)

    def suggest(self, trial: optuna.Trial, name: str) -> Choice:
        """Ask ``trial`` for this parameter's value under ``name``."""
        if self.type == "categorical":
            assert self.choices is not None
            return trial.suggest_categorical(name, self.choices)
        assert self.low is not None and self.high is not None
        if self.type == "int":
            return trial.suggest_int(name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(name, self.low, self.high, step=self.step, log=self.log)


SearchSpace = dict[str, ParamSpec]


def suggest_params(trial: optuna.Trial, space: SearchSpace) -> dict[str, Any]:
    """Ask ``trial`` for every parameter of ``space``, in declaration order."""
    return {name: spec.suggest(trial, name) for name, spec in space.items()}


def grid_of(space: SearchSpace) -> dict[str, list[Choice]]:
    """The grid that ``GridSampler`` enumerates for ``space``; one of more than ``MAX_GRID_POINTS`` points is a
    ConfigError naming its largest parameter (the grid is counted, never built, first)."""
    sizes = {name: spec.grid_size(name) for name, spec in space.items()}
    total = math.prod(sizes.values())
    if total > MAX_GRID_POINTS:
        largest = max(sizes, key=sizes.__getitem__)
        raise ConfigError(
            f"search_space.{largest}",
            f"the grid has {total:,} points ({sizes[largest]:,} values here), above the limit of {MAX_GRID_POINTS:,}; "
            "use a larger step, fewer choices or another sampler",
        )
    return {name: spec.grid(name) for name, spec in space.items()}
