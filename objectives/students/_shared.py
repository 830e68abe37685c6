"""Helpers every student builder shares: quieter transformers loads, dropout on a config, layer counts and which
teacher layers a student keeps, the teacher's tensors renumbered for those layers."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any

from objectives._config import ConfigError, StudentArgs

_LAYER_KEY = re.compile(r"^(?P<head>.*?\.(?:layer|layers|h|block|blocks)\.)(?P<index>\d+)\.(?P<tail>.*)$")


QUIET_LOGGERS = ("torchao", "torch.utils._pytree")
"""Loggers kept to errors: transformers imports torchao with every model it loads (its quantizer check), and torchao
then warns of its optional CUDA extensions and Triton, which a CPU build cannot load, and torch of a deprecation in
torchao's code: five warnings per process that no user can act on."""


def quiet_transformers() -> None:
    """transformers 5 logs a load report and a progress bar on every load, datasets a bar per ``map`` pass; workers
    load and pack often. The :data:`QUIET_LOGGERS` are set before any load imports torchao."""
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    import datasets
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()


def set_dropout(config: Any, p: float | None) -> Any:
    """Set every dropout probability of a model config to ``p`` (names differ by architecture)."""
    if p is not None:
        for key, value in list(config.to_dict().items()):
            if "dropout" in key and "layerdrop" not in key and (value is None or isinstance(value, float)):
                setattr(config, key, p)
    return config


def num_layers(model: Any) -> int:
    return int(model.config.num_hidden_layers)


def student_layers(args: StudentArgs, teacher_layers: int, influence: Any = None) -> list[int]:
    """Teacher layer indices a student keeps: ``args.layers``, else ``num_layers`` evenly spaced from first to last,
    or (``layer_selection: importance``) the ``num_layers`` of greatest ``influence`` (one value per layer)."""
    if args.layers is not None:
        bad = [i for i in args.layers if i >= teacher_layers]
        if bad:
            raise ConfigError("layers", f"indices {bad} do not exist; the teacher has layers 0..{teacher_layers - 1}")
        return sorted(args.layers)
    k = teacher_layers if args.num_layers is None else args.num_layers
    if k > teacher_layers:
        raise ConfigError("num_layers", f"is {k} but the teacher has only {teacher_layers} layers")
    if args.layer_selection == "importance":
        return select_layers(influence, k)
    if k == 1:
        return [0]
    return sorted({round(i * (teacher_layers - 1) / (k - 1)) for i in range(k)})


def renumbered_state(teacher: Any, keep: list[int]) -> tuple[dict[str, Any], Callable[[str], int | None]]:
    """The teacher's tensors of the kept layers renumbered 0.. (and every tensor outside the layers), with a
    function naming the student layer of a key (None outside the layers).

    The tensors are the teacher's own (detached, not copied: ``load_state_dict`` copies them into the student, and
    width pruning slices them into new ones), so building a student allocates nothing on the teacher's device
    beyond what it keeps; the teacher's layers the student drops are never touched."""
    renumber = {old: new for new, old in enumerate(keep)}
    state = {}
    for key, tensor in teacher.state_dict().items():
        match = _LAYER_KEY.match(key)
        if match is None:
            state[key] = tensor
        elif int(match["index"]) in renumber:
            state[f"{match['head']}{renumber[int(match['index'])]}.{match['tail']}"] = tensor

    def layer_of(key: str) -> int | None:
        match = _LAYER_KEY.match(key)
        return None if match is None else int(match["index"])

    return state, layer_of


def count_parameters(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())


def select_layers(influence: Any, k: int) -> list[int]:
    """The ``k`` layers of greatest block influence, in model order."""
    return sorted(int(i) for i in influence.topk(k).indices)
