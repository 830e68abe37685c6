"""``train.compile``: the training forward through one process-wide ``torch.compile``d function, so Dynamo compiles
once per architecture per process; the compile time measured apart from training; one warning once Dynamo's
recompile limit is reached (after it, new architectures would silently train eager)."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from typing import Any

import torch

log = logging.getLogger(__name__)

BACKEND: Any = "inductor"
"""The ``torch.compile`` backend (a test counts compilations with ``torch._dynamo.testing.CompileCounter``)."""

_COMPILED: dict[Any, Callable[..., Any]] = {}
_WARNED: list[bool] = []  # one warning per process


def _forward(model: torch.nn.Module, **inputs: Any) -> Any:
    return model(**inputs)


def compiled_forward(model: torch.nn.Module) -> Callable[..., Any]:
    """``model``'s forward through the process's one compiled function (dynamic shapes: batch and sequence length
    vary). Dynamo keeps its graphs on that function's code, guarded on what the model is (its classes, config,
    module attributes such as dropout probabilities, training mode; parameters are graph inputs), so a student of an
    architecture compiled before in this process, in a later trial, reuses the graph rather than compiling again
    (a per-model ``torch.compile(model)`` wrapper would reuse it too, through the shared ``forward`` code, but this
    makes the one cache explicit and lets :func:`warn_at_recompile_limit` count its entries)."""
    if BACKEND not in _COMPILED:
        _COMPILED[BACKEND] = torch.compile(_forward, dynamic=True, backend=BACKEND)
    return functools.partial(_COMPILED[BACKEND], model)


def graphs_compiled() -> int:
    """Graphs Dynamo has compiled in this process so far (any function)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def warn_at_recompile_limit() -> None:
    """Log one warning per process once the compiled forward holds ``torch._dynamo.config.recompile_limit`` graphs
    (one per architecture, dropout and attention implementation seen): Dynamo then runs any further one eager,
    logging it only at its own logger, so a long-lived worker would train later trials uncompiled unnoticed."""
    from torch._dynamo.eval_frame import _debug_get_cache_entry_list

    limit = torch._dynamo.config.recompile_limit
    entries = len(_debug_get_cache_entry_list(_forward.__code__))
    if entries >= limit and not _WARNED:
        _WARNED.append(True)
        log.warning(
            "train.compile: this process has compiled the training forward %d times, Dynamo's recompile limit "
            "(torch._dynamo.config.recompile_limit = %d; one compile per student architecture, dropout and "
            "attention implementation): students it has not compiled yet train eager (uncompiled, slower) from now "
            "on; restart the worker or raise the limit",
            entries,
            limit,
        )


class CompileClock:
    """Measures the compile time of a compiled training run as its first optimiser step's extra time over the
    run's typical step (compiling happens there: Dynamo and the backend's forward, then its backward at the first
    backward pass). Created as the loop starts; :meth:`first_step` is called after the first optimiser step (one
    device sync, so its time is the step's own)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.graphs = graphs_compiled()
        self.start = time.perf_counter()
        self.first = 0.0
        self.compiled = False

    def first_step(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.first = time.perf_counter() - self.start
        self.compiled = graphs_compiled() > self.graphs
        if self.compiled:
            warn_at_recompile_limit()

    def seconds(self, steps: int, eval_seconds: float) -> float:
        """The compile time of a run of ``steps`` optimiser steps whose validations took ``eval_seconds``: 0 when
        the first step compiled nothing (an architecture compiled before), else the first step's time less the
        mean of the others (the whole first step when there is no other)."""
        if not self.compiled:
            return 0.0
        others = time.perf_counter() - self.start - self.first - eval_seconds
        typical = others / (steps - 1) if steps > 1 else 0.0
        return max(0.0, self.first - typical)
