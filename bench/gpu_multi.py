"""Trials on several devices: 1 vs N devices, DDP and FSDP, tokens/s and peak memory per rank, and a model that does
not fit one device's memory limit.

Needs a CUDA machine with N GPUs for its figures (never run by the tests). Each arm is one real trial through
``TrialRunner.train`` (``hpo.execution.prepare_runner``, this process being rank 0, ranks 1..N-1 spawned): full
fine-tuning (``objective: finetune``, the student is the whole model) of a causal LM built from a Llama config (width
``--width``, ``--layers`` layers, random weights, a word-level tokenizer of the corpus), on a generated text corpus
packed into ``--block``-token blocks, ``--batch`` blocks per optimiser step (the global batch, split across the
ranks). Arms:

- ``1 ddp``, ``N ddp``, ``N fsdp``: no memory limit; tokens/s = batch x block / step_seconds;
- ``1 ddp limited``, ``N fsdp limited``: every rank limited to ``--limit-gb`` by ``torch.cuda.
  set_per_process_memory_fraction`` in this process and ``PYTORCH_CUDA_ALLOC_CONF=per_process_memory_fraction:F``
  (the same allocator setting) for the spawned ranks; by default the limit is 60 % of the 1-device arm's peak, so
  one device runs out of memory while FSDP, which shards parameters, gradients and AdamW state across N, fits.

    python bench/gpu_multi.py [--devices 2] [--width 2048 --layers 16] [--steps 20] [--batch 16] [--block 256]
    python bench/gpu_multi.py --cpu --devices 2 --steps 4   # the plumbing on CPU (gloo, a tiny model), no figures

Prints one row per arm: devices, strategy, limit, outcome, tokens/s, peak memory of each rank (MB).
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
from pathlib import Path
from typing import Any

import optuna
import torch

WORDS = "the a river town band city song forest coast winter road village museum map letter train station hour".split()


def _corpus(path: Path, documents: int) -> Path:
    rng = random.Random(0)
    docs = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(60, 200))) + " ." for _ in range(documents)]
    path.write_text("\n\n".join(docs) + "\n")
    return path


def _model(out: Path, corpus: Path, width: int, layers: int) -> str:
    """A randomly initialised Llama of ``width`` and ``layers`` with a word-level tokenizer of ``corpus``, saved."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast

    words = Tokenizer(models.WordLevel(unk_token="<unk>"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    words.train_from_iterator([corpus.read_text()], trainers.WordLevelTrainer(special_tokens=["<unk>", "<eos>"]))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=words, unk_token="<unk>", eos_token="<eos>", pad_token="<eos>")
    tokenizer.save_pretrained(out)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=width,
        intermediate_size=width * 4,
        num_hidden_layers=layers,
        num_attention_heads=max(1, width // 64),
        num_key_value_heads=max(1, width // 256),
        max_position_embeddings=4096,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(out)
    return str(out)


def _config(model: str, corpus: Path, layers: int, args: argparse.Namespace, devices: int, strategy: str) -> Any:
    from hpo.study import config_from_dict

    return config_from_dict(
        {
            "name": "gpu-multi",
            "task": "causal-lm",
            "objective": "finetune",
            "device": "cpu" if args.cpu else "cuda:0",
            "directions": {"perplexity": "minimize"},
            "n_trials": 1,
            "seed": 0,
            "sampler": {"name": "random"},
            "pruner": {"name": "none"},
            "data": {"name": str(corpus), "block_size": args.block, "max_val_rows": 8},
            "teacher": {"model": model},
            "student": {"num_layers": layers},
            "train": {
                "max_steps": args.steps,
                "batch_size": args.batch,
                "eval_every": args.steps,
                "lr": 1e-4,
                "devices": devices,
                "strategy": strategy,
                "precision": "fp32" if args.cpu else "bf16",
            },
            "search_space": {"train.lr": {"type": "float", "low": 1e-4, "high": 1e-4}},
        }
    )


def _arm(config: Any, args: argparse.Namespace, limit_gb: float | None) -> dict[str, Any]:
    """One trial of ``config`` (under a per-device memory limit when ``limit_gb``); tokens/s and peaks per rank."""
    from hpo.execution import prepare_runner
    from hpo.execution._runner import is_oom

    if limit_gb is not None:
        fraction = limit_gb * 2**30 / torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(fraction, 0)
        os.environ["PYTORCH_CUDA_ALLOC_CONF"] = f"per_process_memory_fraction:{fraction:.4f}"  # the spawned ranks
    if not args.cpu:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    recorded: dict[str, Any] = {}
    try:
        runner = prepare_runner(config, optuna.create_study())
        metrics = runner.train(config, {"train.lr": 1e-4}, 0, 0, on_cost=recorded.update)
        peaks = recorded.get("rank_peak_memory_mb", [metrics["peak_memory_mb"]])
        tokens = args.batch * args.block / metrics["step_seconds"]
        return {"outcome": "complete", "tokens_s": tokens, "peaks": peaks}
    except Exception as exc:  # an arm that does not fit is a result, not a crash
        return {
            "outcome": "OOM" if is_oom(exc) else f"{type(exc).__name__}: {exc}"[:120],
            "tokens_s": None,
            "peaks": [],
        }
    finally:
        if limit_gb is not None:
            torch.cuda.set_per_process_memory_fraction(1.0, 0)
            os.environ.pop("PYTORCH_CUDA_ALLOC_CONF", None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="run the plumbing on CPU (gloo, a tiny model)")
    parser.add_argument("--devices", type=int, default=2)
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--block", type=int, default=256)
    parser.add_argument("--limit-gb", type=float, default=None, help="per-device limit (default 60%% of 1-device peak)")
    args = parser.parse_args()
    if args.cpu:
        args.width, args.layers, args.block = min(args.width, 64), min(args.layers, 2), min(args.block, 32)
        args.batch = min(args.batch, 4 * args.devices)
    elif torch.cuda.device_count() < args.devices:
        parser.error(f"--devices {args.devices}: this machine has {torch.cuda.device_count()} GPUs")
    work = Path(tempfile.mkdtemp(prefix="gpu-multi-"))
    corpus = _corpus(work / "corpus.txt", documents=400)
    model = _model(work / "model", corpus, args.width, args.layers)
    n = args.devices
    rows = []
    for devices, strategy in [(1, "ddp"), (n, "ddp"), (n, "fsdp")]:
        result = _arm(_config(model, corpus, args.layers, args, devices, strategy), args, None)
        rows.append((devices, strategy, "-", result))
    if args.cpu:
        print("memory-limited arms skipped: set_per_process_memory_fraction needs CUDA")
    else:
        single_peak = rows[0][3]["peaks"][0] if rows[0][3]["peaks"] else None
        limit = args.limit_gb or (0.6 * single_peak / 1024 if single_peak else None)
        for devices, strategy in [(1, "ddp"), (n, "fsdp")]:
            result = _arm(_config(model, corpus, args.layers, args, devices, strategy), args, limit)
            rows.append((devices, strategy, f"{limit:.1f} GB", result))
    device = "CPU (gloo)" if args.cpu else torch.cuda.get_device_name(0)
    print(f"{device}; model width {args.width}, {args.layers} layers; batch {args.batch} x {args.block} tokens")
    print(f"{'devices':>7} {'strategy':>8} {'limit':>8} {'outcome':>10} {'tokens/s':>10}  peak MB by rank")
    for devices, strategy, limit_text, result in rows:
        tokens = "-" if result["tokens_s"] is None else f"{result['tokens_s']:.0f}"
        peaks = ", ".join(f"{p:.0f}" for p in result["peaks"]) or "-"
        print(f"{devices:>7} {strategy:>8} {limit_text:>8} {result['outcome']:>10} {tokens:>10}  {peaks}")


if __name__ == "__main__":
    main()
