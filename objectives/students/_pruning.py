"""Pruning: students narrower and shallower than their teacher, keeping the units that matter on a calibration sample.

Importance is measured from activations (Minitron, Muralidharan et al. 2024): an attention head by the norm of its
output, an FFN neuron by its mean absolute activation, a hidden channel by the mean absolute output of the
LayerNorms. A layer's influence is 1 - cosine similarity between its output and its input (ShortGPT, Men et al.
2024). Width pruning handles BERT-style encoders (``encoder.layer[i].attention.self`` / ``intermediate`` /
``output``), e.g. MiniLM, and Llama-style decoders (``self_attn.q/k/v/o_proj``, ``mlp.gate/up/down_proj``: Llama,
Mistral, Qwen2 and alike), whose grouped-query attention is pruned in whole groups: a key/value head with all the
query heads that read it.
"""

from __future__ import annotations

import random
import re
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from objectives._config import ConfigError, StudentArgs
from objectives.data import Blocks, Encoded
from objectives.students._decoders import cut_config, decoder_from_state, decoder_layers
from objectives.students._models import encoder_layers, head_size, narrow_classifier
from objectives.students._shared import renumbered_state

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
    logits: torch.Tensor | None = None
    """[examples, labels]: a classifier's logits on the calibration sample (in :func:`calibration_batches` order),
    which :func:`calibrate_head` matches a pruned student's to; None for a causal LM."""


def calibration_batches(data: Encoded | Blocks, size: int, batch_size: int = 32) -> list[dict[str, torch.Tensor]]:
    """``size`` examples of ``data`` (all of them where it has fewer; texts or packed blocks) drawn with
    :data:`CALIBRATION_SEED`, as model inputs (``data.batch``: texts padded per batch)."""
    idx = random.Random(CALIBRATION_SEED).sample(range(len(data)), min(size, len(data)))
    inputs = ("input_ids", "attention_mask")
    return [
        {k: v for k, v in data.batch(idx[i : i + batch_size]).items() if k in inputs}
        for i in range(0, len(idx), batch_size)
    ]


def measure_importance(model: Any, batches: list[dict[str, torch.Tensor]], key: str = "hidden_ratio") -> Importance:
    """The :class:`Importance` of a BERT-style ``model`` over ``batches`` (eval mode, no gradients); another
    architecture is a :class:`ConfigError` naming ``key`` (the setting that asked for it)."""
    layers = encoder_layers(model, key)
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
    logits = []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in batches:
                batch = {k: v.to(device) for k, v in batch.items()}
                mask[:] = [batch["attention_mask"].unsqueeze(-1).float()]
                out = model(**batch, output_hidden_states=True)
                logits.append(out.logits.float().cpu())
                states = out.hidden_states
                for i in range(n_layers):
                    cosine = torch.nn.functional.cosine_similarity(states[i + 1], states[i], dim=-1)
                    sums["influence"][i] += masked_sum((1 - cosine).unsqueeze(-1)).squeeze()
                tokens += float(mask[0].sum())
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    scores = {k: (v / max(tokens, 1.0)).cpu() for k, v in sums.items()}
    return Importance(**scores, logits=torch.cat(logits) if logits else None)


_CACHE: weakref.WeakKeyDictionary[Any, dict[tuple[str, int], Importance]] = weakref.WeakKeyDictionary()


def cached_importance(model: Any, data: Any, size: int, measure: Callable[[], Importance]) -> Importance:
    """``measure()``, the :class:`Importance` of ``model`` on ``size`` calibration examples of ``data`` (anything
    with a ``fingerprint()``), once per model and sample in this process: it depends on the teacher and the data,
    not on the student asked for."""
    per_model = _CACHE.setdefault(model, {})
    sample = (data.fingerprint(), size)
    if sample not in per_model:
        per_model[sample] = measure()
    return per_model[sample]


def calibrate_head(student: Any, batches: list[dict[str, torch.Tensor]], teacher_logits: torch.Tensor) -> float:
    """Rescale a pruned classifier's output layer so its logits on the calibration ``batches`` match the teacher's
    (``teacher_logits``, the same examples) in least squares; returns the scale ``a``.

    Slicing hidden channels, heads and neurons keeps the direction of the teacher's logits (their correlation with
    the student's stays 0.5-0.7 on MiniLM at half width) but not their size: each layer's output is a sum over
    fewer units, and the classifier reads a fraction of a pooler that reads a fraction of the residual stream, so
    the spread of the student's logits over examples falls to 1-4% of the teacher's (0.2% at a quarter width).
    AdamW moves each weight by about ``lr`` per step, so 100 steps at ``lr`` 1e-4 cannot grow the head back by
    25-500x: the student stays at a near-constant prediction (the majority class). With s and t the student's and
    teacher's logits, centred per class over the examples (s_c, t_c), ``a = <s_c, t_c> / <s_c, s_c>`` (at least 1:
    it only undoes the shrinkage), W' = a W and b' = mean(t) - a (mean(s) - b): the student starts with the
    teacher's logit scale and mean. ``student.classifier`` is the output layer (BERT-style classifiers)."""
    head = student.classifier
    device = head.weight.device
    was_training = student.training
    student.eval()
    try:
        with torch.no_grad():
            s = torch.cat([student(**{k: v.to(device) for k, v in b.items()}).logits.float().cpu() for b in batches])
    finally:
        student.train(was_training)
    t = teacher_logits.float()
    s_c, t_c = s - s.mean(0), t - t.mean(0)
    scale = max(1.0, float((s_c * t_c).sum() / (s_c * s_c).sum().clamp_min(1e-12)))
    with torch.no_grad():
        bias = t.mean(0) - scale * (s.mean(0) - head.bias.float().cpu())
        head.weight.mul_(scale)
        head.bias.copy_(bias.to(head.bias))
    return scale


def teacher_importance(model: Any, data: Encoded, size: int, key: str) -> Importance:
    """:func:`measure_importance` of a classifier on ``size`` calibration examples of ``data``, cached
    (:func:`cached_importance`); ``key`` names the setting that asked for it in errors."""
    return cached_importance(model, data, size, lambda: measure_importance(model, calibration_batches(data, size), key))


def _round8(ratio: float, width: int) -> int:
    """``ratio`` of ``width``, rounded to a multiple of 8 (at least 8, at most ``width``)."""
    return min(width, max(8, 8 * round(ratio * width / 8)))


@dataclass
class Widths:
    """The student's widths from the ratios of :class:`StudentArgs`: multiples of 8 channels, and whole key/value
    groups of heads (``heads_ratio`` of the teacher's key/value heads, each with all its query heads; without
    grouped-query attention a group is one head)."""

    hidden: int
    ffn: int
    heads: int
    kv_heads: int

    @classmethod
    def of(cls, config: Any, args: StudentArgs) -> Widths:
        heads = int(config.num_attention_heads)
        kv = int(getattr(config, "num_key_value_heads", None) or heads)
        groups = min(kv, max(1, round(args.heads_ratio * kv)))
        return cls(
            hidden=_round8(args.hidden_ratio, config.hidden_size),
            ffn=_round8(args.ffn_ratio, config.intermediate_size),
            heads=groups * (heads // kv),
            kv_heads=groups,
        )


def _top(scores: torch.Tensor, k: int) -> torch.Tensor:
    return torch.sort(torch.topk(scores, k).indices).values


Rules = list[tuple[re.Pattern[str], str | None, str | None]]
"""(pattern of a state-dict key, what its rows index, what its columns index): ``hidden``, a kind of per-layer
unit, or None (kept whole)."""

_ROWS_COLS: Rules = [
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
    units: dict[str, dict[int, torch.Tensor]],
    rules: Rules = _ROWS_COLS,
) -> dict[str, torch.Tensor]:
    """``state`` (a teacher's, keys already renumbered to the student's layers) sliced to the kept units by
    ``rules``: ``hidden`` channel indices, and per kind of unit (``attention``, ``ffn``, ...) the kept indices of
    every student layer. ``layer_of(key)`` is the student layer a key belongs to, or None. The indices (computed on
    the CPU) move to each tensor's device, so a teacher on a GPU is sliced there (``index_select`` refuses an index
    on another device). The tensors returned may be views of ``state``'s (``load_state_dict`` copies them)."""
    out = {}
    for key, tensor in state.items():
        rule = next(((r, c) for pattern, r, c in rules if pattern.search(key)), (None, None))
        layer = layer_of(key)
        index = {"hidden": hidden, **{kind: kept.get(layer) for kind, kept in units.items()}}
        for dim, kind in enumerate(rule):
            if kind is not None and dim < tensor.dim():
                tensor = tensor.index_select(dim, index[kind].to(tensor.device))
        out[key] = tensor
    return out


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
    size = head_size(teacher_config)
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
    student.load_state_dict(prune_state(state, layer_of, hidden, {"attention": attention, "ffn": ffn}), strict=True)
    return student


_DECODER_ROWS_COLS: Rules = [
    (re.compile(p), rows, cols)
    for p, rows, cols in [
        (r"self_attn\.q_proj\.weight$", "attention", "hidden"),
        (r"self_attn\.q_proj\.bias$", "attention", None),
        (r"self_attn\.[kv]_proj\.weight$", "kv", "hidden"),
        (r"self_attn\.[kv]_proj\.bias$", "kv", None),
        (r"self_attn\.o_proj\.weight$", "hidden", "attention"),
        (r"mlp\.(gate|up)_proj\.weight$", "ffn", "hidden"),
        (r"mlp\.(gate|up)_proj\.bias$", "ffn", None),
        (r"mlp\.down_proj\.weight$", "hidden", "ffn"),
        (r"(embed_tokens|lm_head)\.weight$", None, "hidden"),
        (r"(layernorm|(^|\.)norm)\.weight$", "hidden", None),
        (r"(o_proj|down_proj)\.bias$", "hidden", None),
    ]
]
"""How each tensor of a Llama-style causal LM is sliced (see :data:`_ROWS_COLS`): ``attention`` indexes the kept
query heads' units, ``kv`` those of their key/value heads. Per-head norms (Qwen3's ``q_norm``) keep the head size
and are copied whole."""

_DECODER_MODULES = {"self_attn": ("q_proj", "k_proj", "v_proj", "o_proj"), "mlp": ("gate_proj", "up_proj", "down_proj")}


def _llama_style(layer: Any) -> bool:
    return all(hasattr(getattr(layer, part, None), name) for part, names in _DECODER_MODULES.items() for name in names)


def _is_norm(module: Any, width: int) -> bool:
    """A LayerNorm or RMSNorm over ``width`` channels (RMSNorms are per-family classes: told by name and shape)."""
    weight = getattr(module, "weight", None)
    named = "norm" in type(module).__name__.lower()
    return named and isinstance(weight, torch.Tensor) and tuple(weight.shape) == (width,)


def decoder_importance(model: Any, batches: list[dict[str, torch.Tensor]]) -> Importance:
    """The :class:`Importance` of a causal LM over ``batches`` (dicts with ``input_ids``; every token real), in eval
    mode without gradients: block influence of every decoder layer (any family :func:`objectives.students._decoders.
    decoder_layers` knows, through hooks on the layers), hidden channels by mean |norm output|, and for Llama-style
    layers each query head by the mean norm of its output (the input of ``o_proj``) and each FFN neuron by its mean
    |activation| (the input of ``down_proj``); other families get empty head and neuron scores."""

    layers = decoder_layers(model)
    config = model.config
    hidden, n = int(config.hidden_size), len(layers)
    llama = all(_llama_style(layer) for layer in layers)
    heads = int(config.num_attention_heads) if llama else 0
    sums = {
        "hidden": torch.zeros(hidden),
        "heads": torch.zeros(n, heads),
        "ffn": torch.zeros(n, layers[0].mlp.down_proj.in_features if llama else 0),
        "influence": torch.zeros(n),
    }

    def add(name: str, index: Any, value: torch.Tensor) -> None:
        sums[name][index] += value.float().sum(dim=(0, 1)).cpu()

    hooks = [
        m.register_forward_hook(lambda _m, _i, out: add("hidden", slice(None), out.abs()))
        for m in model.modules()
        if _is_norm(m, hidden)
    ]
    for i, layer in enumerate(layers):

        def influence(_m: Any, args: tuple, kwargs: dict, out: Any, i: int = i) -> None:
            before = args[0] if args else kwargs["hidden_states"]
            after = out[0] if isinstance(out, tuple) else out
            add("influence", i, 1 - torch.nn.functional.cosine_similarity(before.float(), after.float(), dim=-1))

        hooks.append(layer.register_forward_hook(influence, with_kwargs=True))
        if llama:
            hooks.append(
                layer.self_attn.o_proj.register_forward_pre_hook(
                    lambda _m, x, i=i: add("heads", i, x[0].reshape(*x[0].shape[:2], heads, -1).norm(dim=-1))
                )
            )
            hooks.append(layer.mlp.down_proj.register_forward_pre_hook(lambda _m, x, i=i: add("ffn", i, x[0].abs())))
    device = next(model.parameters()).device
    tokens = 0
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for batch in batches:
                ids = batch["input_ids"].to(device)
                model(input_ids=ids, use_cache=False)
                tokens += ids.numel()
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    return Importance(**{k: v / max(tokens, 1) for k, v in sums.items()})


def _decoder_head_dim(config: Any) -> int:
    return int(getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)


def prune_decoder(
    teacher: Any, keep: list[int], importance: Importance, args: StudentArgs, dropout: float | None = None
) -> Any:
    """A student of the decoder layers ``keep`` of ``teacher`` (:func:`objectives.students._decoders.cut_config`) at the
    widths of ``args``, chosen by the teacher's ``importance``: the most important hidden channels, FFN neurons and
    key/value groups (scored by the summed importance of their query heads; a group keeps all its query heads,
    so grouped-query attention stays whole) kept, their weights sliced from the teacher's, the head size unchanged.
    Built with ``from_config`` (so ``save_pretrained`` / ``from_pretrained`` round-trip it) and loaded strictly;
    tied embeddings stay tied. Families other than Llama-style are a :class:`ConfigError` naming the ratio."""
    if not all(_llama_style(layer) for layer in decoder_layers(teacher)):
        key = next(k for k in ("hidden_ratio", "ffn_ratio", "heads_ratio") if getattr(args, k) < 1)
        raise ConfigError(
            f"student.{key}",
            f"width pruning of causal LMs needs Llama-style layers (self_attn.q/k/v/o_proj, mlp.gate/up/down_proj: "
            f"Llama, Mistral, Qwen2 and alike); the teacher is {teacher.config.model_type!r}: keep the ratios at 1.0 "
            "(num_layers still cuts it)",
        )
    config = cut_config(teacher, keep, dropout)
    widths, size = Widths.of(config, args), _decoder_head_dim(config)
    group = widths.heads // widths.kv_heads
    hidden = _top(importance.hidden, widths.hidden)
    units: dict[str, dict[int, torch.Tensor]] = {"attention": {}, "kv": {}, "ffn": {}}
    dims = torch.arange(size)
    for new, old in enumerate(keep):
        groups = _top(importance.heads[old].reshape(-1, group).sum(dim=1), widths.kv_heads)
        query = (groups.unsqueeze(1) * group + torch.arange(group)).flatten()
        units["attention"][new] = (query.unsqueeze(1) * size + dims).flatten()
        units["kv"][new] = (groups.unsqueeze(1) * size + dims).flatten()
        units["ffn"][new] = _top(importance.ffn[old], widths.ffn)
    config.hidden_size, config.intermediate_size, config.head_dim = widths.hidden, widths.ffn, size
    config.num_attention_heads, config.num_key_value_heads = widths.heads, widths.kv_heads
    state, layer_of = renumbered_state(teacher, keep)
    return decoder_from_state(teacher, config, prune_state(state, layer_of, hidden, units, _DECODER_ROWS_COLS))
