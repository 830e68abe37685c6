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


def test_cached_teacher_logits_move_to_the_device_batch_by_batch_never_whole(tiny_lm: str, tmp_path) -> None:
    """The memory-mapped cache stays on the host: each batch's rows are indexed there and only that slice moves."""
    from dataclasses import dataclass, field

    from objectives.evaluation import lm_evaluate
    from objectives.students import load_causal_lm
    from objectives.tasks import _causal_lm as lm
    from objectives.training import HeadInputs, read_logits, teacher_logits
    from tests.conftest import write_corpus

    work = lm.prepare_workload(DataArgs(name=write_corpus(tmp_path / "c.txt"), block_size=16, max_val_rows=2), tiny_lm)
    teacher = load_causal_lm(tiny_lm)
    torch.save(teacher_logits(teacher, work.train, 8).state(), tmp_path / "cache.pt")
    stored = read_logits(tmp_path / "cache.pt")  # memory-mapped, as a study's cache is read
    assert isinstance(stored, HeadInputs) and len(stored) == len(work.train) > 4

    @dataclass(frozen=True)
    class Watched(HeadInputs):
        """The stored cache, noting the rows each lookup asked for and the states each move kept."""

        rows: list[torch.Tensor] = field(default_factory=list)
        kept: list[bool] = field(default_factory=list)

        def head_to(self, device: torch.device | str) -> HeadInputs:
            moved = super().head_to(device)
            self.kept.append(moved.states is self.states)  # only the head moves, the states stay where they are
            return Watched(moved.states, moved.weight, moved.bias, self.rows, self.kept)

        def logits(self, rows: torch.Tensor, length: int | None = None) -> torch.Tensor:
            self.rows.append(rows)
            return super().logits(rows, length)

    cache = Watched(stored.states, stored.weight, stored.bias)
    kd = get_loss("lm_kd", alpha=0.5, divergence="forward_kl", jsd_beta=0.5, temperature=2.0)
    seen: list[torch.Tensor] = []

    def loss_fn(logits: torch.Tensor, labels: torch.Tensor, given: torch.Tensor) -> torch.Tensor:
        seen.append(given)
        return kd(logits, labels, given)

    args = TrainArgs(max_steps=3, batch_size=4, eval_every=3, lr=1e-3)
    student = load_causal_lm(tiny_lm)
    train(
        student,
        work.train,
        work.validation,
        args,
        loss_fn=loss_fn,
        n_layers=4,
        seed=0,
        teacher=cache,
        evaluate=lm_evaluate,
    )
    assert cache.kept == [True]  # the whole cache never went to the device
    assert [len(r) for r in cache.rows] == [4, 4, 4] and all(r.device.type == "cpu" for r in cache.rows)
    for rows, given in zip(cache.rows, seen, strict=True):  # the loss saw exactly its batch's logits
        assert given.shape[0] == 4 and torch.equal(given, stored.logits(rows))
