"""Slots of several GPUs (issue 25): a trial on ``train.devices`` GPUs runs in a worker process that sees a group of
them. ``hpo worker --gpus 0-7`` of a study with ``train.devices: 4`` starts two processes, on GPUs 0-3 and 4-7
(each sees its group as ``cuda:0``..``cuda:3``); ``hpo run`` on such a node does the same. On a node with a faked
count of GPUs: the grouping, each child's environment and command line, and the one-line refusals."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

import hpo.execution as execution
from hpo._cli import main
from hpo.execution import Slot, _run, _slots, create, parse_gpus, plan_slots
from hpo.execution._run import node_slots, slot_config
from hpo.execution._worker import StopFlag
from hpo.study import config_from_dict
from objectives import ConfigError
from tests.conftest import tiny_config


def spread(name: str, devices: int, **overrides: Any) -> Any:
    """A distillation study of the tiny BERT whose trials each take ``devices`` devices (4 examples each)."""
    train = {"max_steps": 4, "batch_size": 4 * devices, "devices": devices}
    return config_from_dict(tiny_config(name, train=train, **overrides))


@pytest.fixture
def eight_gpus(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """A node with 8 CUDA devices (faked) where ``hpo worker`` records the slots it would start."""
    calls: dict[str, Any] = {}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    monkeypatch.setattr(StopFlag, "install", lambda self: None)

    def launch(slots: list[Slot], child: list[str], url: str, visible: str | None = None) -> int:
        calls["launch"] = (slots, child)
        return 0

    monkeypatch.setattr(execution, "launch", launch)
    monkeypatch.setattr(_run, "launch", launch)
    return calls


def test_gpu_lists_take_ranges() -> None:
    assert parse_gpus("0-7", 8) == list(range(8))
    assert parse_gpus("0-1,4-5", 8) == [0, 1, 4, 5]
    with pytest.raises(ValueError, match="--gpus: 0-3,3 lists a GPU twice"):
        parse_gpus("0-3,3", 8)
    with pytest.raises(ValueError, match="--gpus: expected all, none or indices like 0,1,3 or 0-7, got '3-1'"):
        parse_gpus("3-1", 8)


def test_slots_group_the_listed_gpus_in_their_order() -> None:
    assert plan_slots(list(range(8)), 1, 1, 16, devices=4) == [
        Slot(0, 8, (0, 1, 2, 3)),
        Slot(4, 8, (4, 5, 6, 7)),
    ]
    assert [s.gpus for s in plan_slots([7, 1, 3, 5], 1, 1, 4, devices=2)] == [(7, 1), (3, 5)]
    assert [s.gpus for s in plan_slots([2, 3], 1, 1, 4)] == [(2,), (3,)]  # one GPU a slot, as before
    assert plan_slots([], 1, 2, 4, devices=2) == [Slot(None, 2)] * 2  # CPU slots: a trial's ranks are processes
    with pytest.raises(ValueError, match=r"--gpus: 6 GPUs do not divide into groups of train.devices \(4\)"):
        plan_slots(list(range(6)), 1, 1, 16, devices=4)
    with pytest.raises(ValueError, match=r"--per-gpu: 2 processes per GPU cannot share GPUs that train.devices"):
        plan_slots(list(range(8)), 2, 1, 16, devices=4)


def test_a_study_worker_groups_its_gpus_by_the_study_s_train_devices(
    eight_gpus: dict[str, Any], tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path}/hpo.db"
    create(spread("four", 4), url)
    assert main(["worker", "--storage", url, "--study", "four", "--gpus", "0-7", "--threads", "16"]) == 0
    slots, child = eight_gpus["launch"]
    assert slots == [Slot(0, 8, (0, 1, 2, 3)), Slot(4, 8, (4, 5, 6, 7))]
    assert child[:2] == ["--study", "four"]


@pytest.mark.parametrize(
    ("flags", "error"),
    [
        (["--gpus", "0-5"], "--gpus: 6 GPUs do not divide into groups of train.devices (4); list a multiple of 4"),
        (["--gpus", "all", "--per-gpu", "2"], "--per-gpu: 2 processes per GPU cannot share GPUs"),
        (["--gpus", "all", "--devices", "4"], "--devices: is for pool workers; a study's worker groups its GPUs"),
    ],
)
def test_gpu_groups_that_cannot_be_made_are_refused_in_one_line(
    eight_gpus: dict[str, Any], tmp_path: Path, flags: list[str], error: str, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path}/hpo.db"
    create(spread("four", 4), url)
    assert main(["worker", "--storage", url, "--study", "four", *flags]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("hpo: error: ")]
    assert len(errors) == 1 and error in errors[0]
    assert eight_gpus == {}  # nothing started


def test_a_pool_worker_groups_by_devices_and_skips_studies_of_another_count(
    eight_gpus: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path}/hpo.db"
    assert main(["worker", "--storage", url, "--gpus", "0-7", "--devices", "2", "--threads", "8"]) == 0
    slots, child = eight_gpus["launch"]
    assert [s.gpus for s in slots] == [(0, 1), (2, 3), (4, 5), (6, 7)]
    assert "--study" not in child
    assert main(["worker", "--storage", url, "--devices", "2"]) == 2
    assert "--devices: groups the GPUs of --gpus" in capsys.readouterr().err
    # a pool slot of two GPUs runs the studies of two devices a trial, on cuda:0 and cuda:1 of its group, and
    # refuses the others (the pool skips them with this reason)
    assert slot_config(spread("two", 2), "2,3").device == "cuda:0"
    with pytest.raises(ConfigError, match=r"train.devices: study 'four' trains each trial on 4 GPUs and this worker"):
        slot_config(spread("four", 4), "2,3")
    with pytest.raises(ConfigError, match=r"on 1 GPUs and this worker's slots have 2 \(GPUs 2,3\)"):
        slot_config(spread("one", 1), "2,3")


def test_each_child_sees_its_group_of_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    """``launch`` pins each slot's process to its group (of the GPUs this process may use) and names the group."""
    started: list[tuple[list[str], dict[str, str]]] = []

    class Child:
        def __init__(self, args: list[str], env: dict[str, str], pass_fds: tuple[int, ...]) -> None:
            started.append((args, env))
            self.pid, self.returncode = 1000 + len(started), 0

        def poll(self) -> int:
            return 0

    monkeypatch.setattr(subprocess, "Popen", Child)
    monkeypatch.setattr(_slots.signal, "signal", lambda *a: None)
    slots = plan_slots([0, 1, 2, 3], 1, 1, 8, devices=2)
    assert _slots.launch(slots, ["--study", "s"], "sqlite:///x.db", visible_devices="4,5,6,7") == 0
    assert [env["CUDA_VISIBLE_DEVICES"] for _, env in started] == ["4,5", "6,7"]
    assert [args[args.index("--slot-gpu") + 1] for args, _ in started] == ["0,1", "2,3"]
    assert [args[args.index("--threads") + 1] for args, _ in started] == ["4", "4"]


def test_hpo_run_on_a_node_runs_a_trial_per_group_of_gpus(
    eight_gpus: dict[str, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert [s.gpus for s in node_slots(spread("four", 4), 16)] == [(0, 1, 2, 3), (4, 5, 6, 7)]
    assert [s.gpus for s in node_slots(spread("three", 3), 16)] == [(0, 1, 2), (3, 4, 5)]  # GPUs 6, 7 idle
    assert node_slots(spread("one", 1), 16) == []  # one process, as before
    assert node_slots(spread("pinned", 4, device="cuda:4"), 16) == []  # a device named: this process
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert node_slots(spread("four", 4), 16) == []  # one trial at a time: this process, ranks on cuda:0..3
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    url = f"sqlite:///{tmp_path}/hpo.db"
    table = _run.run(spread("four", 4), url, threads=16)
    slots, child = eight_gpus["launch"]
    assert [s.gpus for s in slots] == [(0, 1, 2, 3), (4, 5, 6, 7)] and child == ["--study", "four"]
    assert "study 'four'" in table
    # through the CLI: --memory-limit caps each worker process, not this one (which would start CUDA on GPU 0)
    capped: list[Any] = []
    monkeypatch.setattr(execution, "start_memory", lambda **kw: capped.append(kw))
    path = tmp_path / "four.yaml"
    path.write_text(yaml.safe_dump(tiny_config("four", train={"max_steps": 4, "batch_size": 16, "devices": 4})))
    assert main(["run", str(path), "--storage", url, "--memory-limit", "9000"]) == 0
    assert eight_gpus["launch"][1] == ["--study", "four", "--memory-limit", "9000"] and capped == []


def test_a_pool_slot_leaves_a_study_of_another_device_count_to_other_workers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from hpo.execution import Pool
    from storage import create_storage

    url = f"sqlite:///{tmp_path}/hpo.db"
    create(spread("four", 4), url)
    storage = create_storage(url, create_tables=False)
    pool = Pool(storage, until_idle=True, poll=0.1, gpu="0,1")  # a slot of 2 GPUs (hpo worker --devices 2)
    with caplog.at_level("WARNING", logger="hpo"):
        assert pool.run() == 0
    [reason] = pool.unrunnable.values()
    assert "train.devices: study 'four' trains each trial on 4 GPUs and this worker's slots have 2" in reason
    assert "this worker skips it" in caplog.text
    assert storage.get_all_trials(storage.get_study_id_from_name("four")) == []  # no trial started
