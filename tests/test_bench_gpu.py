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


def _smoke(*args: str) -> subprocess.CompletedProcess[str]:
    """``bash bench/gpu_smoke.sh ARGS`` with this interpreter, from another folder."""
    env = {**os.environ, "PYTHON": sys.executable}
    command = ["bash", str(ROOT / "bench" / "gpu_smoke.sh"), *args]
    return subprocess.run(command, cwd="/", env=env, capture_output=True, text=True, timeout=900)


def _lines(run: subprocess.CompletedProcess[str]) -> dict[str, str]:
    """{check: PASS|FAIL|SKIP} of the smoke script's output, plus its summary line."""
    found = {}
    for line in run.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[1] in ("PASS", "FAIL", "SKIP"):
            found[parts[0]] = parts[1]
        elif line.startswith("summary "):
            found["summary"] = line
    return found


def test_gpu_smoke_dry_run_imports_everything_and_reports_every_check() -> None:
    run = _smoke("--dry-run")
    assert run.returncode == 0, run.stdout + run.stderr[-3000:]
    assert "optuna" in run.stdout.splitlines()[0]  # the versions of what it imported
    assert _lines(run) == {
        **dict.fromkeys(["pruning", "workers", "precision", "oom", "smollm2"], "SKIP"),
        "summary": "summary 0 PASS, 0 FAIL, 5 SKIP",
    }


def test_gpu_smoke_cpu_parts_pass_and_cuda_parts_skip() -> None:
    run = _smoke("--cpu", "--only", "oom", "smollm2")
    assert run.returncode == 0, run.stdout + run.stderr[-3000:]
    assert _lines(run) == {"oom": "SKIP", "smollm2": "PASS", "summary": "summary 1 PASS, 0 FAIL, 1 SKIP"}
    assert "SKIP no CUDA" in run.stdout and "host copy" in run.stdout and "latency_ms" in run.stdout


def test_gpu_smoke_reports_a_failing_check_and_runs_the_next(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    smoke = _script("gpu_smoke")

    def broken(*_: object) -> str:
        raise RuntimeError("planted")

    monkeypatch.setitem(smoke.CHECKS, "pruning", broken)
    monkeypatch.setitem(smoke.CHECKS, "oom", lambda s, b: s.need_cuda("planted") or "")
    results = smoke.run_checks(["pruning", "oom"], smoke.Smoke(cpu=True, work=tmp_path))
    assert results == {"pruning": "FAIL", "oom": "SKIP"}


def test_gpu_smoke_checks_stop_at_their_budget(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    smoke = _script("gpu_smoke")
    monkeypatch.setitem(smoke.BUDGETS, "workers", 1)
    monkeypatch.setattr(smoke, "CPU_SLOWER", 1)
    monkeypatch.setitem(smoke.CHECKS, "workers", lambda s, b: time.sleep(30) or "")
    start = time.perf_counter()
    assert smoke.run_checks(["workers"], smoke.Smoke(cpu=True, work=tmp_path)) == {"workers": "FAIL"}
    assert time.perf_counter() - start < 5


@pytest.mark.slow
def test_gpu_smoke_cpu_mode_runs_every_cpu_part() -> None:
    """The whole ``--cpu`` run: pruning on the CPU, a study through ``--gpus none --procs 2`` (each trial records
    gpu ``cpu`` and its costs), the fp32 loop and cache agreement, the LM cache split; no FAIL."""
    run = _smoke("--cpu")
    assert run.returncode == 0, run.stdout + run.stderr[-3000:]
    found = _lines(run)
    assert [found[k] for k in ("pruning", "workers", "precision", "oom", "smollm2")] == ["PASS"] * 3 + ["SKIP", "PASS"]
    assert "gpu ['cpu']" in run.stdout and "KD live/cached gap" in run.stdout
