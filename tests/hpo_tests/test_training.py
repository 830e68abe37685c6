"""`hpo train`'s baselines: the student without teacher is the distilled student's start, trained without it."""

from __future__ import annotations

import copy
import dataclasses
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from hpo._training import FROM_BASE, NO_TEACHER, train_job, trained_models
from hpo.study import TrainJob
from objectives import DataArgs, DistillArgs, StudentArgs, TeacherArgs, TrainArgs
from objectives.training import unload_teachers
from tests.conftest import sentiment_csv, tiny_distilbert, write_corpus


def _job(task: str, tmp_path: Path, tiny_lm: str) -> TrainJob:
    """A distillation job with the hidden-state term on (the teacher runs live on every batch of the distilled run),
    a few steps of everything, on a local labelled CSV or a local corpus."""
    if task == "classification":
        data = DataArgs(name=sentiment_csv(tmp_path / "reviews.csv"), max_length=24)
        model, student = "minilm-l6", StudentArgs(num_layers=2)
    else:
        data = DataArgs(name=write_corpus(tmp_path / "corpus.txt"), block_size=16, max_train_rows=32, max_val_rows=8)
        model, student = tiny_lm, StudentArgs(num_layers=2)
    steps = TrainArgs(max_steps=2, batch_size=8, eval_every=2, eval_batch_size=16, lr=1e-3)
    return TrainJob(
        name="baseline",
        task=task,
        device="cpu",
        teacher_path=str(tmp_path / "teacher"),
        data=data,
        teacher=TeacherArgs(model=model, train=steps),
        student=student,
        train=steps,
        distill=DistillArgs(hidden_weight=1.0, cache_teacher_logits=False),
    )


@pytest.mark.parametrize("task", ["classification", "causal-lm"])
def test_the_student_without_teacher_starts_where_the_distilled_one_does_and_never_runs_the_teacher(
    task: str, tmp_path: Path, tiny_lm: str
) -> None:
    job = _job(task, tmp_path, tiny_lm)
    impl = job.task_spec.implementation()
    work = impl.prepare_workload(job.data, job.teacher.model, "cpu")
    impl.finetune_teacher(work, job.teacher, job.seed, Path(job.teacher_path))
    teacher = impl.load_teacher(Path(job.teacher_path), work)  # the object every later load in this process returns
    model_class = type(teacher)

    # Every forward of a whole model, in order: "teacher", or the student object, with its weights at its first one.
    events: list[Any] = []
    starts: dict[int, dict[str, torch.Tensor]] = {}

    def hook(module: torch.nn.Module, args: Any) -> None:
        if module is teacher:
            events.append("teacher")
        elif type(module) is model_class:
            if id(module) not in starts:
                starts[id(module)] = {k: v.detach().clone() for k, v in module.state_dict().items()}
            events.append(module)

    handle = torch.nn.modules.module.register_module_forward_pre_hook(hook)
    try:
        result = train_job(job, tmp_path / "out", threads=1)
    finally:
        handle.remove()
    assert set(result["test"]) >= {"teacher", "distilled student", NO_TEACHER}

    students = list({id(e): e for e in events if e != "teacher"}.values())
    distilled, untaught = students[0], students[1]
    begins = next(i for i, e in enumerate(events) if e is untaught)
    # The hook sees the live teacher: the distilled student's hidden-state term runs it on its batches ...
    assert "teacher" in events[next(i for i, e in enumerate(events) if e is distilled) : begins]
    # ... and never once from the first forward of the student without teacher on.
    assert "teacher" not in events[begins:]
    first, second = starts[id(distilled)], starts[id(untaught)]
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)  # the same initial weights
    trained = distilled.state_dict()
    assert any(not torch.equal(first[k], trained[k]) for k in first)  # and the distilled one did train

    # Trained from such a start, the baseline needs no teacher at all: gone from disk and memory, it still trains
    # (the pretrained base, not the teacher, is what its speedup is timed against).
    start = copy.deepcopy(impl.initial_student(work, Path(job.teacher_path), job.student, job.train, job.seed))
    shutil.rmtree(job.teacher_path)
    unload_teachers()
    model, metrics = impl.finetune_student(work, job.teacher.model, job.student, job.train, job.seed, init=start)
    assert model is start and metrics["steps"] == job.train.max_steps


def test_a_student_of_its_own_model_is_not_trained_a_third_time_from_the_same_pretrained_start(
    tmp_path: Path, tiny_lm: str
) -> None:
    # With student.model the baseline already starts from that pretrained model (cut, a new head, the same seed):
    # "from the pretrained base" would be the same run again, so it is neither trained nor listed.
    job = _job("classification", tmp_path, tiny_lm)
    texts = [line.rsplit(",", 1)[0] for line in Path(job.data.name).read_text().splitlines()[1:]]
    other = tiny_distilbert(texts, tmp_path / "distilbert")
    job = dataclasses.replace(
        job, student=StudentArgs(model=other, num_layers=1), distill=DistillArgs(cache_teacher_logits=False)
    )
    assert trained_models(job) == ["distilled student", NO_TEACHER]
    result = train_job(job, tmp_path / "out", threads=1)
    assert set(result["test"]) == {"teacher", "distilled student", NO_TEACHER}
    # The same job with the teacher's own architecture keeps the row: its baseline starts from the fine-tuned teacher.
    assert FROM_BASE in trained_models(dataclasses.replace(job, student=StudentArgs(num_layers=1)))
