"""Constraints on trial metrics, e.g. ``latency_ms <= 5``: in configs, and in ``hpo export --pick``."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from objectives import METRICS, ConfigError

_EXPR = re.compile(r"^\s*(?:(?P<metric>[a-z_0-9]+)\s*)?(?P<op><=|>=)\s*(?P<bound>[-+0-9.eE]+)\s*$")


@dataclass(frozen=True)
class Constraint:
    """``metric op bound``; feasible when :meth:`violation` <= 0 (Optuna's convention for ``set_constraint``)."""

    metric: str
    op: Literal["<=", ">="]
    bound: float

    def violation(self, value: float) -> float:
        """How far ``value`` is past the bound: value - bound for ``<=``, bound - value for ``>=``."""
        return value - self.bound if self.op == "<=" else self.bound - value

    def __str__(self) -> str:
        return f"{self.metric} {self.op} {self.bound:g}"


def parse_constraint(text: str, key: str, metric: str | None = None, metrics: tuple[str, ...] = METRICS) -> Constraint:
    """Parse ``"latency_ms <= 3"`` (or ``"<= 3"`` with ``metric`` given) on one of ``metrics`` (the task's);
    errors name ``key``."""
    match = _EXPR.match(str(text))
    name = (match["metric"] if match else None) or metric
    if match is None or name is None:
        raise ConfigError(key, f"expected 'METRIC <= NUMBER' or 'METRIC >= NUMBER', got {text!r}")
    if metric is not None and match["metric"] not in (None, metric):
        raise ConfigError(key, f"names {match['metric']!r} but constrains {metric!r}; write e.g. '<= 5'")
    if name not in metrics:
        raise ConfigError(key, f"unknown metric {name!r}; valid: {', '.join(metrics)}")
    try:
        bound = float(match["bound"])
    except ValueError:
        raise ConfigError(key, f"{match['bound']!r} is not a number") from None
    return Constraint(name, match["op"], bound)  # type: ignore[arg-type]
