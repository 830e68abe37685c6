"""The ``synthetic`` objective: a known analytic function of the trial's parameters, in milliseconds.

It exists so that tests and benchmarks exercise orchestration (storage, samplers, pruners, workers, faults) at
scale; the real objectives are tested on real models. Parameters arrive normalised to [0, 1] (u_i).

    quality  = 1 - mean_i (u_i - target)^2                    (1 at u_i = target for every i)
    accuracy = 0.5 + 0.45 * quality + noise,  f1 = accuracy - 0.02
    cost     = 1 + 9 * mean_i u_i                             (larger settings: slower, bigger students)
    latency_ms = cost,  speedup = 10 / cost,  params = 1e6 * cost,  size_mb = params * 4 / 2^20

Intermediate accuracies rise toward the final value as accuracy * (step / steps) ** e: e = 1/2 for every setting
(``curve: rising``), or e = max(1/10, 1/4 + 6 * (quality - 1/2)) (``curve: crossing``: the better a setting ends, the slower it
starts, so curves cross); f1 and val_loss follow them as above. Switches raise a real allocation
failure (``oom_trials``; with ``oom_mib``, a real allocation of that size that fails only under a memory limit), a
non-finite loss (``nan_trials``), a crash (``crash_trials``) or a hang in a C call (``hang_trials``) on chosen trial
numbers.
"""

from __future__ import annotations

import ctypes
import random
import signal
import time
from collections.abc import Callable

from objectives._config import ConfigError, SyntheticArgs
from objectives.evaluation import size_mb
from objectives.training import NonFiniteLoss, Report


def _allocate(mib: float | None) -> None:
    """Allocate and fill ``mib`` MiB, or 1 PiB (which the allocator refuses, as in a real OOM) without a size."""
    import torch

    size = 2**50 if mib is None else int(mib * 2**20)
    torch.empty(size, dtype=torch.uint8).fill_(1)


def _hang() -> None:
    """Block forever in a C call that no signal interrupts: every signal this thread may block is blocked, then
    ``pause(2)`` (which only a signal ends), with the GIL released as ctypes does. Only SIGKILL ends it."""
    signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals() - {signal.SIGKILL, signal.SIGSTOP})
    ctypes.CDLL(None).pause()


def run_synthetic(
    normalised: dict[str, float],
    args: SyntheticArgs,
    trial_number: int,
    seed: int,
    report: Report | None = None,
    on_cost: Callable[[dict[str, float]], None] | None = None,
) -> dict[str, float]:
    """Evaluate the synthetic objective; returns every metric of ``METRICS`` plus ``val_loss`` and ``steps``."""
    if not normalised:
        raise ConfigError("search_space", "the synthetic objective needs at least one parameter")
    start = time.perf_counter()
    values = list(normalised.values())
    cost = 1 + 9 * sum(values) / len(values)
    costs = {
        "latency_ms": cost,
        "latency_ms_p95": cost * 1.1,
        "speedup": 10 / cost,
        "throughput": 1000 / cost,
        "params": 1e6 * cost,
        "size_mb": size_mb(round(1e6 * cost)),
        "gflops": 0.1 * cost,
    }
    if on_cost is not None:
        on_cost(costs)
    quality = 1 - sum((u - args.target) ** 2 for u in values) / len(values)
    accuracy = 0.5 + 0.45 * quality + random.Random(seed).gauss(0, args.noise)
    exponent = 0.5 if args.curve == "rising" else max(0.1, 0.25 + 6 * (quality - 0.5))
    for step in range(1, args.steps + 1):
        time.sleep(args.sleep / args.steps)
        if step == max(1, args.steps // 2):
            if trial_number in args.oom_trials:
                _allocate(args.oom_mib)
            if trial_number in args.nan_trials:
                raise NonFiniteLoss(f"training loss became NaN or infinite by step {step}")
            if trial_number in args.crash_trials:
                raise RuntimeError(f"synthetic crash in trial {trial_number}")
            if trial_number in args.hang_trials:
                _hang()
        if report is not None:
            now = accuracy * (step / args.steps) ** exponent
            report(step, {"accuracy": now, "f1": now - 0.02, "val_loss": 1 - now}, step == args.steps)
    return {
        "accuracy": accuracy,
        "f1": accuracy - 0.02,
        "val_loss": 1 - accuracy,
        "steps": float(args.steps),
        "train_seconds": time.perf_counter() - start,
        "peak_memory_mb": 0.0,
        **costs,
    }
