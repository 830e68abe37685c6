"""Cost measurements kept once per architecture, hardware and input: a store per process, or one per study."""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Callable
from typing import Any, Protocol

import torch

from objectives.evaluation._metrics import hardware, torch_threads
from objectives.students import count_parameters, quantization


class CostStore(Protocol):
    """Where measured costs are kept, by a key naming the architecture, hardware and input: a dict per process
    by default; a study passes one shared by all its workers, so every trial of an architecture on the same
    hardware reports the same latency, whichever worker ran it and when.

    A store may also have ``measuring()``, a context manager :func:`stored_cost` measures under (a study's holds
    its GPU idle of the other worker processes on it: :class:`hpo.execution._costs.StudyCosts`)."""

    def get(self, key: str, /) -> dict[str, float] | None: ...

    def setdefault(self, key: str, value: dict[str, float], /) -> dict[str, float]:
        """Keep ``value`` unless the key already has one (another worker measured first); return the kept one."""
        ...


_COSTS: dict[str, dict[str, float]] = {}

COST_THREADS = 1
"""Torch threads for cost measurements on the CPU, whatever the worker trains with: workers started with different
``--threads`` then report comparable latencies, and one thread is the steadiest measurement on a shared machine
(``bench/latency_stability.py``)."""


def _cost_threads(device: torch.device) -> int:
    return COST_THREADS if device.type == "cpu" else torch.get_num_threads()


def cost_hardware(device: torch.device) -> str:
    """What costs on ``device`` are measured on: the GPU, or the CPU model with :data:`COST_THREADS` threads."""
    return hardware(device, _cost_threads(device))


def architecture(model: torch.nn.Module) -> str:
    """What a forward pass computes: the model config without dropout (off at inference) and label names, and its
    ``student.quantize`` setting where it is quantized."""
    config = {
        k: v
        for k, v in model.config.to_dict().items()
        if "dropout" not in k and k not in ("id2label", "label2id", "_name_or_path", "transformers_version")
    }
    dtype = next(model.parameters()).dtype
    quantized = {} if quantization(model) == "none" else {"quantize": quantization(model)}
    return json.dumps(
        {**config, "dtype": str(dtype), "params": count_parameters(model), **quantized}, sort_keys=True, default=str
    )


def stored_cost(
    model: torch.nn.Module,
    inputs: Any,
    measure: Callable[[], dict[str, float]],
    costs: CostStore | None = None,
    teacher: torch.nn.Module | None = None,
) -> dict[str, float]:
    """``measure()`` run once per architecture, hardware, ``inputs`` (anything JSON can write), torch version and
    ``teacher`` architecture (what a ``speedup`` is measured against), with :data:`COST_THREADS` threads on the CPU,
    and kept in ``costs`` (this process's store by default): later trials of the same student skip the measurement
    and report the same numbers (no noise between them)."""
    device = next(model.parameters()).device
    what = [architecture(model), cost_hardware(device), inputs, torch.__version__]
    if teacher is not None:
        what.append(architecture(teacher))
    key = hashlib.sha256(json.dumps(what).encode()).hexdigest()[:24]
    store = _COSTS if costs is None else costs
    cost = store.get(key)
    if cost is None:
        with getattr(store, "measuring", contextlib.nullcontext)():
            cost = store.get(key)  # measured by another process while this one waited
            if cost is None:
                with torch_threads(_cost_threads(device)):
                    measured = measure()
                cost = store.setdefault(key, measured)
    return dict(cost)
