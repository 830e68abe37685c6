"""Optimiser and schedule: AdamW with layer-wise learning-rate decay, warmup then linear decay."""

from __future__ import annotations

import re
from typing import Any

import torch

from objectives._config import TrainArgs

_LAYER_INDEX = re.compile(r"(?:^|\.)(?:layer|layers|h|block|blocks)\.(\d+)\.")
_EMBEDDING = re.compile(r"embed|wte|wpe", re.IGNORECASE)


def layer_depth(name: str, n_layers: int) -> int:
    """Depth of a parameter: 0 for embeddings, i + 1 for transformer layer i, n_layers + 1 for the head."""
    match = _LAYER_INDEX.search(name)
    if match:
        return int(match.group(1)) + 1
    if _EMBEDDING.search(name):
        return 0
    return n_layers + 1


def param_groups(model: torch.nn.Module, args: TrainArgs, n_layers: int) -> list[dict[str, Any]]:
    """AdamW groups with layer-wise lr decay and weight decay only on matrices.

    lr_d = lr * lr_decay ** (D - d) with D = n_layers + 1 the head's depth: the head trains at ``lr``, each layer
    below at ``lr_decay`` times the one above, embeddings lowest. Biases and LayerNorm weights (ndim < 2) get no
    weight decay, as in BERT.
    """
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    top = n_layers + 1
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        depth = layer_depth(name, n_layers)
        decay = param.ndim >= 2
        group = groups.setdefault(
            (depth, decay),
            {
                "params": [],
                "names": [],
                "lr": args.lr * args.lr_decay ** (top - depth),
                "weight_decay": args.weight_decay if decay else 0.0,
            },
        )
        group["params"].append(param)
        group["names"].append(name)
    return [groups[key] for key in sorted(groups)]


FUSED_DEVICES = ("cpu", "cuda")
"""Device types on which AdamW runs fused (one kernel over all parameters instead of a loop of small ops per
tensor). On the 2-core CPU VM a 40-step fine-tuning trial took 0.72-0.78x the per-tensor loop's time
(``bench/trial_cost.py``)."""


def build_optimizer(
    model: torch.nn.Module,
    args: TrainArgs,
    n_layers: int,
    device: torch.device,
    extra: list[torch.nn.Parameter] | None = None,
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW (fused on :data:`FUSED_DEVICES`) over :func:`param_groups`, and a warmup-linear schedule over
    ``args.max_steps``. ``extra`` parameters outside the model (a loss's learned map) train at the head's ``lr``
    without weight decay."""
    groups = [{k: v for k, v in g.items() if k != "names"} for g in param_groups(model, args, n_layers)]
    if extra:
        groups.append({"params": extra, "lr": args.lr, "weight_decay": 0.0})
    optimizer = torch.optim.AdamW(groups, fused=device.type in FUSED_DEVICES)
    warmup = round(args.max_steps * args.warmup_ratio)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (args.max_steps - step) / max(1, args.max_steps - warmup))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
