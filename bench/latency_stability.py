"""Stability of the latency objective: the same model measured in separate processes, as separate trials are.

Each of ``--procs`` fresh processes (one after another, so they do not compete for cores) builds the same 3-layer
student of the bundled all-MiniLM-L6-v2 with the same seed and measures latency exactly as a trial does
(``measure_cost``: batch 1, an example of the validation set's mean length, warm-up, rounds until the p50 is
stable, ``COST_THREADS`` torch threads on the CPU; ``--threads`` overrides that to compare). The coefficient of
variation of the p50 across processes is the noise that latency adds to a Pareto front.

    python bench/latency_stability.py [--procs 20] [--threads 1]

Prints each process's p50 / p95, the CV of p50 (target: at most 3%) and the correlation of consecutive processes'
p50s: near 0 when each process's offset is its own, near 1 when the host drifts (then no measurement inside a
process can remove it; the study keeps one measurement per architecture and hardware instead, ``hpo.execution._costs``).
Each process also times a fixed reference (one random-weight transformer layer of the student's width, measured
the same way right after the model) and the CV of model / reference is printed: how much of the spread a
host-speed correction by a reference workload would remove.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

import torch


def child(threads: int) -> None:
    from objectives import DataArgs, StudentArgs, _trial, build_student, load_classifier, measure_cost, prepare_workload
    from objectives.evaluation import latency_ms, torch_threads

    _trial.COST_THREADS = threads
    torch.manual_seed(0)
    work = prepare_workload(DataArgs(max_train_rows=64, max_val_rows=200), "minilm-l6")
    model = build_student(load_classifier("minilm-l6", work.num_labels), StudentArgs(num_layers=3))
    cost = measure_cost(model, work)
    reference = torch.nn.TransformerEncoderLayer(384, 12, 1536, dropout=0.0, batch_first=True)
    tokens = torch.randn(1, round(work.validation.mean_length()), 384)
    with torch_threads(threads):
        reference_p50, _ = latency_ms(reference, {"src": tokens})
    print(json.dumps({"p50": cost["latency_ms"], "p95": cost["latency_ms_p95"], "reference": reference_p50}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--procs", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.threads)
        return
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    command = [sys.executable, __file__, "--child", "--threads", str(args.threads)]
    p50s, ratios = [], []
    for i in range(args.procs):
        out = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
        result = json.loads(out.strip().splitlines()[-1])
        p50s.append(result["p50"])
        ratios.append(result["p50"] / result["reference"])
        print(
            f"process {i:>2}: p50 {result['p50']:.3f} ms, p95 {result['p95']:.3f} ms, "
            f"reference p50 {result['reference']:.3f} ms",
            flush=True,
        )
    cv = statistics.stdev(p50s) / statistics.mean(p50s)
    ratio_cv = statistics.stdev(ratios) / statistics.mean(ratios)
    print(
        f"{args.procs} processes, {args.threads} thread(s): p50 mean {statistics.mean(p50s):.3f} ms, "
        f"min {min(p50s):.3f}, max {max(p50s):.3f}; CV of p50 {100 * cv:.2f}% (target <= 3%); "
        f"correlation of consecutive processes {statistics.correlation(p50s[:-1], p50s[1:]):.2f}; "
        f"CV of p50 / reference p50 {100 * ratio_cv:.2f}%"
    )


if __name__ == "__main__":
    main()
