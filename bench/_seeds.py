"""Printing for the benchmarks that compare settings over seeds (``lora_vs_full.py``, ``on_policy.py``): a table of
mean +- standard deviation per setting, and the paired per-seed difference of two settings with its 95% t interval."""

from __future__ import annotations

import statistics

from hpo._training import interval95


def summary(runs: dict[str, list[dict[str, float]]], columns: tuple[str, ...], digits: int) -> str:
    """One row per setting of ``runs`` (its metrics, one dict per seed): each column's mean +- standard deviation
    over seeds (nan for one seed), to ``digits`` decimals."""
    width = max(len(name) for name in runs) + 2
    lines = [f"{'setting':<{width}}" + "".join(f"{c:>26}" for c in columns)]
    for name, rows in runs.items():
        cells = []
        for column in columns:
            values = [r[column] for r in rows]
            sd = statistics.stdev(values) if len(values) > 1 else float("nan")
            cells.append(f"{statistics.mean(values):>16.{digits}f} ± {sd:<7.{digits}f}")
        lines.append(f"{name:<{width}}" + "".join(cells))
    return "\n".join(lines)


def paired(first: list[dict[str, float]], second: list[dict[str, float]], column: str, label: str, digits: int) -> str:
    """``column`` of ``second`` - ``first``, paired by seed: the mean difference, its 95% t interval, and "within
    noise" when that interval holds zero."""
    diffs = [b[column] - a[column] for a, b in zip(first, second, strict=True)]
    mean, half = interval95(diffs)
    noise = "  within noise" if mean - half <= 0 <= mean + half else ""
    return (
        f"{column}, {label}, paired by seed: {mean:+.{digits}f} "
        f"(95% interval {mean - half:+.{digits}f} to {mean + half:+.{digits}f}){noise}"
    )
