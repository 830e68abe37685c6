"""LoRA adapters through PEFT: a student (or the teacher, for teacher correction) trained through low-rank updates
of its frozen weights, W' = W + (alpha / r) * B A, merged back into plain weights for export.

``target_modules`` is a named preset (:data:`TARGET_PRESETS`) mapped to each architecture's module names
(:data:`ARCHITECTURE_MODULES`), so one search space serves every family; ``all-linear`` is PEFT's own (every
linear layer but the output head). ``qlora`` loads the base in 4 bits through bitsandbytes, on CUDA only.
"""

from __future__ import annotations

import copy
import importlib.util
import tempfile
from pathlib import Path
from typing import Any

import torch

from objectives._config import ConfigError, LoraFields

_LLAMA = {"attention": ["q_proj", "k_proj", "v_proj", "o_proj"], "mlp": ["gate_proj", "up_proj", "down_proj"]}
_BERT = {
    "attention": ["query", "key", "value", "attention.output.dense"],
    "mlp": ["intermediate.dense", "output.dense"],
}

ARCHITECTURE_MODULES: dict[str, dict[str, list[str]]] = {
    **{family: _LLAMA for family in ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2")},
    "gpt2": {"attention": ["attn.c_attn", "attn.c_proj"], "mlp": ["mlp.c_fc", "mlp.c_proj"]},
    "gpt_neox": {"attention": ["query_key_value", "attention.dense"], "mlp": ["dense_h_to_4h", "dense_4h_to_h"]},
    "opt": {"attention": ["q_proj", "k_proj", "v_proj", "out_proj"], "mlp": ["fc1", "fc2"]},
    **{family: _BERT for family in ("bert", "roberta", "xlm-roberta", "electra")},
}
"""Module names (suffixes, as PEFT matches them) of the attention and feed-forward linear layers per
``config.model_type``: what the presets ``attention`` and ``attention+mlp`` adapt."""


def target_modules(model: Any, preset: str, key: str) -> list[str] | str:
    """The module names ``preset`` (one of :data:`objectives._config.TARGET_PRESETS`) adapts in ``model``; a
    ConfigError on ``key`` for an architecture without a mapping, naming ``all-linear``, which fits every one."""
    if preset == "all-linear":
        return "all-linear"
    model_type = model.config.model_type
    if model_type not in ARCHITECTURE_MODULES:
        raise ConfigError(
            key,
            f"has no {preset!r} preset for {model_type} models (known: {', '.join(sorted(ARCHITECTURE_MODULES))}); "
            "use all-linear",
        )
    modules = ARCHITECTURE_MODULES[model_type]
    return list(dict.fromkeys(modules["attention"] + (modules["mlp"] if preset == "attention+mlp" else [])))


def add_adapter(
    model: torch.nn.Module, args: LoraFields, device: torch.device | str, section: str, causal: bool
) -> torch.nn.Module:
    """``model`` wrapped in a LoRA adapter of ``args`` (a ``section``'s fields: ``student`` or ``teacher``), its own
    weights frozen: only the adapter's A and B (and a classifier's head, PEFT's ``modules_to_save`` for ``SEQ_CLS``)
    train. ``model`` unchanged where ``args.adapter`` is ``none``. ``qlora``: the base in 4-bit NF4 through
    bitsandbytes, on CUDA only (a ConfigError naming ``{section}.adapter`` elsewhere)."""
    if args.adapter == "none":
        return model
    from peft import LoraConfig, get_peft_model

    if args.adapter == "qlora":
        model = _four_bit(model, torch.device(device), f"{section}.adapter")
    config = LoraConfig(
        r=args.lora_r,
        lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout,
        target_modules=target_modules(model, args.target_modules, f"{section}.target_modules"),
        task_type="CAUSAL_LM" if causal else "SEQ_CLS",
    )
    return get_peft_model(model, config)


def _four_bit(model: torch.nn.Module, device: torch.device, key: str) -> torch.nn.Module:
    """``model`` reloaded with its linear layers in 4-bit NF4 (bitsandbytes), bf16 compute, ready for k-bit
    training (:func:`peft.prepare_model_for_kbit_training`)."""
    if device.type != "cuda":
        raise ConfigError(
            key,
            f"qlora keeps the base in 4 bits through bitsandbytes, which needs a CUDA device; this trial runs on "
            f"{device.type}: use lora, or device: cuda",
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError(
            key, "qlora needs bitsandbytes, which is not installed: pip install bitsandbytes, or use lora"
        )
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, BitsAndBytesConfig

    quantise = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16)
    auto = (
        AutoModelForSequenceClassification if "SequenceClassification" in type(model).__name__ else AutoModelForCausalLM
    )
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)
        quantised = auto.from_pretrained(folder, quantization_config=quantise, device_map={"": device.index or 0})
    return prepare_model_for_kbit_training(quantised)


def is_adapted(model: torch.nn.Module) -> bool:
    """Whether ``model`` carries a PEFT adapter."""
    from peft import PeftModel

    return isinstance(model, PeftModel)


def merged(model: torch.nn.Module) -> torch.nn.Module:
    """A plain model computing what ``model`` computes: a copy with the adapter merged into its weights
    (``merge_and_unload``), or ``model`` itself where it has none. The copy leaves ``model`` (and its adapter)
    as it was."""
    if not is_adapted(model):
        return model
    return copy.deepcopy(model).merge_and_unload()


def save_adapter(model: torch.nn.Module, out: Path) -> None:
    """Write the weights ``model``'s adapter applies to (the student as it was cut, the adapter removed, not merged)
    to ``out``, and the adapter alone to ``out/adapter`` (PEFT's ``adapter_config.json`` and
    ``adapter_model.safetensors``, its base ``out``): ``PeftModel.from_pretrained(AutoModelForCausalLM.
    from_pretrained(out), out / "adapter")`` computes what the merged model does."""
    copy.deepcopy(model).unload().save_pretrained(out)
    adapter = copy.deepcopy(model)
    for config in adapter.peft_config.values():
        config.base_model_name_or_path = str(out)
    adapter.save_pretrained(Path(out) / "adapter")


def trainable_parameters(model: torch.nn.Module) -> int:
    """Parameters the optimiser updates (``requires_grad``): all of a fully trained model's, the adapter's (and a
    classifier head's) of an adapted one."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
