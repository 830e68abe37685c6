"""The GPU bench scripts' plumbing, on this CPU: ``bench/gpu_workers.py`` (GPU mapping, shared artifacts, a real
run of its ``--cpu`` mode) and ``bench/gpu_smoke.py`` (its ``--cpu`` mode: every check reports a line)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from storage import ArtifactDir
from tests.conftest import tiny_bert

ROOT = Path(__file__).resolve().parents[1]


def _script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_physical_gpu_follows_cuda_visible_devices() -> None:
    workers = _script("gpu_workers")
    assert workers.physical_gpu(0, None) == "0"
    assert workers.physical_gpu(1, "") == "1"
    assert workers.physical_gpu(0, "3,5") == "3"
    assert workers.physical_gpu(1, "3, 5") == "5"
    assert workers.physical_gpu(0, "GPU-8d5c0e2a-1b2c") == "GPU-8d5c0e2a-1b2c"


def test_share_artifacts_publishes_the_warm_up_entries_in_another_study(tmp_path: Path) -> None:
    workers = _script("gpu_workers")
    warm, arm = ArtifactDir(tmp_path, "warmup-fp32"), ArtifactDir(tmp_path, "gpu-fp32-1")
    with warm.staging("teacher-abc") as tmp:
        tmp.mkdir()
        (tmp / "model.safetensors").write_bytes(b"weights")
    with warm.staging("logits-train-123.pt") as tmp:
        tmp.write_bytes(b"logits")
    with warm.staging("half-written") as tmp:
        tmp.write_bytes(b"x")
    (warm.path / ".half-written.complete").unlink()  # published without its marker: never shared
    warm.write_json("hpo-store.json", {"study": "warmup-fp32"})
    arm.write_json("hpo-store.json", {"study": "gpu-fp32-1"})

    assert workers.share_artifacts(warm.path, arm.path) == 2
    assert arm.exists("teacher-abc") and arm.exists("logits-train-123.pt")
    assert (arm.entry("teacher-abc") / "model.safetensors").read_bytes() == b"weights"
    assert not arm.exists("half-written")
    assert arm.read_json("hpo-store.json") == {"study": "gpu-fp32-1"}  # each study keeps its own store marker
    assert workers.share_artifacts(warm.path, arm.path) == 0  # already there


def test_cli_env_puts_the_checkout_first(monkeypatch: pytest.MonkeyPatch) -> None:
    workers = _script("gpu_workers")
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    env = workers.cli_env()
    assert env["PYTHONPATH"].split(os.pathsep) == [str(ROOT), "/elsewhere"]
    monkeypatch.delenv("PYTHONPATH")
    assert workers.cli_env()["PYTHONPATH"] == str(ROOT)


@pytest.mark.slow
def test_gpu_workers_cpu_mode_trains_the_teacher_once(tmp_path: Path) -> None:
    """The whole script on CPU workers, run from another folder with no installed package: two arms, one teacher
    fine-tuning (the warm-up's), every arm a row."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    command = [sys.executable, str(ROOT / "bench" / "gpu_workers.py"), "--cpu", "--workers", "1", "2"]
    command += ["--precisions", "fp32", "--trials", "2", "--steps", "2", "--rows", "48", "--val-rows", "24"]
    command += ["--teacher", tiny_bert(), "--min-layers", "1", "--max-layers", "2"]
    run = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-3000:]
    assert out.count("fine-tuning the teacher") == 1, out[-3000:]
    assert out.count("computing the teacher's logits on") == 1, out[-3000:]  # in the warm-up alone
    rows = [line.split() for line in run.stdout.splitlines() if line.startswith("fp32 ")]
    assert [(r[1], r[4]) for r in rows] == [("1", "2"), ("2", "2")], run.stdout
