"""The training loop's step callback, on a real one-layer MiniLM student."""

from __future__ import annotations

import math

import pytest
import torch

from objectives import DataArgs, StudentArgs, TrainArgs, build_student, load_classifier, load_task, report_steps
from objectives.data import encode
from objectives.students import load_tokenizer
from objectives.training import LOG_EVERY, get_loss, train


def test_step_callback_sees_every_step_loss_at_logging_steps_and_validation_accuracy() -> None:
    task = load_task(DataArgs(max_train_rows=64, max_val_rows=32))
    tok = load_tokenizer("minilm-l6")
    train_data = encode(tok, task.train(), 24)
    val_data = encode(tok, task.validation(), 24)
    torch.manual_seed(0)
    model = build_student(load_classifier("minilm-l6", 2), StudentArgs(num_layers=1), 0.1)
    args = TrainArgs(max_steps=23, batch_size=8, eval_every=8)
    calls: list[tuple[int, int, float | None, float | None]] = []
    reports: list[tuple[int, dict[str, float], bool]] = []
    result = train(
        model,
        train_data,
        val_data,
        args,
        loss_fn=get_loss("ce"),
        n_layers=1,
        seed=0,
        on_step=lambda *call: calls.append(call),
        report=lambda step, scores, final: reports.append((step, scores, final)),
    )
    assert [c[0] for c in calls] == list(range(1, 24)) and {c[1] for c in calls} == {23}
    # Reports carry every validation score; only the last validation, with the whole budget trained, is final.
    assert [(s, final) for s, _, final in reports] == [(8, False), (16, False), (23, True)]
    assert reports[-1][1] == {
        "accuracy": result.evaluation.accuracy,
        "f1": result.evaluation.f1,
        "val_loss": result.evaluation.loss,
    }
    logging = {s for s, _, loss, _ in calls if loss is not None}
    assert logging == {8, 10, 16, 20, 23} == {s for s in range(1, 24) if s % 8 == 0 or s % LOG_EVERY == 0 or s == 23}
    assert all(math.isfinite(loss) and 0 < loss < 5 for _, _, loss, _ in calls if loss is not None)
    validated = {s: acc for s, _, _, acc in calls if acc is not None}
    assert sorted(validated) == [8, 16, 23] and validated[23] == result.evaluation.accuracy

    # report_steps makes a callback the default of every train call in its block (how hpo threads it through).
    seen: list[int] = []
    with report_steps(lambda step, *_: seen.append(step)):
        train(model, train_data, val_data, TrainArgs(max_steps=3, batch_size=8), **_plain())
    train(model, train_data, val_data, TrainArgs(max_steps=2, batch_size=8), **_plain())
    assert seen == [1, 2, 3]


def _plain() -> dict:
    return {"loss_fn": get_loss("ce"), "n_layers": 1, "seed": 0}


@pytest.mark.slow
def test_compiled_training_matches_eager() -> None:
    task = load_task(DataArgs(max_train_rows=48, max_val_rows=16))
    tok = load_tokenizer("minilm-l6")
    train_data, val_data = encode(tok, task.train(), 24), encode(tok, task.validation(), 24)
    teacher = load_classifier("minilm-l6", 2)
    results = []
    for compile_ in (False, True):
        torch.manual_seed(0)
        model = build_student(teacher, StudentArgs(num_layers=1), 0.0)
        args = TrainArgs(max_steps=3, batch_size=8, eval_every=3, compile=compile_)
        results.append(train(model, train_data, val_data, args, **_plain()).evaluation)
    eager, compiled = results
    assert compiled.loss == pytest.approx(eager.loss, rel=1e-3)
