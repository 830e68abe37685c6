import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hpo.execution import Slot, device_of, parse_gpus, plan_slots, usable_cores
from objectives import ConfigError


def test_parse_gpus() -> None:
    assert parse_gpus("none", 4) == []
    assert parse_gpus("all", 4) == [0, 1, 2, 3]
    assert parse_gpus("0,1,3", 4) == [0, 1, 3]
    with pytest.raises(ValueError, match=r"--gpus: GPUs \[5\] do not exist here \(4 visible\)"):
        parse_gpus("1,5", 4)
    with pytest.raises(ValueError, match="--gpus: expected all, none or indices"):
        parse_gpus("first", 4)
    with pytest.raises(ValueError, match="--gpus: 0 asks for GPUs but no CUDA device is visible here"):
        parse_gpus("0", 0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine where no CUDA device is visible")
@pytest.mark.parametrize("gpus", ["all", "0,1"])
def test_gpus_asked_for_where_none_is_visible_is_one_line_not_a_cpu_worker(tmp_path: Path, gpus: str) -> None:
    env = {**os.environ, "HPO_STORAGE": f"sqlite:///{tmp_path}/hpo.db"}
    result = subprocess.run(
        [sys.executable, "-m", "hpo._cli", "worker", "--gpus", gpus, "--until-idle"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines() == [
        f"hpo: error: --gpus: {gpus} asks for GPUs but no CUDA device is visible here (check the driver, the CUDA "
        "build of torch and CUDA_VISIBLE_DEVICES); for CPU workers leave --gpus out (or --gpus none) and use --procs N"
    ]
    assert list(tmp_path.iterdir()) == []  # no worker started, no database touched


def test_slots_pin_gpus_and_split_cpu_cores() -> None:
    assert plan_slots([0, 2], per_gpu=2, procs=1, cores=16) == [Slot(0, 4), Slot(0, 4), Slot(2, 4), Slot(2, 4)]
    assert plan_slots([], per_gpu=1, procs=4, cores=2) == [Slot(None, 1)] * 4  # never fewer than one thread
    assert plan_slots([], per_gpu=1, procs=2, cores=16) == [Slot(None, 8)] * 2


def test_slots_pin_the_gpus_a_scheduler_allotted() -> None:
    # Slurm / Kubernetes set CUDA_VISIBLE_DEVICES=3,5: slot GPU 1 is the node's GPU 5, not GPU 1.
    assert [device_of(gpu, "3,5") for gpu in (0, 1)] == ["3", "5"]
    assert device_of(1, None) == "1"


def test_usable_cores_follow_the_cpu_affinity_of_the_process() -> None:
    code = "from hpo.execution import usable_cores; print(usable_cores())"
    env = {k: v for k, v in os.environ.items() if k != "SLURM_CPUS_PER_TASK"}
    pinned = subprocess.run(["taskset", "-c", "0", sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert pinned.stdout.strip() == "1", pinned.stderr[-2000:]
    slurm = subprocess.run([sys.executable, "-c", code], env={**env, "SLURM_CPUS_PER_TASK": "1"}, capture_output=True)
    assert slurm.stdout.decode().strip() == "1", slurm.stderr[-2000:]
    assert usable_cores(environ={}) == len(os.sched_getaffinity(0))


def test_usable_cores_follow_the_cgroup_quota_and_slurm(tmp_path: Path) -> None:
    cores = len(os.sched_getaffinity(0))
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text("max 100000\n")  # no quota
    assert usable_cores(cpu_max, environ={}) == cores
    cpu_max.write_text("50000 100000\n")  # half a core: one thread
    assert usable_cores(cpu_max, environ={}) == 1
    cpu_max.write_text(f"{100000 * cores + 1} 100000\n")  # above the affinity: the affinity rules
    assert usable_cores(cpu_max, environ={}) == cores
    assert usable_cores(tmp_path / "absent", environ={"SLURM_CPUS_PER_TASK": "1"}) == 1
    assert usable_cores(tmp_path / "absent", environ={"SLURM_CPUS_PER_TASK": str(cores + 8)}) == cores
    with pytest.raises(ConfigError, match="SLURM_CPUS_PER_TASK: expected a whole number of CPUs >= 1, got 'eight'"):
        usable_cores(tmp_path / "absent", environ={"SLURM_CPUS_PER_TASK": "eight"})


def test_a_secret_in_the_storage_url_query_is_refused_before_any_worker_process_starts() -> None:
    from hpo.execution import launch

    url = "postgresql+psycopg://hpo@db.example:5432/hpo?sslmode=require&password=s3cret-in-query"
    with pytest.raises(ConfigError) as refused:  # HPO_STORAGE, without the password, would still hold it
        launch(plan_slots([], 1, 2, 2), ["--study", "x"], url)
    assert refused.value.key == "--storage" and "s3cret" not in str(refused.value)
    assert "HPO_STORAGE_PASSWORD_FILE" in str(refused.value)
