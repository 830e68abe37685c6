"""Quantized against fp32 (``student.quantize``), for one classifier and one causal-LM student.

The classifier is MiniLM-L6 (all 6 layers) fine-tuned for ``--steps`` on rt-snippets; the causal LM is SmolLM2-135M
cut to ``--lm-layers`` layers (the study's default student cut) and fine-tuned for ``--lm-steps`` on WikiText-2.
Each is then scored on its held-out test split in fp32 and as a post-training int8 copy (torchao weight-only,
:func:`objectives.students.quantize`), with the costs a trial records: p50 latency (batch 1, one thread; ms per
example, or per generated token), throughput, ``size_mb`` (bytes of the saved state dict) and, beside them, the
peak RSS growth of one more test pass (the weights and activations that pass holds).

    python bench/quantize.py [--steps 100] [--rows 2000] [--lm-layers 4] [--lm-steps 30] [--lm-rows 64]
    python bench/quantize.py --steps 2 --rows 64 --lm-steps 1 --lm-rows 8     # a smoke run (its figures mean nothing)
"""

from __future__ import annotations

import argparse
import gc
import time
from typing import Any

import torch

from objectives import DataArgs, StudentArgs, TrainArgs
from objectives.evaluation import PeakMemory, lm_evaluate
from objectives.students import quantized
from objectives.tasks import _causal_lm as lm
from objectives.tasks import _classification as cls
from objectives.training._train import evaluate


def _peak_mb(run: Any) -> float:
    """Peak RSS growth (MiB) while ``run()`` runs, after a collection."""
    gc.collect()
    with PeakMemory(torch.device("cpu")) as memory:
        run()
    return memory.peak_mb


def classifier_rows(steps: int, rows: int, seed: int) -> dict[str, dict[str, float]]:
    data = DataArgs(name="rt-snippets", max_train_rows=rows, max_val_rows=500, max_length=64)
    work = cls.prepare_workload(data, "minilm-l6")
    args = TrainArgs(max_steps=steps, batch_size=32, eval_every=steps, lr=5e-5, warmup_ratio=0.1)
    model, _ = cls.finetune_student(work, "minilm-l6", StudentArgs(), args, seed)
    test = cls.encode(work.tokenizer, work.task.test(), work.task.args.max_length)
    out = {}
    for name in ("none", "int8"):
        metrics = cls.heldout_metrics(model, work, name)
        q = quantized(model, name)
        metrics["pass_peak_mb"] = _peak_mb(lambda q=q: evaluate(q, test, 32))
        out[name] = metrics
    return out


def lm_rows(layers: int, steps: int, rows: int, seed: int) -> dict[str, dict[str, float]]:
    data = DataArgs(name="wikitext-2", block_size=128, max_train_rows=rows, max_val_rows=16, max_eval_rows=32)
    work = lm.prepare_workload(data, "smollm2-135m")
    args = TrainArgs(max_steps=steps, batch_size=8, eval_every=steps, lr=1e-4, warmup_ratio=0.1)
    model, _ = lm.finetune_student(work, "smollm2-135m", StudentArgs(num_layers=layers), args, seed)
    out = {}
    for name in ("none", "int8"):
        metrics = lm.heldout_metrics(model, work, name)
        q = quantized(model, name)
        metrics["pass_peak_mb"] = _peak_mb(lambda q=q: lm_evaluate(q, work.test(), 8))
        out[name] = metrics
    return out


def table(title: str, rows: dict[str, dict[str, float]], quality: list[str], unit: str) -> str:
    cols = [*quality, "latency_ms", "throughput", "params", "size_mb", "pass_peak_mb"]
    head = f"{'':6}" + "".join(f"{c:>16}" for c in cols)
    lines = [title, head]
    for name, m in rows.items():
        cells = "".join(
            f"{m[c]:>16.0f}" if c == "params" else f"{m[c]:>16.4f}" if c in quality else f"{m[c]:>16.2f}" for c in cols
        )
        lines.append(f"{'fp32' if name == 'none' else name:6}{cells}")
    fp32, q = rows["none"], rows["int8"]
    lines.append(
        f"int8 / fp32: size {q['size_mb'] / fp32['size_mb']:.2f}x, latency {q['latency_ms'] / fp32['latency_ms']:.2f}x "
        f"(ms per {unit}), " + ", ".join(f"{c} {q[c] - fp32[c]:+.4f}" for c in quality)
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=100, help="classifier fine-tuning steps")
    parser.add_argument("--rows", type=int, default=2000, help="classifier training rows")
    parser.add_argument("--lm-layers", type=int, default=4)
    parser.add_argument("--lm-steps", type=int, default=30)
    parser.add_argument("--lm-rows", type=int, default=64, help="training blocks of 128 tokens")
    parser.add_argument("--seed", type=int, default=0)
    a = parser.parse_args()
    torch.set_num_threads(2)
    start = time.perf_counter()
    rows = classifier_rows(a.steps, a.rows, a.seed)
    print(table(f"MiniLM-L6 classifier, rt-snippets test split, {a.steps} steps", rows, ["accuracy", "f1"], "example"))
    rows = lm_rows(a.lm_layers, a.lm_steps, a.lm_rows, a.seed)
    print()
    title = f"SmolLM2-135M cut to {a.lm_layers} layers, WikiText-2 test blocks, {a.lm_steps} steps"
    print(table(title, rows, ["perplexity", "token_accuracy"], "generated token"))
    print(f"\n{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
