"""Stability of the latency objective and of ``speedup``: the same model measured in separate processes, as
separate trials are.

Each of ``--procs`` fresh processes (one after another, so they do not compete for cores) loads the bundled
all-MiniLM-L6-v2 classifier (the teacher, 6 layers) and cuts the same 2-layer student from it with the same seed,
then measures the student as a trial does (``measure_cost`` with the teacher: batch 1, an example of the
validation set's mean length, ``COST_THREADS`` torch threads on the CPU). It prints per process:

- ``latency``: the student's p50 (ms), the absolute figure a trial records as ``latency_ms``;
- ``separate ratio``: the teacher's p50 measured the same way right after, over the student's: the ratio a user
  gets from two latencies measured one after the other;
- ``speedup``: the trial's ``speedup``, teacher and student timed in interleaved rounds
  (``objectives.evaluation.interleaved_speedup``), median of the per-round ratios.

Then the coefficient of variation (stdev / mean) of each over the processes (target for speedup: at most 3%).
``--lm``: the same for the bundled SmolLM2-135M (30 layers) and a 16-layer cut, per generated token with the KV
cache (the causal-LM ``measure_cost``, whose ``speedup`` pairs the two models' decoding steps one by one; the
teacher's p50 over the same 32 decoding steps, by wall clock); it also prints, from the same processes, the speedup
by the method used before (interleaved rounds of 32 steps each, median of the round ratios).

    python bench/latency_stability.py [--procs 5] [--lm]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time


def child() -> None:
    import torch

    from objectives import DataArgs, StudentArgs, build_student, load_classifier, measure_cost, prepare_workload
    from objectives.evaluation import COST_THREADS, latency_ms, torch_threads
    from objectives.tasks._classification import latency_input

    torch.manual_seed(0)
    work = prepare_workload(DataArgs(max_train_rows=64, max_val_rows=200), "minilm-l6")
    teacher = load_classifier("minilm-l6", work.num_labels).eval()
    model = build_student(teacher, StudentArgs(num_layers=2))
    start = time.perf_counter()
    cost = measure_cost(model, work, teacher=(teacher, work))
    seconds = time.perf_counter() - start
    with torch_threads(COST_THREADS):
        teacher_p50, _ = latency_ms(teacher, latency_input(work, torch.device("cpu")))
    print(
        json.dumps(
            {"latency": cost["latency_ms"], "teacher": teacher_p50, "speedup": cost["speedup"], "seconds": seconds}
        )
    )


def child_lm() -> None:
    import torch

    from objectives import DataArgs, cut_decoder, load_causal_lm
    from objectives.evaluation import (
        COST_THREADS,
        decode_round,
        interleaved_speedup,
        speedup_clock,
        torch_threads,
    )
    from objectives.evaluation._metrics import lowest_round_median
    from objectives.tasks import _causal_lm

    work = _causal_lm.prepare_workload(DataArgs(name="wikitext-2", block_size=128, max_train_rows=8), "smollm2-135m")
    teacher = load_causal_lm("smollm2-135m").eval()
    model = cut_decoder(teacher, [round(i * 29 / 15) for i in range(16)])  # 16 of its 30 layers, evenly spread
    start = time.perf_counter()
    cost = _causal_lm.measure_cost(model.eval(), work, teacher=teacher)
    seconds = time.perf_counter() - start
    prompt = work.validation.batch(range(1))["input_ids"].reshape(1, -1)[:, : _causal_lm.COST_PROMPT]
    with torch_threads(COST_THREADS):
        rounds = decode_round(teacher, prompt, _causal_lm.NEW_TOKENS)  # wall clock, as latency_ms
        rounds()
        teacher_p50, _ = lowest_round_median(rounds, max_samples=10 * _causal_lm.NEW_TOKENS)
        # the method trials used before 2026-12-07 20:00 UTC: interleaved rounds of 32 steps, median of round ratios
        clock = speedup_clock(torch.device("cpu"))
        by_rounds = interleaved_speedup(
            decode_round(model, prompt, _causal_lm.NEW_TOKENS, clock),
            decode_round(teacher, prompt, _causal_lm.NEW_TOKENS, clock),
            _causal_lm.SPEEDUP_ROUNDS,
        )
    result = {"latency": cost["latency_ms"], "teacher": teacher_p50, "speedup": cost["speedup"], "seconds": seconds}
    print(json.dumps({**result, "speedup_rounds": by_rounds}))


def cv(values: list[float]) -> float:
    """Coefficient of variation in percent: 100 * stdev / mean."""
    return 100 * statistics.stdev(values) / statistics.mean(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--procs", type=int, default=5)
    parser.add_argument("--lm", action="store_true", help="SmolLM2-135M and a 16-layer cut, per generated token")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_lm() if args.lm else child()
        return
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    latencies, separate, speedups, by_rounds = [], [], [], []
    for i in range(args.procs):
        command = [sys.executable, __file__, "--child", *(["--lm"] if args.lm else [])]
        out = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
        result = json.loads(out.stdout.strip().splitlines()[-1])
        latencies.append(result["latency"])
        separate.append(result["teacher"] / result["latency"])
        speedups.append(result["speedup"])
        if "speedup_rounds" in result:
            by_rounds.append(result["speedup_rounds"])
        before = f", by rounds {by_rounds[-1]:.3f}" if by_rounds else ""
        print(
            f"process {i}: latency {result['latency']:.3f} ms, teacher {result['teacher']:.3f} ms, separate ratio "
            f"{separate[-1]:.3f}, speedup {result['speedup']:.3f}{before} (whole cost measurement "
            f"{result['seconds']:.1f} s)",
            flush=True,
        )
    rounds = f", of the speedup by rounds of 32 steps (before) {cv(by_rounds):.2f}%" if by_rounds else ""
    print(
        f"{args.procs} processes: CV of latency {cv(latencies):.2f}%, of the separate ratio {cv(separate):.2f}%, "
        f"of speedup {cv(speedups):.2f}% (target <= 3%){rounds}"
    )


if __name__ == "__main__":
    main()
