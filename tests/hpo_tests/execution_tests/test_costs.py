"""Costs kept in a study (issue 24): measured with the GPU idle of the other processes on it, and one kind of
hardware per study for objectives that depend on it, unless the study allows mixing."""

from __future__ import annotations

import fcntl
import threading
import time
from pathlib import Path

import pytest
import torch

from hpo._cli import main
from hpo.execution import create
from hpo.execution._costs import DeviceLock, StudyCosts, check_hardware, gpu_lock
from hpo.execution._worker import StopFlag
from hpo.study import config_from_dict
from objectives import ConfigError
from objectives.evaluation import stored_cost
from tests.conftest import tiny_decoder
from tests.hpo_tests.execution_tests.test_workers import synthetic

LATENCY = {"accuracy": "maximize", "latency_ms": "minimize"}


def _after(events: list[str], seconds: float = 0.3) -> list[str]:
    time.sleep(seconds)
    return list(events)


def test_a_measurement_waits_for_the_training_siblings_to_let_it_in_and_they_wait_for_it(tmp_path: Path) -> None:
    path = tmp_path / "gpu.lock"
    trainer, late, measurer = DeviceLock(path), DeviceLock(path), DeviceLock(path)  # three processes' files
    events: list[str] = []
    trainer.share()
    trainer.let_in()  # nobody waits: the trial goes on holding its share
    assert trainer.shared

    def measure() -> None:
        with measurer.exclusive():
            events.append("measuring")
            time.sleep(0.3)
            events.append("measured")

    measuring = threading.Thread(target=measure)
    measuring.start()
    assert _after(events) == []  # the sibling trains: the measurement waits
    starting = threading.Thread(target=lambda: (late.share(), events.append("late trial trains")))
    starting.start()  # a trial starting now waits behind the measurement (the gate), so it cannot starve it
    assert _after(events) == []
    trainer.let_in()  # the sibling validates: it steps aside until the measurement is done
    events.append("sibling trains again")
    measuring.join(5)
    starting.join(5)
    assert events[:2] == ["measuring", "measured"]
    assert sorted(events[2:]) == ["late trial trains", "sibling trains again"]
    assert trainer.shared and late.shared
    trainer.release()
    late.release()


def test_stored_cost_measures_under_the_lock_and_takes_a_value_stored_while_it_waited(tmp_path: Path) -> None:
    study = create(config_from_dict(synthetic("costs", directions=LATENCY)), f"sqlite:///{tmp_path}/s.db")
    path = tmp_path / "gpu.lock"
    costs, sibling = StudyCosts(study, DeviceLock(path)), StudyCosts(study, DeviceLock(path))
    model = tiny_decoder("llama")
    probe = DeviceLock(path)

    def measure() -> dict[str, float]:
        with pytest.raises(BlockingIOError):  # nobody else can train on the GPU meanwhile
            fcntl.flock(probe._main, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return {"latency_ms": 1.0}

    assert stored_cost(model, [1], measure, costs) == {"latency_ms": 1.0}
    other = tiny_decoder("llama", num_hidden_layers=2)
    holding = threading.Event()

    def sibling_measures_first() -> None:
        with sibling.measuring():
            holding.set()
            time.sleep(0.3)
            stored_cost(other, [1], lambda: {"latency_ms": 2.0}, sibling)

    thread = threading.Thread(target=sibling_measures_first)
    thread.start()
    holding.wait(5)
    assert stored_cost(other, [1], lambda: {"latency_ms": 99.0}, costs) == {"latency_ms": 2.0}  # theirs, unmeasured
    thread.join(5)


def test_a_gpu_lock_is_named_by_the_gpu_uuid_and_a_cpu_has_none(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    class Properties:
        uuid = "GPU-1234"

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: Properties())
    lock = gpu_lock("cuda:0", tmp_path)
    assert lock is gpu_lock("cuda", tmp_path)  # one per GPU and process
    assert (tmp_path / "hpo-gpu-GPU-1234.lock").exists()
    assert gpu_lock("cpu", tmp_path) is None


def test_a_study_measures_its_latency_objective_on_one_kind_of_hardware(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path}/s.db"
    config = config_from_dict(synthetic("kinds", directions=LATENCY))
    study = create(config, url)
    check_hardware(study, config, "cuda")  # the first worker, on a GPU
    check_hardware(study, config, "cuda")
    with pytest.raises(ConfigError, match=r"measures latency_ms on cuda .* this worker trains on cpu"):
        check_hardware(study, config, "cpu")
    monkeypatch.setattr(StopFlag, "install", lambda self: None)
    assert main(["worker", "--storage", url, "--study", "kinds"]) == 2  # a CPU worker refuses it, in one line
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("hpo: error: device: study 'kinds' measures latency_ms on cuda") and "mix_hardware" in line
    mixed = config_from_dict(synthetic("kinds", directions=LATENCY, mix_hardware=True))
    check_hardware(study, mixed, "cpu")  # told to mix
    quality = config_from_dict(synthetic("quality", constraints={"size_mb": "<= 40"}))
    check_hardware(create(quality, url), quality, "cpu")  # nothing measured on the hardware: any worker
    with pytest.raises(ConfigError, match="mix_hardware: does nothing: no objective or constraint"):
        config_from_dict(synthetic("quality", mix_hardware=True))
    assert config_from_dict(synthetic("c", constraints={"speedup": ">= 2"}, mix_hardware=True)).hardware_metrics == [
        "speedup"
    ]
