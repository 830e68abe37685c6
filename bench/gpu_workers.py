"""GPU sharing: samples/s and GPU utilisation of distillation trials with 1, 2 and 4 workers on one GPU, fp32 and bf16.

Needs a CUDA machine (never run on a GPU yet; ``--cpu`` runs its plumbing on CPU workers). Each arm is a real study
driven by the real CLI (``python -m hpo._cli`` with this checkout on ``PYTHONPATH``, so nothing needs installing):
``hpo create``, then ``hpo worker --gpus G --per-gpu K`` runs ``--trials`` distillation trials (cached teacher
logits, 3-6 layer students of the bundled all-MiniLM-L6-v2 on the movie-review snippets).

One-off work is kept out of every arm's window: a warm-up study per precision (one trial of one step) fine-tunes the
teacher once for all arms and builds that precision's logit cache; each arm's study gets the warm-up's published
artifacts (hard links of its teacher and logits entries, found by their content keys, as a study finds its own), so
its trials never train a teacher or build a cache. Throughput counts training examples of all completed trials over
the window from the first trial's start to the last one's end, read from the study's trial times; utilisation is
``nvidia-smi`` on the physical GPU that ``--gpu`` names (mapped through ``CUDA_VISIBLE_DEVICES``, as the worker maps
it), sampled every 0.5 s over the same window.

    python bench/gpu_workers.py [--gpu 0] [--workers 1 2 4] [--trials 8] [--steps 300]
    python bench/gpu_workers.py --cpu --workers 1 2 --trials 2 --steps 4   # the script's plumbing, no GPU

Prints one row per (precision, workers) and the ratios against one fp32 worker; an arm where no trial completed
prints a line saying so (and its workers' exit status) instead of a row.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import optuna
import yaml

ROOT = Path(__file__).resolve().parents[1]
"""The checkout: put first on the workers' ``PYTHONPATH``."""

BATCH = 64


def _config(name: str, precision: str, args: argparse.Namespace, store: Path) -> dict:
    return {
        "name": name,
        "objective": "distill",
        "seed": 0,
        "artifacts_dir": str(store),
        "sampler": {"name": "random"},
        "pruner": {"name": "none"},
        "data": {
            "name": "rt-snippets",
            "max_length": 64,
            "max_train_rows": args.rows,
            "max_val_rows": args.val_rows,
        },
        "teacher": {
            "model": args.teacher,
            "train": {"max_steps": max(args.steps, 4), "batch_size": 32, "eval_every": max(args.steps, 4)},
        },
        "student": {"num_layers": 3},
        "train": {"max_steps": args.steps, "batch_size": BATCH, "eval_every": args.steps, "precision": precision},
        "search_space": {
            "student.num_layers": {"type": "int", "low": args.min_layers, "high": args.max_layers},
            "distill.temperature": {"type": "float", "low": 1.0, "high": 8.0},
            "train.lr": {"type": "float", "low": 3e-5, "high": 3e-4, "log": True},
        },
    }


def cli_env() -> dict[str, str]:
    """This process's environment with the checkout first on ``PYTHONPATH`` and the offline switches on: what
    ``python -m hpo._cli`` (and the worker processes it starts) need without an installed package."""
    path = [str(ROOT), *([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])]
    offline = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    return {**offline, **os.environ, "PYTHONPATH": os.pathsep.join(path)}


def hpo(*args: str, cwd: Path) -> int:
    """Run ``hpo ARGS`` (this checkout's CLI, this interpreter) in ``cwd``; its exit status."""
    return subprocess.run([sys.executable, "-m", "hpo._cli", *args], env=cli_env(), cwd=cwd).returncode


def physical_gpu(index: int, visible_devices: str | None) -> str:
    """The GPU that CUDA index ``index`` of this process is, as ``nvidia-smi -i`` takes it: the ``index``-th entry
    of ``CUDA_VISIBLE_DEVICES`` (an index or a UUID) when it is set, else ``index`` itself (the mapping
    ``hpo worker --gpus`` applies to its slots)."""
    if visible_devices:
        return visible_devices.split(",")[index].strip()
    return str(index)


def share_artifacts(source: Path, target: Path) -> int:
    """Hard-link (copy where links fail) every published artifact of the study folder ``source`` into ``target``
    (another study's folder), with its completion marker, except the store marker ``hpo create`` wrote (each study
    keeps its own). Returns the number of artifacts shared."""
    shared = 0
    for marker in source.glob(".*.complete"):
        name = marker.name[1 : -len(".complete")]
        if name.startswith("hpo-store") or (target / name).exists():
            continue
        entry = source / name
        if entry.is_dir():
            shutil.copytree(entry, target / name, copy_function=_link)
        else:
            _link(str(entry), str(target / name))
        _link(str(marker), str(target / marker.name))
        shared += 1
    return shared


def _link(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


class Utilisation:
    """``nvidia-smi`` utilisation samples (percent) of one GPU with their times, from a background reader."""

    def __init__(self, gpu: str | None) -> None:
        self.samples: list[tuple[float, float]] = []
        query = ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-lms", "500"]
        available = gpu is not None and shutil.which("nvidia-smi")
        self._proc = subprocess.Popen([*query, "-i", gpu], stdout=subprocess.PIPE, text=True) if available else None
        if self._proc is not None:
            threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            if line.strip().isdigit():
                self.samples.append((time.time(), float(line)))

    def mean(self, start: float, end: float) -> float:
        inside = [u for t, u in self.samples if start <= t <= end]
        return statistics.mean(inside) if inside else float("nan")

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait()


def _placement(args: argparse.Namespace, workers: int) -> list[str]:
    return ["--procs", str(workers)] if args.cpu else ["--gpus", str(args.gpu), "--per-gpu", str(workers)]


def warm_up(root: Path, precision: str, args: argparse.Namespace) -> Path:
    """Run the warm-up study of ``precision``: one one-step trial that trains the teacher (or takes the one an
    earlier warm-up published) and builds this precision's logit cache. Returns its study folder in the store."""
    name = f"warmup-{precision}"
    config = _config(name, precision, argparse.Namespace(**{**vars(args), "steps": 1}), root / "artifacts")
    config["teacher"]["train"] = _config(name, precision, args, root)["teacher"]["train"]  # the arms' teacher
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    url = f"sqlite:///{root}/studies.db"
    if hpo("create", str(path), "--storage", url, "--n-trials", "1", cwd=root):
        raise SystemExit(f"warm-up {name}: hpo create failed")
    folder = root / "artifacts" / name
    teacher_from = root / "artifacts" / "warmup-fp32"
    if precision != "fp32" and teacher_from.is_dir():
        share_artifacts(teacher_from, folder)  # the teacher once; the cache of this precision is built below
    status = hpo("worker", "--storage", url, "--study", name, *_placement(args, 1), cwd=root)
    done = optuna.load_study(study_name=name, storage=url).get_trials(states=[optuna.trial.TrialState.COMPLETE])
    if not done:
        raise SystemExit(f"warm-up {name}: no trial completed (worker exit status {status}); see its log above")
    return folder


def arm(root: Path, precision: str, workers: int, warm: Path, args: argparse.Namespace) -> tuple | None:
    """(samples/s, mean GPU utilisation %, trials completed) of one study run by ``workers`` processes; None when
    no trial completed (a line says so)."""
    name = f"gpu-{precision}-{workers}"
    config = root / f"{name}.yaml"
    config.write_text(yaml.safe_dump(_config(name, precision, args, root / "artifacts")))
    url = f"sqlite:///{root}/studies.db"
    if hpo("create", str(config), "--storage", url, "--n-trials", str(args.trials), cwd=root):
        print(f"{precision:<9} {workers:>7}  hpo create failed: see its message above")
        return None
    share_artifacts(warm, root / "artifacts" / name)
    gpu = Utilisation(None if args.cpu else physical_gpu(args.gpu, os.environ.get("CUDA_VISIBLE_DEVICES")))
    try:
        status = hpo("worker", "--storage", url, "--study", name, *_placement(args, workers), cwd=root)
    finally:
        gpu.stop()
    study = optuna.load_study(study_name=name, storage=url)
    trials = study.get_trials(states=[optuna.trial.TrialState.COMPLETE])
    if not trials:
        reasons = sorted({str(t.user_attrs.get("fail_reason", t.state.name)) for t in study.trials}) or ["no trial"]
        print(f"{precision:<9} {workers:>7}  no trial completed (worker exit {status}; {', '.join(reasons)})")
        return None
    start = min(t.datetime_start for t in trials).timestamp()
    end = max(t.datetime_complete for t in trials).timestamp()
    samples = sum(t.user_attrs["steps"] * BATCH for t in trials)
    return samples / (end - start), gpu.mean(start, end), len(trials)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gpu", type=int, default=0, help="CUDA index of the GPU every arm runs on (0)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--rows", type=int, default=None, help="training rows (default: all)")
    parser.add_argument("--val-rows", type=int, default=None, help="validation rows (default: all)")
    parser.add_argument("--teacher", default="minilm-l6", help="teacher model (default: the bundled MiniLM)")
    parser.add_argument("--min-layers", type=int, default=3)
    parser.add_argument("--max-layers", type=int, default=6)
    parser.add_argument("--cpu", action="store_true", help="run the workers on the CPU (a smoke test of the script)")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    root = Path(tempfile.mkdtemp(prefix="hpo-gpu-workers-"))
    if args.cpu:
        card = "cpu"
    else:
        gpu = physical_gpu(args.gpu, os.environ.get("CUDA_VISIBLE_DEVICES"))
        query = ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader", "-i", gpu]
        card = subprocess.run(query, capture_output=True, text=True).stdout.strip() + f" (nvidia-smi -i {gpu})"
    print(f"{card}: {args.trials} trials of {args.steps} steps (batch {BATCH}) per arm; studies in {root}")
    rows = []
    for precision in args.precisions:
        warm = warm_up(root, precision, args)
        for workers in args.workers:
            result = arm(root, precision, workers, warm, args)
            if result is not None:
                rows.append((precision, workers, *result))
    if not rows:
        print("no arm completed a trial: nothing to compare")
        return
    base = rows[0][2]
    print(f"{'precision':<9} {'workers':>7} {'samples/s':>10} {'GPU util %':>10} {'trials':>6} {'vs first':>9}")
    for precision, workers, rate, util, done in rows:
        print(f"{precision:<9} {workers:>7} {rate:>10.1f} {util:>10.1f} {done:>6} {rate / base:>9.2f}")


if __name__ == "__main__":
    main()
