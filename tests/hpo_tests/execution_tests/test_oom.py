"""Out-of-memory trials (issue 24): recognised by their messages, and their model freed before the cache is emptied."""

from __future__ import annotations

import weakref
from pathlib import Path

import optuna
import pytest
import torch

from hpo.execution import TrialRunner
from hpo.execution._runner import is_oom
from hpo.study import config_from_dict, open_study
from tests.hpo_tests.execution_tests.test_workers import synthetic


@pytest.mark.parametrize(
    "error",
    [
        MemoryError(),
        torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        RuntimeError("CUDA error: out of memory\nCUDA kernel errors might be asynchronously reported"),
        RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"),
        RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED"),
        RuntimeError("cuDNN error: CUDNN_STATUS_INTERNAL_ERROR_DEVICE_ALLOCATION_FAILED"),
        RuntimeError("[enforce fail at alloc_cpu.cpp:121] DefaultCPUAllocator: can't allocate memory: you tried"),
    ],
)
def test_allocation_failures_of_every_library_count_as_oom(error: BaseException) -> None:
    assert is_oom(error)


def test_other_errors_are_not_oom() -> None:
    assert not is_oom(RuntimeError("CUDA error: CUBLAS_STATUS_EXECUTION_FAILED when calling `cublasSgemm`"))
    assert not is_oom(ValueError("expected 2 labels"))


class Student(torch.nn.Module):
    """A model with a reference cycle (as a module tree with back references has): only a collection frees it."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(2**20))
        self.cycle = [self]


@pytest.mark.parametrize("error", [MemoryError, optuna.TrialPruned])
def test_a_failed_or_pruned_trial_frees_its_model_before_the_cache_is_emptied(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: type[BaseException]
) -> None:
    config = config_from_dict(synthetic("oom"))
    study = open_study(config, f"sqlite:///{tmp_path}/s.db")
    runner = TrialRunner(config)
    models: list[weakref.ref[Student]] = []
    alive_at_empty_cache: list[bool] = []

    def step(model: Student) -> None:
        activations = model.weight * 2  # noqa: F841 - held by this frame when the allocation fails
        raise error()

    def train(*args: object, **kwargs: object) -> dict[str, float]:
        model = Student()
        models.append(weakref.ref(model))
        step(model)
        return {}

    monkeypatch.setattr(runner, "train", train)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: alive_at_empty_cache.append(models[-1]() is not None))
    study.optimize(runner, n_trials=2, catch=(MemoryError,))
    assert alive_at_empty_cache == [False, False]  # each trial's model was gone when its memory was returned
    if error is MemoryError:
        assert [t.user_attrs["fail_reason"] for t in study.trials] == ["oom", "oom"]
    else:
        assert [t.state for t in study.trials] == [optuna.trial.TrialState.PRUNED] * 2
