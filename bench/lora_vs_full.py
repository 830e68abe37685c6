"""LoRA against full fine-tuning of the same causal-LM student, at equal steps, over seeds.

The student keeps ``--layers`` evenly spaced decoder layers of the model (SmolLM2-135M by default, weights copied),
then trains ``--steps`` steps of next-token cross-entropy on WikiText-2 blocks, once with every weight trained
(``--lr-full``) and once through a LoRA adapter on ``attention+mlp`` (``--rank``, alpha = 2 r, ``--lr-lora``),
with the same data, schedule and seed; each seed's validation perplexity, ``train_seconds``, ``peak_memory_mb``
(the peak growth of the process RSS over training on a CPU, max allocated on a GPU) and trainable parameters are
printed, then mean and standard deviation per setting, and the paired per-seed perplexity difference with its 95%
t interval.

    python bench/lora_vs_full.py [--model smollm2-135m] [--layers 8] [--steps 30] [--seeds 3] [--block-size 64]
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from _seeds import paired, summary

from hpo.execution import usable_cores
from objectives import DataArgs, StudentArgs, TrainArgs
from objectives.tasks._causal_lm import finetune_student, prepare_workload

COLUMNS = ("perplexity", "train_seconds", "peak_memory_mb", "trainable_params")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m", help="registry name or directory of a causal LM")
    parser.add_argument("--corpus", default="wikitext-2", help="data.name of the text")
    parser.add_argument("--layers", type=int, default=8, help="decoder layers the student keeps")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--block-size", type=int, default=64)
    parser.add_argument("--train-blocks", type=int, default=128)
    parser.add_argument("--val-blocks", type=int, default=32)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--lr-full", type=float, default=3e-4)
    parser.add_argument("--lr-lora", type=float, default=2e-3)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(usable_cores())
    start = time.perf_counter()
    data = DataArgs(
        name=args.corpus, block_size=args.block_size, max_train_rows=args.train_blocks, max_val_rows=args.val_blocks
    )
    device = "cuda" if torch.cuda.is_available() else "cpu"
    work = prepare_workload(data, args.model, device)
    settings = {
        "full": (StudentArgs(num_layers=args.layers), args.lr_full),
        f"lora r={args.rank}": (
            StudentArgs(num_layers=args.layers, adapter="lora", lora_r=args.rank, lora_alpha=2.0 * args.rank),
            args.lr_lora,
        ),
    }
    print(
        f"{args.model}, {args.layers}-layer student, {args.steps} steps of {args.batch_size} x {args.block_size} tokens, "
        f"{len(work.train)} training / {len(work.validation)} validation blocks, {device}, {torch.get_num_threads()} "
        "threads"
    )
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in settings}
    for seed in range(args.seeds):
        for name, (student, lr) in settings.items():
            train = TrainArgs(
                lr=lr, max_steps=args.steps, batch_size=args.batch_size, eval_every=args.steps, eval_batch_size=8
            )
            _, metrics = finetune_student(work, args.model, student, train, seed)
            runs[name].append(metrics)
            shown = ", ".join(f"{c} {metrics[c]:.1f}" for c in COLUMNS)
            print(f"seed {seed} {name}: {shown}", flush=True)
    print("\n" + summary(runs, COLUMNS, 1))
    full, lora = runs.values()
    print("\n" + paired(full, lora, "perplexity", "LoRA - full", 2))
    print(f"total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
