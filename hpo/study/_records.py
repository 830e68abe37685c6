"""What hpo keeps in a study, by name: the stored config, the trial budget, the teacher and its validation metrics
(and when they say the teacher looks broken), and per-trial validation curves. Views read these; execution writes
them."""

from __future__ import annotations

CONFIG_ATTR = "config"
"""Study user attribute holding the study's config (without run-control fields such as the storage URL)."""


BUDGET_ATTR = "n_trials"
"""Study user attribute holding the trial budget that workers follow; the latest ``hpo create`` / ``hpo run`` sets
it."""


TEACHER_ATTR = "teacher"
"""Study user attribute with the teacher's entry in the artifact store (``entry``), the local path of the worker
that recorded it (``path``) and its validation metrics."""


STORE_ATTR = "store"
"""Study user attribute naming the study's artifact store: its ``root`` and the random ``id`` that ``hpo create``
also wrote into the store's marker, so a worker can tell the study's store from another folder."""


NEAR_CONSTANT = 0.98
"""A teacher that gives one label to at least this share of the validation examples predicts near-constantly."""


F1_GAP = 0.15
"""A teacher whose macro-F1 is this far or more below its accuracy gets the majority label right and the others
wrong (a constant binary predictor at 0.61 accuracy scores 0.38 macro-F1)."""


def teacher_warning(metrics: dict) -> str | None:
    """Why distilling from a teacher with these validation ``metrics`` is meaningless, or None if nothing says so:
    near-constant predictions (``top_share`` >= :data:`NEAR_CONSTANT`) or macro-F1 far below accuracy
    (:data:`F1_GAP`)."""
    accuracy, f1, top = metrics.get("accuracy"), metrics.get("f1"), metrics.get("top_share")
    if top is not None and top >= NEAR_CONSTANT:
        why = f"it gives one label to {100 * top:.0f}% of the validation examples"
    elif accuracy is not None and f1 is not None and accuracy - f1 >= F1_GAP:
        why = f"its macro-F1 ({f1:.3f}) is far below its accuracy ({accuracy:.3f})"
    else:
        return None
    return (
        f"the teacher looks broken: {why}; students distilled from it learn little beyond the majority label. "
        "Train it longer (teacher.train.max_steps), check the labels, or pick another base model."
    )


TIMING_ATTRS = ("step_seconds", "eval_seconds", "eval_rows", "compile_seconds")
"""Trial user attributes saying where a trial's time (``train_seconds``) went, as ``objectives.training.fit``
measured it: one optimiser step, one validation pass, the rows (blocks) of that pass, and ``train.compile``'s
compile time (outside ``train_seconds``). ``hpo export`` estimates
a full training's time from them (the synthetic objective records none)."""

TRAINING_ATTRS = ("trainable_params",)
"""Trial user attributes on what a trial trained: the parameters its optimiser updated (a LoRA adapter's with
``student.adapter``, else every one), as ``objectives.training.fit`` counted them."""


CURVE_PREFIX = "val_step_"
"""User attributes of a multi-objective trial's validation curve (``val_step_<step>``: the pruning metric)."""
