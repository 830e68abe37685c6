"""Pruning: students narrower and shallower than their teacher, keeping the units that matter on a calibration sample.

Importance is measured from activations (Minitron, Muralidharan et al. 2024): an attention head by the norm of its
output, an FFN neuron by its mean absolute activation, a hidden channel by the mean absolute output of the
LayerNorms. A layer's influence is 1 - cosine similarity between its output and its input (ShortGPT, Men et al.
2024). Width pruning handles BERT-style encoders (``encoder.layer[i].attention.self`` / ``intermediate`` /
``output``), e.g. MiniLM.
"""

from __future__ import annotations

import copy
import random
import re
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from objectives._config import ConfigError, StudentArgs
from objectives._data import Encoded, collate

CALIBRATION_SEED = 0
"""Seed of the calibration sample: every trial of a study prunes from the same examples, so equal ratios give
equal students."""


@dataclass
class Importance:
    """Activation statistics of a model on a calibration sample (means over real, unpadded tokens)."""

    hidden: torch.Tensor
    """[hidden]: mean |output| of every hidden-size LayerNorm, summed over the LayerNorms."""
    heads: torch.Tensor
    """[layers, heads]: mean L2 norm of each head's attention output."""
    ffn: torch.Tensor
    """[layers, intermediate]: mean |activation| of each FFN neuron (after the nonlinearity)."""
    influence: torch.Tensor
    """[layers]: block influence, mean over tokens of 1 - cos(layer output, layer input)."""


def calibration_batches(data: Encoded, size: int, batch_size: int = 32) -> list[dict[str, torch.Tensor]]:
    """``size`` examples of ``data`` drawn with :data:`CALIBRATION_SEED`, as padded model inputs."""
    idx = random.Random(CALIBRATION_SEED).sample(range(len(data)), min(size, len(data)))
    inputs = ("input_ids", "attention_mask")
    return [
        {k: v for k, v in collate(data, idx[i : i + batch_size]).items() if k in inputs}
        for i in range(0, len(idx), batch_size)
    ]


def _encoder_layers(model: Any, key: str) -> Any:
    layers = getattr(getattr(model.base_model, "encoder", None), "layer", None)
    if layers is None or not all(hasattr(layer, "intermediate") for layer in layers):
        raise ConfigError(
            key,
            f"needs a BERT-style encoder (e.g. MiniLM) to measure importance on; the teacher is "
            f"{model.config.model_type!r}",
        )
    return layers


def _head_size(config: Any) -> int:
    return int(getattr(config, "attention_head_size", config.hidden_size // config.num_attention_heads))


def measure_importance(model: Any, batches: list[dict[str, torch.Tensor]], key: str = "hidden_ratio") -> Importance:
    """The :class:`Importance` of a BERT-style ``model`` over ``batches`` (eval mode, no gradients); another
    architecture is a :class:`ConfigError` naming ``key`` (the setting that asked for it)."""
    layers = _encoder_layers(model, key)
    config = model.config
    n_layers, heads, hidden = len(layers), config.num_attention_heads, config.hidden_size
    device = next(model.parameters()).device
    sums = {
        "hidden": torch.zeros(hidden, device=device),
        "heads": torch.zeros(n_layers, heads, device=device),
        "ffn": torch.zeros(n_layers, config.intermediate_size, device=device),
        "influence": torch.zeros(n_layers, device=device),
    }
    mask: list[torch.Tensor] = []  # the current batch's [B, T, 1] float mask, read by the hooks

    def masked_sum(x: torch.Tensor) -> torch.Tensor:
        return (x * mask[0]).sum(dim=(0, 1))

    def on_norm(_module: Any, _inputs: Any, out: torch.Tensor) -> None:
        sums["hidden"] += masked_sum(out.abs())

    hooks = [
        m.register_forward_hook(on_norm)
        for m in model.base_model.modules()
        if isinstance(m, torch.nn.LayerNorm) and tuple(m.normalized_shape) == (hidden,)
    ]
    for i, layer in enumerate(layers):

        def on_context(_module: Any, inputs: tuple[torch.Tensor], i: int = i) -> None:
            context = inputs[0]
            sums["heads"][i] += masked_sum(context.reshape(*context.shape[:2], heads, -1).norm(dim=-1))

        def on_ffn(_module: Any, _inputs: Any, out: torch.Tensor, i: int = i) -> None:
            sums["ffn"][i] += masked_sum(out.abs())

        hooks.append(layer.attention.output.dense.register_forward_pre_hook(on_context))
        hooks.append(layer.intermediate.register_forward_hook(on_ffn))
    tokens = 0.0
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in batches:
                batch = {k: v.to(device) for k, v in batch.items()}
                mask[:] = [batch["attention_mask"].unsqueeze(-1).float()]
                states = model(**batch, output_hidden_states=True).hidden_states
                for i in range(n_layers):
                    cosine = torch.nn.functional.cosine_similarity(states[i + 1], states[i], dim=-1)
                    sums["influence"][i] += masked_sum((1 - cosine).unsqueeze(-1)).squeeze()
                tokens += float(mask[0].sum())
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    return Importance(**{k: (v / max(tokens, 1.0)).cpu() for k, v in sums.items()})


_CACHE: weakref.WeakKeyDictionary[Any, dict[tuple[str, int], Importance]] = weakref.WeakKeyDictionary()


def teacher_importance(model: Any, data: Encoded, size: int, key: str) -> Importance:
    """:func:`measure_importance` on ``size`` calibration examples of ``data``, once per model and sample in this
    process (it depends on the teacher and the data, not on the student asked for); ``key`` names the setting
    that asked for it in errors."""
    per_model = _CACHE.setdefault(model, {})
    sample = (data.fingerprint(), size)
    if sample not in per_model:
        per_model[sample] = measure_importance(model, calibration_batches(data, size), key)
    return per_model[sample]


def select_layers(influence: torch.Tensor, k: int) -> list[int]:
    """The ``k`` layers of greatest block influence, in model order."""
    return sorted(int(i) for i in torch.topk(influence, k).indices)


def _round8(ratio: float, width: int) -> int:
    """``ratio`` of ``width``, rounded to a multiple of 8 (at least 8, at most ``width``)."""
    return min(width, max(8, 8 * round(ratio * width / 8)))


@dataclass
class Widths:
    """The student's widths from the ratios of :class:`StudentArgs`: whole heads and multiples of 8 channels."""

    hidden: int
    ffn: int
    heads: int

    @classmethod
    def of(cls, config: Any, args: StudentArgs) -> Widths:
        return cls(
            hidden=_round8(args.hidden_ratio, config.hidden_size),
            ffn=_round8(args.ffn_ratio, config.intermediate_size),
            heads=min(config.num_attention_heads, max(1, round(args.heads_ratio * config.num_attention_heads))),
        )


def _top(scores: torch.Tensor, k: int) -> torch.Tensor:
    return torch.sort(torch.topk(scores, k).indices).values


_ROWS_COLS: list[tuple[re.Pattern[str], str | None, str | None]] = [
    (re.compile(p), rows, cols)
    for p, rows, cols in [
        (r"attention\.self\.(query|key|value)\.weight$", "attention", "hidden"),
        (r"attention\.self\.(query|key|value)\.bias$", "attention", None),
        (r"attention\.output\.dense\.weight$", "hidden", "attention"),
        (r"intermediate\.dense\.weight$", "ffn", "hidden"),
        (r"intermediate\.dense\.bias$", "ffn", None),
        (r"output\.dense\.weight$", "hidden", "ffn"),
        (r"pooler\.dense\.weight$", "hidden", "hidden"),
        (r"classifier\.weight$", None, "hidden"),
        (r"embeddings\.\w+_embeddings\.weight$", None, "hidden"),
        (r"(LayerNorm\.(weight|bias)|dense\.bias)$", "hidden", None),
    ]
]
"""How each tensor of a BERT-style classifier is sliced: its rows and columns index hidden channels, attention
units (whole heads) or FFN neurons; the first matching pattern wins, unmatched tensors are copied whole."""


def prune_state(
    state: dict[str, torch.Tensor],
    layer_of: Any,
    hidden: torch.Tensor,
    attention: dict[int, torch.Tensor],
    ffn: dict[int, torch.Tensor],
) -> dict[str, torch.Tensor]:
    """``state`` (a teacher's, keys already renumbered to the student's layers) sliced to the kept units:
    ``hidden`` channel indices, and per student layer the kept attention-unit and FFN-neuron indices.
    ``layer_of(key)`` is the student layer a key belongs to, or None."""
    out = {}
    for key, tensor in state.items():
        rule = next(((r, c) for pattern, r, c in _ROWS_COLS if pattern.search(key)), (None, None))
        layer = layer_of(key)
        index = {"hidden": hidden, "attention": attention.get(layer), "ffn": ffn.get(layer)}
        for dim, kind in enumerate(rule):
            if kind is not None and dim < tensor.dim():
                tensor = tensor.index_select(dim, index[kind])
        out[key] = tensor.clone()
    return out


def narrow_classifier(config: Any) -> Any:
    """A BERT-style sequence classifier from ``config``; with ``config.attention_head_size`` set (a pruned student
    keeps its teacher's head size), its attention has that size per head whatever the hidden size (transformers
    otherwise ties it to hidden_size / heads)."""
    from transformers import AutoModelForSequenceClassification

    if not hasattr(config, "attention_head_size"):
        return AutoModelForSequenceClassification.from_config(config)
    heads, size = config.num_attention_heads, _head_size(config)
    config = copy.deepcopy(config)
    config.num_attention_heads = 1  # always divides hidden_size; the attention is resized below
    model = AutoModelForSequenceClassification.from_config(config)
    model.config.num_attention_heads = heads
    hidden, inner = config.hidden_size, heads * size
    for layer in _encoder_layers(model, "student"):
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


def prune_widths(
    teacher_config: Any,
    config: Any,
    keep: list[int],
    importance: Importance,
    args: StudentArgs,
    state: dict[str, torch.Tensor],
    layer_of: Any,
) -> Any:
    """The student of the teacher layers ``keep`` at the widths of ``args``: the most important heads, FFN
    neurons and hidden channels kept and their weights copied from ``state`` (the teacher's, renumbered to the
    student's layers; ``layer_of(key)`` is a key's student layer or None). ``config`` is the student's config
    (depth and dropout set); its widths are set here."""
    widths = Widths.of(teacher_config, args)
    size = _head_size(teacher_config)
    config.hidden_size, config.intermediate_size, config.num_attention_heads = widths.hidden, widths.ffn, widths.heads
    if widths.hidden != widths.heads * size:
        config.attention_head_size = size
    hidden = _top(importance.hidden, widths.hidden)
    attention, ffn = {}, {}
    for new, old in enumerate(keep):
        heads = _top(importance.heads[old], widths.heads)
        attention[new] = (heads.unsqueeze(1) * size + torch.arange(size)).flatten()
        ffn[new] = _top(importance.ffn[old], widths.ffn)
    student = narrow_classifier(config)
    student.load_state_dict(prune_state(state, layer_of, hidden, attention, ffn), strict=True)
    return student
