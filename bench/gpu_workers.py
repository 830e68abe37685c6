"""GPU sharing: samples/s and GPU utilisation of distillation trials with 1, 2 and 4 workers on one GPU, bf16 on/off.

Needs a CUDA machine (never run by the tests). Each arm is a real study driven by the real CLI: ``hpo create``, then
``hpo worker --gpus 0 --per-gpu K`` runs ``--trials`` distillation trials (cached teacher logits, 3-6 layer
students of the bundled all-MiniLM-L6-v2 on the movie-review snippets). Throughput counts training examples of
all trials over the window from the first trial's start to the last one's end (the one-time teacher fine-tuning
is outside it); utilisation is ``nvidia-smi`` sampled every 0.5 s over the same window.

    python bench/gpu_workers.py [--workers 1 2 4] [--trials 8] [--steps 300]
    python bench/gpu_workers.py --cpu --workers 1 2 --trials 2 --steps 4   # smoke test of the script, no GPU

Prints one row per (precision, workers) and the ratios against one fp32 worker.
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


def _config(name: str, precision: str, steps: int, rows: int | None) -> dict:
    return {
        "name": name,
        "objective": "distill",
        "seed": 0,
        "sampler": {"name": "random"},
        "pruner": {"name": "none"},
        "data": {"name": "rt-snippets", "max_length": 64, "max_train_rows": rows},
        "teacher": {"train": {"max_steps": max(steps, 4), "batch_size": 32, "eval_every": max(steps, 4)}},
        "student": {"num_layers": 3},
        "train": {"max_steps": steps, "batch_size": 64, "eval_every": steps, "precision": precision},
        "search_space": {
            "student.num_layers": {"type": "int", "low": 3, "high": 6},
            "distill.temperature": {"type": "float", "low": 1.0, "high": 8.0},
            "train.lr": {"type": "float", "low": 3e-5, "high": 3e-4, "log": True},
        },
    }


class Utilisation:
    """``nvidia-smi`` GPU utilisation samples (percent) with their times, from a background reader."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float]] = []
        query = ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-lms", "500", "-i", "0"]
        self._proc = subprocess.Popen(query, stdout=subprocess.PIPE, text=True) if shutil.which("nvidia-smi") else None
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


def arm(root: Path, precision: str, workers: int, args: argparse.Namespace) -> tuple[float, float, int]:
    """(samples/s, mean GPU utilisation %, trials completed) of one study run by ``workers`` processes."""
    name = f"gpu-{precision}-{workers}"
    config = root / f"{name}.yaml"
    config.write_text(yaml.safe_dump(_config(name, precision, args.steps, args.rows)))
    url = f"sqlite:///{root}/studies.db"
    hpo = [sys.executable, "-m", "hpo._cli"]
    subprocess.run([*hpo, "create", str(config), "--storage", url, "--n-trials", str(args.trials)], check=True)
    placement = ["--procs", str(workers)] if args.cpu else ["--gpus", "0", "--per-gpu", str(workers)]
    gpu = Utilisation()
    try:
        subprocess.run([*hpo, "worker", "--storage", url, "--study", name, *placement], check=True, cwd=root)
    finally:
        gpu.stop()
    trials = optuna.load_study(study_name=name, storage=url).get_trials(states=[optuna.trial.TrialState.COMPLETE])
    start = min(t.datetime_start for t in trials).timestamp()
    end = max(t.datetime_complete for t in trials).timestamp()
    samples = sum(t.user_attrs["steps"] * 64 for t in trials)
    return samples / (end - start), gpu.mean(start, end), len(trials)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--rows", type=int, default=None, help="training rows (default: all)")
    parser.add_argument("--cpu", action="store_true", help="run the workers on the CPU (a smoke test of the script)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    root = Path(tempfile.mkdtemp(prefix="hpo-gpu-workers-"))
    card = (
        "cpu"
        if args.cpu
        else subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader", "-i", "0"], capture_output=True, text=True
        ).stdout.strip()
    )
    print(f"{card}: {args.trials} trials of {args.steps} steps (batch 64) per arm")
    rows = []
    for precision in ("fp32", "bf16"):
        for workers in args.workers:
            rate, util, done = arm(root, precision, workers, args)
            rows.append((precision, workers, rate, util, done))
    base = rows[0][2]
    print(f"{'precision':<9} {'workers':>7} {'samples/s':>10} {'GPU util %':>10} {'trials':>6} {'vs 1 fp32':>9}")
    for precision, workers, rate, util, done in rows:
        print(f"{precision:<9} {workers:>7} {rate:>10.1f} {util:>10.1f} {done:>6} {rate / base:>9.2f}")


if __name__ == "__main__":
    main()
