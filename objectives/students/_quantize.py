"""Post-training quantization of a student as it will be deployed (``student.quantize``), through torchao, and
quantization-aware training before it (``train.qat_fraction``).

torch 2.13's eager ``torch.ao.quantization.quantize_dynamic`` is deprecated ("please migrate to use torchao eager
mode quantize_ API"), so this uses torchao's ``quantize_``: weight-only, the activations stay fp32, every
``nn.Linear`` but an output head tied to the input embedding (quantizing it would untie it and store the
embedding twice). Embeddings stay fp32.

Quantization-aware training uses torchao's QAT API (``QATConfig``, prepare then convert): the linear layers become
``FakeQuantizedLinear`` modules (the same weight tensors, so the optimiser's state carries on) whose forward rounds
the weights to the grid ``student.quantize`` will use, with straight-through gradients. torchao 0.18's QAT cannot
infer the fake quantization from ``Int8WeightOnlyConfig`` (``QATConfig(base_config=...)`` knows int4, float8 and
intx configs only), so the weight config is given: int8, symmetric, one scale per output channel, as
``Int8WeightOnlyConfig`` quantizes; int4 is tinygemm's asymmetric groups of 128 (``Int4WeightFakeQuantizeConfig``).
"""

from __future__ import annotations

import copy
import io
from collections.abc import Callable
from typing import Any

import torch

from objectives._config import QUANTIZE_DEVICES, check_quantize_device
from objectives.students._shared import quiet_transformers

QUANTIZED_ATTR = "distill_hpo_quantize"
"""The module attribute :func:`quantize` sets to the setting's name: the cost key reads it
(:func:`quantization`)."""


def _int8() -> Any:
    from torchao.quantization import Int8WeightOnlyConfig

    return Int8WeightOnlyConfig()


def _int4() -> Any:
    from torchao.quantization import Int4WeightOnlyConfig

    return Int4WeightOnlyConfig(group_size=128, int4_packing_format="tile_packed_to_4d")


_FACTORIES: dict[str, Callable[[], Any]] = {"int8": _int8, "int4": _int4}

QUANTIZERS: dict[str, dict[str, Callable[[], Any]]] = {
    device: {name: _FACTORIES[name] for name in names if name != "none"} for device, names in QUANTIZE_DEVICES.items()
}
"""device type -> ``student.quantize`` name -> torchao config factory (``none`` quantizes nothing)."""


def _tied_head(model: torch.nn.Module) -> torch.nn.Module | None:
    """The output head that shares its weight with the input embedding, if any."""
    get_out = getattr(model, "get_output_embeddings", None)
    get_in = getattr(model, "get_input_embeddings", None)
    if get_out is None or get_in is None:
        return None
    head, embedding = get_out(), get_in()
    if head is None or embedding is None or head.weight is not embedding.weight:
        return None
    return head


def quantize(model: torch.nn.Module, name: str) -> torch.nn.Module:
    """Quantize ``model``'s linear layers in place with the ``student.quantize`` setting ``name`` on its device;
    returns it. ``none`` leaves it as it is. A setting its device cannot run raises a ConfigError naming
    ``student.quantize`` and the valid ones there."""
    if name == "none":
        return model
    device = next(model.parameters()).device.type
    check_quantize_device(name, device)
    quiet_transformers()  # torchao imported without its warnings of CUDA extensions a CPU build lacks
    from torchao.quantization import quantize_

    tied = _tied_head(model)
    if name == "int4":  # tinygemm's int4 kernels compute in bfloat16
        model.to(torch.bfloat16)
    quantize_(
        model,
        QUANTIZERS[device][name](),
        filter_fn=lambda module, _fqn: isinstance(module, torch.nn.Linear) and module is not tied,
    )
    setattr(model, QUANTIZED_ATTR, name)
    return model


def _fake_config(name: str) -> Any:
    from torchao.quantization.qat import IntxFakeQuantizeConfig
    from torchao.quantization.qat.fake_quantize_config import Int4WeightFakeQuantizeConfig

    if name == "int8":
        return IntxFakeQuantizeConfig(torch.int8, "per_channel", is_symmetric=True)
    return Int4WeightFakeQuantizeConfig(group_size=128, activation_dtype=torch.bfloat16)


def fake_quantize(model: torch.nn.Module, name: str) -> torch.nn.Module:
    """Prepare ``model`` for quantization-aware training in place (torchao ``QATConfig(step="prepare")``): every
    linear layer :func:`quantize` would quantize becomes a ``FakeQuantizedLinear`` over the same weight tensors,
    whose forward uses the weights rounded as ``student.quantize`` ``name`` rounds them (gradients pass straight
    through). Returns ``model``. A setting its device cannot run raises a ConfigError naming ``student.quantize``."""
    check_quantize_device(name, next(model.parameters()).device.type)
    quiet_transformers()  # torchao imported without its warnings of CUDA extensions a CPU build lacks
    from torchao.quantization import quantize_
    from torchao.quantization.qat import QATConfig

    tied = _tied_head(model)
    quantize_(
        model,
        QATConfig(weight_config=_fake_config(name), step="prepare"),
        filter_fn=lambda module, _fqn: type(module) is torch.nn.Linear and module is not tied,
    )
    return model


def fake_quantized(model: torch.nn.Module) -> int:
    """How many of ``model``'s modules fake-quantize their weights (:func:`fake_quantize`)."""
    from torchao.quantization.qat import FakeQuantizedLinear

    return sum(isinstance(module, FakeQuantizedLinear) for module in model.modules())


def end_fake_quantize(model: torch.nn.Module) -> torch.nn.Module:
    """Undo :func:`fake_quantize` in place (torchao ``QATConfig(step="convert")`` without a base config): each
    ``FakeQuantizedLinear`` becomes an ``nn.Linear`` over the same, quantization-aware trained fp32 weights, for
    :func:`quantize` to quantize as after any training. Returns ``model``."""
    if not fake_quantized(model):
        return model
    from torchao.quantization import quantize_
    from torchao.quantization.qat import FakeQuantizedLinear, QATConfig

    quantize_(model, QATConfig(step="convert"), filter_fn=lambda module, _fqn: isinstance(module, FakeQuantizedLinear))
    return model


def quantized(model: torch.nn.Module, name: str) -> torch.nn.Module:
    """A quantized copy of ``model`` (``model`` itself for ``none``), in eval mode."""
    if name == "none":
        return model
    return quantize(copy.deepcopy(model), name).eval()


def quantization(model: torch.nn.Module) -> str:
    """The ``student.quantize`` setting ``model`` was quantized with (``none`` for a model :func:`quantize` has
    not touched)."""
    return getattr(model, QUANTIZED_ATTR, "none")


class _Counter(io.RawIOBase):
    """A write-only sink that counts the bytes written to it."""

    def __init__(self) -> None:
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        n = memoryview(data).nbytes
        self.size += n
        return n


def saved_size_mb(model: torch.nn.Module) -> float:
    """Size of ``model``'s state dict as ``torch.save`` writes it, in MiB (2^20 bytes): the quantized weights with
    their scales, shared tensors (tied embeddings) once."""
    sink = _Counter()
    torch.save(model.state_dict(), sink)
    return sink.size / 2**20
