"""The composer: a classifier student from its teacher and ``student`` config: which layers it keeps (evenly spaced
or by importance) and how wide it is (width pruning), copied from the teacher or initialised from scratch."""

from __future__ import annotations

import copy
from typing import Any

from objectives._config import ConfigError, StudentArgs
from objectives.data._data import Encoded
from objectives.students._models import narrow_classifier
from objectives.students._pruning import calibrate_head, calibration_batches, prune_widths, teacher_importance
from objectives.students._shared import num_layers, renumbered_state, set_dropout, student_layers


def _importance(teacher: Any, args: StudentArgs, calibration: Encoded | None) -> Any:
    """The teacher's :class:`objectives.students._pruning.Importance` on the calibration sample when width ratios or
    ``layer_selection: importance`` need it (measured once per teacher and sample), else None."""
    if not args.narrower and args.layer_selection != "importance":
        return None
    if calibration is None:
        raise ConfigError("calibration_size", "width ratios and layer_selection: importance need training data")
    asked_by = "hidden_ratio" if args.narrower else "layer_selection"
    return teacher_importance(teacher, calibration, args.calibration_size, asked_by)


def kept_layers(teacher: Any, args: StudentArgs, calibration: Encoded | None = None) -> list[int]:
    """The teacher layers the student of ``args`` keeps (:func:`student_layers`, ranked on ``calibration`` for
    ``layer_selection: importance``): student layer i is teacher layer ``kept_layers(...)[i]``.

    One evenly chosen layer is the teacher's last, not its first (:func:`student_layers`' choice, which causal LMs
    keep): a BERT classifier reads the [CLS] token, which after the teacher's first layer hardly depends on the
    input (on MiniLM fine-tuned on rt-snippets its spread over validation texts was 0.001, against 0.17 after the
    last layer), and a student of the first layer alone stayed at the majority class for its 100 steps."""
    if args.layers is None and args.num_layers == 1 and args.layer_selection == "even":
        return [num_layers(teacher) - 1]
    importance = _importance(teacher, args, calibration)
    return student_layers(args, num_layers(teacher), None if importance is None else importance.influence)


def build_student(
    teacher: Any,
    args: StudentArgs,
    dropout: float | None = None,
    calibration: Encoded | None = None,
    calibrate: bool = True,
) -> Any:
    """A student with the teacher's architecture, fewer layers and (with ratios below 1) narrower.

    ``init: teacher`` copies the embeddings, the kept layers (renumbered) and the head from the teacher, so tensors
    are equal; with width ratios below 1 only the most important heads, neurons and channels are kept
    (:func:`objectives.students._pruning.prune_widths`), ranked on ``args.calibration_size`` examples of ``calibration``
    (the training split), which ``layer_selection: importance`` uses too; the narrowed student's output layer is
    then rescaled to the teacher's logits on that sample (:func:`objectives.students._pruning.calibrate_head`;
    ``calibrate=False`` leaves it as sliced, for comparison). ``init: scratch`` initialises randomly, optionally
    with another width.
    """
    from transformers import AutoModelForSequenceClassification

    importance = _importance(teacher, args, calibration)
    keep = kept_layers(teacher, args, calibration)
    config = set_dropout(copy.deepcopy(teacher.config), dropout)
    config.num_hidden_layers = len(keep)
    for key in ("hidden_size", "intermediate_size", "num_attention_heads"):
        if getattr(args, key) is not None:
            setattr(config, key, getattr(args, key))
    if args.init == "scratch":
        return AutoModelForSequenceClassification.from_config(config)
    state, layer_of = renumbered_state(teacher, keep)
    if args.narrower:
        student = prune_widths(teacher.config, config, keep, importance, args, state, layer_of)
        if calibrate and importance.logits is not None and calibration is not None:
            calibrate_head(student, calibration_batches(calibration, args.calibration_size), importance.logits)
        return student
    student = narrow_classifier(config)
    student.load_state_dict(state, strict=True)
    return student
