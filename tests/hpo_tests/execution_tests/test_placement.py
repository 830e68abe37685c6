"""Where worker processes train (issue 24): every ``hpo worker`` flag combination on a node with a faked count of
GPUs, what ``device: auto`` becomes in each, and what the trials record; and the memory set-up of a slot (CUDA
started before the data cap, 1/K of the GPU with ``--per-gpu K``) in its order."""

from __future__ import annotations

import resource
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch

import hpo.execution as execution
from hpo._cli import main
from hpo.execution import Slot, _slots, create, run_slot
from hpo.execution._run import placement, resolve_device, slot_config
from hpo.execution._worker import StopFlag
from hpo.study import config_from_dict
from objectives.evaluation import process_memory
from tests.hpo_tests.execution_tests.test_workers import synthetic


@pytest.fixture
def gpu_node(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """A node with 2 CUDA devices (faked) where ``hpo worker`` records what it would start instead of starting it."""
    calls: dict[str, Any] = {}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(StopFlag, "install", lambda self: None)  # no signal handlers in the test process

    def launch(slots: list[Slot], child: list[str], url: str, visible: str | None = None) -> int:
        calls["launch"] = (slots, child)
        return 0

    def one_slot(url: str, study: str, *, gpu: int | None, **kw: Any) -> int:
        calls["slot"] = gpu
        return 0

    def memory(*, cuda: bool, per_gpu: int = 1, mib: int | None = None) -> None:
        calls["memory"] = (cuda, per_gpu, mib)

    monkeypatch.setattr(execution, "launch", launch)
    monkeypatch.setattr(execution, "run_slot", one_slot)
    monkeypatch.setattr(execution, "start_memory", memory)
    return calls


@pytest.mark.parametrize(
    ("flags", "slots", "per_gpu"),
    [
        ([], None, None),  # one process, not pinned: runs in this process on the CPU (device auto)
        (["--procs", "3"], [Slot(None, 2)] * 3, None),  # CPU processes, none pinned, no share of a GPU
        (["--gpus", "none", "--procs", "2"], [Slot(None, 4)] * 2, None),
        (["--gpus", "all"], [Slot(0, 4), Slot(1, 4)], "1"),
        (["--gpus", "1", "--per-gpu", "2"], [Slot(1, 4), Slot(1, 4)], "2"),
        (["--gpus", "0,1", "--per-gpu", "2"], [Slot(0, 2), Slot(0, 2), Slot(1, 2), Slot(1, 2)], "2"),
    ],
)
def test_worker_flags_place_each_process(
    gpu_node: dict[str, Any], tmp_path: Path, flags: list[str], slots: list[Slot] | None, per_gpu: str | None
) -> None:
    url = f"sqlite:///{tmp_path}/hpo.db"
    create(config_from_dict(synthetic("s")), url)  # GPU slots are grouped by its train.devices (1)
    assert main(["worker", "--storage", url, "--study", "s", "--threads", "8", *flags]) == 0  # 8 cores to share
    if slots is None:
        assert "launch" not in gpu_node and gpu_node["slot"] is None and gpu_node["memory"] == (False, 1, None)
        return
    planned, child = gpu_node["launch"]
    assert planned == slots
    assert ("--per-gpu" in child) == (per_gpu is not None)
    if per_gpu is not None:
        assert child[child.index("--per-gpu") + 1] == per_gpu


@pytest.mark.parametrize(
    ("flags", "error"),
    [
        (["--gpus", "all", "--procs", "2"], "--procs: is for CPU workers; with --gpus, --per-gpu K runs K processes"),
        (["--per-gpu", "2"], "--per-gpu: is for GPU slots (--gpus all or indices); CPU workers take --procs N"),
        (["--gpus", "none", "--per-gpu", "2", "--procs", "2"], "--per-gpu: is for GPU slots"),
        (["--gpus", "2"], "--gpus: GPUs [2] do not exist here (2 visible)"),
    ],
)
def test_worker_flags_that_would_do_nothing_are_refused(
    gpu_node: dict[str, Any], tmp_path: Path, flags: list[str], error: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["worker", "--storage", f"sqlite:///{tmp_path}/hpo.db", "--study", "s", *flags]) == 2
    assert error in capsys.readouterr().err
    assert gpu_node == {}  # nothing started


def test_a_slot_process_sets_up_its_share_of_its_gpu(gpu_node: dict[str, Any], tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/hpo.db"
    args = ["worker", "--storage", url, "--study", "s", "--slot-gpu", "1", "--per-gpu", "3", "--memory-limit", "9000"]
    assert main(args) == 0
    assert gpu_node == {"memory": (True, 3, 9000), "slot": 1}
    assert main(["worker", "--storage", url, "--study", "s", "--memory-limit", "9000"]) == 0
    assert gpu_node == {"memory": (False, 1, 9000), "slot": None}  # not pinned: CUDA never started


def _config(device: str) -> Any:
    return config_from_dict({**synthetic("placed", n_trials=2), "device": device})


def test_device_auto_is_the_gpu_for_one_process_and_a_pinned_slot_and_the_cpu_for_other_slots(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    assert resolve_device("auto") == torch.device("cuda")  # hpo run: one process, the GPU to itself
    assert slot_config(_config("auto"), None).device == "cpu"  # --gpus none / --procs N / a pool without --gpus
    assert slot_config(_config("auto"), 1).device == "cuda:0"  # pinned: CUDA_VISIBLE_DEVICES shows it GPU 1 alone
    assert slot_config(_config("cpu"), 1).device == "cuda:0"  # pinned runs on its GPU whatever the study says
    assert slot_config(_config("cuda:1"), None).device == "cuda:1"  # named by the study: kept
    assert placement(torch.device("cpu"), None) == {"device": "cpu", "gpu": "cpu"}
    assert placement(torch.device("cuda:0"), 1) == {"device": "cuda:0", "gpu": 1}  # the slot's GPU on the node
    assert placement(torch.device("cuda:1"), None) == {"device": "cuda:1", "gpu": 1}
    assert placement(torch.device("cuda"), None) == {"device": "cuda", "gpu": 0}


def test_an_unpinned_slot_on_a_gpu_node_trains_and_records_the_cpu(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU node; the slot is not pinned
    url = f"sqlite:///{tmp_path}/hpo.db"
    create(_config("auto"), url)
    assert run_slot(url, "placed", gpu=None, threads=1, max_trials=None, timeout=None, stop=StopFlag()) == 2
    done = optuna.load_study(study_name="placed", storage=url).get_trials()
    assert [(t.user_attrs["device"], t.user_attrs["gpu"]) for t in done] == [("cpu", "cpu")] * 2


def test_a_gpu_slot_starts_cuda_then_takes_its_share_then_caps_data_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, Any]] = []
    monkeypatch.setattr(_slots, "_start_cuda", lambda: calls.append(("cuda", None)))
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", lambda f: calls.append(("fraction", f)))
    monkeypatch.setattr(resource, "setrlimit", lambda what, limits: calls.append(("rlimit", (what, limits[0]))))
    mib = process_memory("VmData") // 2**20 + 4096
    _slots.start_memory(cuda=True, per_gpu=4, mib=mib)
    assert calls == [("cuda", None), ("fraction", 0.25), ("rlimit", (resource.RLIMIT_DATA, mib * 2**20))]
    calls.clear()
    _slots.start_memory(cuda=True, per_gpu=1, mib=None)  # alone on its GPU: no fraction, no cap
    assert calls == [("cuda", None)]
    calls.clear()
    _slots.start_memory(cuda=False, per_gpu=1, mib=mib)  # a CPU process never starts CUDA
    assert calls == [("rlimit", (resource.RLIMIT_DATA, mib * 2**20))]
