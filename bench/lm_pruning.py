"""Width pruning of a real causal LM, before any retraining: activation importance against random choices.

SmolLM2-135M (the offline default teacher) is pruned at each width setting twice over: by the importance scores of
``objectives.students._pruning.decoder_importance`` on calibration blocks of WikiText-2's training split, and by random
scores of the same shape (``--draws`` draws); each pruned model's perplexity on validation blocks is printed with
the unpruned model's. No student is trained: this isolates what the ranking keeps, the starting point that
distillation then recovers from.

    python bench/lm_pruning.py [--calibration 64] [--blocks 32] [--block-size 128] [--draws 3]
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time

import torch

from hpo.execution import usable_cores
from objectives import DataArgs, Importance, StudentArgs, lm_evaluate
from objectives.students import decoder_layers, load_causal_lm, prune_decoder
from objectives.tasks._causal_lm import lm_importance, prepare_workload

SETTINGS = {
    "ffn 0.75": StudentArgs(ffn_ratio=0.75),
    "ffn 0.5": StudentArgs(ffn_ratio=0.5),
    "heads 0.67 (2 of 3 groups)": StudentArgs(heads_ratio=0.67),
    "hidden 0.75": StudentArgs(hidden_ratio=0.75),
}


def perplexity(model: torch.nn.Module, blocks: object) -> float:
    return lm_evaluate(model, blocks, 8).scores()["perplexity"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calibration", type=int, default=64, help="training blocks ranked on")
    parser.add_argument("--blocks", type=int, default=32, help="validation blocks scored")
    parser.add_argument("--block-size", type=int, default=128)
    parser.add_argument("--draws", type=int, default=3, help="random prunings per setting")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(usable_cores())
    start = time.perf_counter()
    data = DataArgs(
        name="wikitext-2", block_size=args.block_size, max_train_rows=args.calibration, max_val_rows=args.blocks
    )
    work = prepare_workload(data, "smollm2-135m")
    teacher = load_causal_lm("smollm2-135m").eval()
    keep = list(range(len(decoder_layers(teacher))))
    size = min(args.calibration, len(work.train))
    importance = lm_importance(teacher, work.train, size)
    base = perplexity(teacher, work.validation)
    print(
        f"SmolLM2-135M, {size} calibration blocks, {len(work.validation)} validation blocks of {args.block_size} "
        f"tokens; unpruned perplexity {base:.2f}"
    )
    print(f"{'setting':28} {'importance':>10} {'random (mean, min-max)':>32}")
    for name, setting in SETTINGS.items():
        ours = perplexity(prune_decoder(teacher, keep, importance, setting), work.validation)
        randoms = []
        for draw in range(args.draws):
            g = torch.Generator().manual_seed(draw)
            scores = Importance(**{k: torch.rand(v.shape, generator=g) for k, v in vars(importance).items()})
            randoms.append(perplexity(prune_decoder(teacher, keep, scores, setting), work.validation))
        spread = f"{statistics.mean(randoms):.1f} ({min(randoms):.1f}-{max(randoms):.1f})"
        ratio = math.log(statistics.mean(randoms)) / math.log(ours)
        print(f"{name:28} {ours:10.1f} {spread:>32}   log-ppl ratio random/importance {ratio:.2f}")
    print(f"{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
