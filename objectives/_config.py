"""Typed arguments of what a trial does: data, models, training and distillation.

Each class validates its own values in ``__post_init__`` and raises :class:`ConfigError` naming the field; the
config loader in ``hpo`` prefixes the section, so users read e.g. ``train.lr: must be > 0, got -1.0``.
This module imports nothing heavy: configs validate without torch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol


class ConfigError(ValueError):
    """A config value is wrong. ``key`` is the dotted path of the field, the message says how to fix it."""

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        self.message = message
        super().__init__(f"{key}: {message}")

    def under(self, section: str) -> ConfigError:
        """The same error with ``section.`` prefixed to its key."""
        return ConfigError(f"{section}.{self.key}", self.message)


STRATEGIES = ("ddp", "fsdp", "deepspeed-zero3")
"""The values of ``train.strategy``: how a trial on several devices splits its work."""


QUANTIZE_DEVICES: dict[str, tuple[str, ...]] = {"cpu": ("none", "int8"), "cuda": ("none", "int8", "int4")}
"""The ``student.quantize`` settings each device type runs: torchao's int4 weight-only kernels (tinygemm) are
CUDA's; on the CPU its int4 tensors are stored unpacked in int8, so int4 would be neither smaller nor faster."""


def check_quantize_device(quantize: str, device_type: str, key: str = "student.quantize") -> None:
    """Raise a ConfigError naming ``key`` when ``quantize`` does not run on ``device_type`` (``cpu``, ``cuda``)."""
    valid = QUANTIZE_DEVICES.get(device_type, ("none",))
    _check(
        quantize in valid,
        key,
        f"{quantize} does not run on {device_type} (torchao's int4 kernels need CUDA); valid on {device_type}: "
        f"{', '.join(valid)}",
    )


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(key, message)


def _check_fraction(value: float, key: str, *, low_open: bool = False, high_open: bool = False) -> None:
    low_ok = value > 0 if low_open else value >= 0
    high_ok = value < 1 if high_open else value <= 1
    bounds = f"{'(' if low_open else '['}0, 1{')' if high_open else ']'}"
    _check(low_ok and high_ok, key, f"must be in {bounds}, got {value}")


TARGET_PRESETS = ("attention", "attention+mlp", "all-linear")
"""Named sets of layers a LoRA adapter adapts (``target_modules``), mapped to each architecture's module names in
``objectives.students._adapters``: the attention projections, those and the feed-forward ones, or every linear
layer but the output head."""

LORA_DEFAULTS = {"lora_r": 8, "lora_alpha": 16.0, "lora_dropout": 0.0, "target_modules": "attention+mlp"}
"""Defaults of the LoRA fields of :class:`StudentArgs` and :class:`TeacherArgs`."""


class LoraFields(Protocol):
    """The LoRA fields :class:`StudentArgs` and :class:`TeacherArgs` share."""

    adapter: str
    lora_r: int
    lora_alpha: float
    lora_dropout: float
    target_modules: str


def _check_lora(args: LoraFields, adapters: tuple[str, ...], section: str) -> None:
    """Valid LoRA fields; a field set away from its default without an adapter is refused (it would do nothing)."""
    _check(args.adapter in adapters, "adapter", f"must be one of {', '.join(adapters)}, got {args.adapter!r}")
    _check(args.lora_r >= 1, "lora_r", f"must be >= 1, got {args.lora_r}")
    _check(args.lora_alpha > 0, "lora_alpha", f"must be > 0, got {args.lora_alpha}")
    _check_fraction(args.lora_dropout, "lora_dropout", high_open=True)
    _check(
        args.target_modules in TARGET_PRESETS,
        "target_modules",
        f"must be one of {', '.join(TARGET_PRESETS)}, got {args.target_modules!r}",
    )
    if args.adapter == "none":
        for key, default in LORA_DEFAULTS.items():
            _check(
                getattr(args, key) == default,
                key,
                f"sets the LoRA adapter, and {section}.adapter is none: set {section}.adapter: lora or remove {key}",
            )


@dataclass
class DataArgs:
    """Which labelled texts a study uses and how they are split and tokenised."""

    name: str = "rt-snippets"
    """A built-in dataset (``rt-snippets``, ``sms-spam``), a local ``.csv``/``.tsv``/``.jsonl``/``.json``/``.parquet``
    file, or a Hugging Face dataset id."""
    text_column: str = "text"
    """Column holding the input text (local files and Hugging Face datasets)."""
    label_column: str = "label"
    """Column holding the class label: integers (class ids 0..max), or strings (ids in sorted order, unless
    ``label_names`` lists them). Each split needs rows of at least two classes; fractional numbers (a continuous
    score, not classes) are refused."""
    label_names: list[str] | dict[str, str] | None = None
    """Names of the classes, used in every saved model's ``id2label``, the model card and the report: a list in id
    order (integer labels index it; string labels must each be in it, which sets their ids), or a mapping from
    label value to name, e.g. ``{0: world, 1: sports}``. Null: string labels are their own names, integer labels
    are named by their number."""
    hf_config: str | None = None
    """Configuration name of a Hugging Face dataset, where it has several."""
    hf_split: str = "train"
    """Split of a Hugging Face dataset to read; it is re-split into train/validation/test here."""
    val_fraction: float = 0.1
    """Share of rows for validation, the split trials are scored on."""
    test_fraction: float = 0.1
    """Share of rows held out for the final report; no trial ever reads them."""
    split_seed: int = 0
    """Seed of the row shuffle that makes the splits; fixed per study."""
    max_length: int = 64
    """Tokens per text after truncation; batches are padded dynamically up to their longest text."""
    max_train_rows: int | None = None
    """Use only the first N training rows (after the shuffle), for short trials; ``causal-lm``: the first N packed
    blocks."""
    max_val_rows: int | None = None
    """Score on only the first N validation rows, for short trials; ``causal-lm``: the first N packed blocks."""
    max_eval_rows: int | None = None
    """``causal-lm``: evaluate at most N packed blocks of the validation split (at every ``train.eval_every``) and of
    the test split (``hpo train``'s model card), evenly spaced over each, so a full training on a CPU does not spend
    its time scoring the whole split after every few steps. ``hpo export`` keeps it (it drops ``max_val_rows``, the
    trials' cap); a study's trials score on the smaller of the two caps. Null: every block."""
    block_size: int = 128
    """``causal-lm``: tokens per packed block (documents are concatenated with an end-of-text token between them
    and cut into blocks of this length, per split); classification ignores it and truncates at ``max_length``."""
    format: Literal["text", "prompt-completion", "chat"] = "text"
    """``causal-lm``: ``text`` (documents packed into ``block_size`` blocks: continued pre-training),
    ``prompt-completion`` (``prompt_column`` and ``completion_column`` of each row) or ``chat`` (``messages_column``:
    role/content lists rendered with the tokenizer's chat template). The last two make one right-padded example per
    row, cut at ``max_length`` from the prompt side, with loss and distillation on the completion (assistant) tokens
    only, and add the generation metrics ``exact_match`` and ``rouge_l``. A built-in labelled set (``rt-snippets``,
    ``sms-spam``) becomes prompts like ``Review: ...\nSentiment:`` with its class name as the completion."""
    prompt_column: str = "prompt"
    """``format: prompt-completion``: the column holding each prompt."""
    completion_column: str = "completion"
    """``format: prompt-completion``: the column holding each reference completion (what loss and KD train)."""
    messages_column: str = "messages"
    """``format: chat``: the column holding each conversation, a list of ``{role, content}`` messages."""
    max_new_tokens: int = 16
    """``prompt-completion`` / ``chat``: tokens greedily generated per held-out prompt for ``exact_match`` and
    ``rouge_l`` (generation stops earlier at the end-of-sequence token)."""
    generation_rows: int = 32
    """``prompt-completion`` / ``chat``: held-out prompts (evenly spaced over the validation split, the same in
    every evaluation) whose greedy completions are scored against their references at each validation."""

    def __post_init__(self) -> None:
        _check(bool(self.name), "name", "must name a dataset, e.g. rt-snippets")
        _check_fraction(self.val_fraction, "val_fraction", low_open=True, high_open=True)
        _check_fraction(self.test_fraction, "test_fraction", high_open=True)
        _check(
            self.val_fraction + self.test_fraction < 1,
            "val_fraction",
            f"val_fraction + test_fraction must leave training rows, got {self.val_fraction + self.test_fraction}",
        )
        if self.label_names is not None:
            names = list(self.label_names.values() if isinstance(self.label_names, dict) else self.label_names)
            _check(len(names) >= 2, "label_names", f"must name at least 2 classes, got {names}")
            _check(all(names), "label_names", f"names must not be empty, got {names}")
            _check(len(set(names)) == len(names), "label_names", f"names must be unique, got {names}")
        _check(self.max_length >= 8, "max_length", f"must be >= 8 tokens, got {self.max_length}")
        _check(self.block_size >= 8, "block_size", f"must be >= 8 tokens, got {self.block_size}")
        _check(
            self.format in ("text", "prompt-completion", "chat"),
            "format",
            f"must be text, prompt-completion or chat, got {self.format!r}",
        )
        for key in ("max_new_tokens", "generation_rows"):
            _check(getattr(self, key) >= 1, key, f"must be >= 1, got {getattr(self, key)}")
        for key in ("max_train_rows", "max_val_rows", "max_eval_rows"):
            value = getattr(self, key)
            _check(value is None or value >= 1, key, f"must be >= 1 or null, got {value}")


@dataclass
class TrainArgs:
    """How a model is trained: AdamW, warmup then linear decay, layer-wise lr decay, clipping, early stopping."""

    lr: float = 5e-5
    """Peak learning rate of the classification head; lower layers get ``lr * lr_decay ** depth``."""
    lr_decay: float = 1.0
    """Layer-wise learning-rate decay: lr_i = lr * lr_decay ** (L - i), embeddings lowest, head highest."""
    weight_decay: float = 0.01
    """AdamW weight decay, applied to weight matrices only (not to biases and LayerNorm)."""
    warmup_ratio: float = 0.1
    """Share of ``max_steps`` spent warming the learning rate up linearly from 0."""
    qat_fraction: float = 0.0
    """Quantization-aware distillation: the last ``round(qat_fraction * max_steps)`` optimiser steps (of the last
    stage: all steps with integrated distillation) train with the linear weights fake-quantized as
    ``student.quantize`` will quantize them (torchao QAT: rounded in the forward pass, straight-through gradients);
    then the fake quantization is removed and the student quantized as without it. In [0, 1); 0 (default) is
    post-training quantization only. Needs ``student.quantize`` other than none. Searchable."""
    batch_size: int = 32
    """Examples per optimiser step, before gradient accumulation."""
    grad_accum_steps: int = 1
    """Micro-batches whose gradients add up to one optimiser step (effective batch = batch_size * this)."""
    max_steps: int = 100
    """Optimiser steps of one training run: the fixed budget of a trial. 0 (a teacher only) uses the model as it is:
    validated, not trained."""
    max_grad_norm: float | None = 1.0
    """Clip the global gradient norm to this; null disables clipping."""
    dropout: float | None = None
    """Dropout probability set on every dropout field of the model config; null keeps the model's own."""
    eval_every: int = 25
    """Validate every N optimiser steps: the intermediate value reported for pruning."""
    patience: int | None = None
    """Stop after this many validations without a lower validation loss (early stopping); null disables it."""
    eval_batch_size: int = 128
    """Batch size of validation forward passes."""
    group_by_length: bool = True
    """Batch training examples of similar length (shuffled within pools of 50 batches, batch order shuffled), so
    dynamic padding computes few pad tokens; false draws batches uniformly at random."""
    compile: bool = False
    """Run the training forward/backward through ``torch.compile`` (dynamic shapes), compiled once per
    architecture (and dropout) per worker process; the compile time is recorded as ``compile_seconds``, outside
    ``train_seconds``; past Dynamo's recompile limit new architectures train eager, with one warning. See
    ``bench/trial_cost.py`` before turning it on."""
    gradient_checkpointing: bool = False
    """Recompute each transformer layer's activations in the backward pass instead of keeping them from the forward
    (activation checkpointing: Hugging Face ``activation_checkpointing_enable``, torch's non-reentrant checkpoint,
    which ``ddp`` and ``fsdp`` support): less activation memory for about one more forward pass a step, the same
    gradients. For students whose activations do not fit; searchable (it moves ``peak_memory_mb`` and
    ``train_seconds``, not the model)."""
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """Mixed precision: ``auto`` is bf16 autocast on GPUs of compute capability 8.0 and above (Ampere on), fp16 with
    a grad scaler on older ones (a step the scaler skips does not advance the LR schedule), fp32 on CPU. Parameters
    stay fp32 (the master weights) whatever the checkpoint was saved in."""
    class_weights: Literal["none", "balanced"] = "none"
    """Weights of the classes in the cross-entropy on labels: ``none`` (all 1), or ``balanced`` (inverse frequency
    in the training split, w_c = N / (C * n_c)), so a rare class is not given up. Searchable as a categorical."""
    max_minutes: float | None = None
    """Wall-time limit of one trial, in minutes; null for none. A trial still running then fails with
    ``fail_reason: timeout`` and its worker goes on to the next trial: the trial is interrupted, and a worker hung
    in a call that no signal interrupts is restarted in place (same process id, same command line) a little
    later. Trials only: the teacher has no limit."""
    devices: int = 1
    """Devices one trial trains on: GPUs, or on a CPU-only machine processes of the gloo backend. Above 1 the trial
    runs as that many ranks of a ``torch.distributed`` group; ``batch_size`` is the global batch, split evenly across
    them, so it must divide by ``devices``. Fixed per study (not searchable)."""
    strategy: Literal["ddp", "fsdp", "deepspeed-zero3"] = "ddp"
    """How a trial on several devices splits its work: ``ddp`` copies the model to every device (fastest while the
    model, its gradients and AdamW state fit one device), ``fsdp`` shards them across the devices (FSDP2
    ``fully_shard``: for students that do not fit one). ``deepspeed-zero3`` is refused for now: deepspeed is not
    installed here and needs CUDA; ``fsdp`` shards as ZeRO-3 does. Fixed per study (not searchable)."""

    def __post_init__(self) -> None:
        _check(self.lr > 0, "lr", f"must be > 0, got {self.lr}")
        _check(self.devices >= 1, "devices", f"must be >= 1, got {self.devices}")
        _check(
            self.strategy in STRATEGIES,
            "strategy",
            f"must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}",
        )
        _check(
            self.strategy != "deepspeed-zero3",
            "strategy",
            "deepspeed-zero3 is not available (deepspeed is not installed and needs CUDA); use fsdp, which shards "
            "parameters, gradients and optimizer state as ZeRO-3 does",
        )
        _check(
            self.batch_size % self.devices == 0,
            "batch_size",
            f"is the global batch, split evenly across train.devices ({self.devices}); got {self.batch_size}",
        )
        _check(
            self.max_minutes is None or self.max_minutes > 0,
            "max_minutes",
            f"must be > 0 minutes or null, got {self.max_minutes}",
        )
        _check(0 < self.lr_decay <= 1, "lr_decay", f"must be in (0, 1], got {self.lr_decay}")
        _check(self.weight_decay >= 0, "weight_decay", f"must be >= 0, got {self.weight_decay}")
        _check_fraction(self.warmup_ratio, "warmup_ratio", high_open=True)
        _check_fraction(self.qat_fraction, "qat_fraction", high_open=True)
        _check(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        _check(self.grad_accum_steps >= 1, "grad_accum_steps", f"must be >= 1, got {self.grad_accum_steps}")
        _check(self.max_steps >= 0, "max_steps", f"must be >= 0, got {self.max_steps}")
        _check(
            self.max_grad_norm is None or self.max_grad_norm > 0,
            "max_grad_norm",
            f"must be > 0 or null, got {self.max_grad_norm}",
        )
        if self.dropout is not None:
            _check_fraction(self.dropout, "dropout", high_open=True)
        _check(self.eval_every >= 1, "eval_every", f"must be >= 1, got {self.eval_every}")
        _check(
            self.patience is None or self.patience >= 1,
            "patience",
            f"must be >= 1 or null, got {self.patience}",
        )
        _check(self.eval_batch_size >= 1, "eval_batch_size", f"must be >= 1, got {self.eval_batch_size}")
        _check(
            self.precision in ("auto", "fp32", "bf16", "fp16"),
            "precision",
            f"must be one of auto, fp32, bf16, fp16, got {self.precision!r}",
        )
        _check(
            self.class_weights in ("none", "balanced"),
            "class_weights",
            f"must be none or balanced, got {self.class_weights!r}",
        )


@dataclass
class TeacherArgs:
    """The teacher: a base model fine-tuned on the task once per study, then frozen and shared by all trials."""

    model: str = "minilm-l6"
    """``minilm-l6`` (bundled offline all-MiniLM-L6-v2), ``smollm2-135m`` (the offline SmolLM2-135M GGUF: in a
    classification study a sequence classifier with a new head on its last token), a local model directory, or a
    Hugging Face model id."""
    train: TrainArgs = field(default_factory=lambda: TrainArgs(lr=5e-5, max_steps=150, eval_every=50))
    """How the teacher is fine-tuned on the task (once per study)."""
    adapter: Literal["none", "lora"] = "none"
    """``lora``: teacher correction (as Minitron does): the teacher is adapted to the study's data through a LoRA
    adapter for ``train.max_steps`` steps, once per study, then merged into its weights, before its logits are
    cached, so every trial learns from the adapted teacher. ``none``: all its weights train (or none, with
    ``train.max_steps: 0``)."""
    lora_r: int = 8
    """Rank r of the teacher's adapter (as ``student.lora_r``)."""
    lora_alpha: float = 16.0
    """Scale alpha of the teacher's adapter (as ``student.lora_alpha``)."""
    lora_dropout: float = 0.0
    """Dropout on the teacher adapter's input (as ``student.lora_dropout``)."""
    target_modules: str = "attention+mlp"
    """Which layers the teacher's adapter adapts (as ``student.target_modules``)."""
    strategy: Literal["replicate", "fsdp"] = "replicate"
    """Where the frozen teacher lives in a trial on several devices (``train.devices`` > 1) that runs it live (a
    layer term, ``distill.on_policy``, or no logit cache): ``replicate``, every rank holds the whole teacher;
    ``fsdp``, each rank holds 1/N of its weights (FSDP2 ``fully_shard``, one unit per transformer layer, on the
    student's ranks) and every teacher forward gathers one layer at a time: for a teacher that does not fit one
    device beside the student. The teacher is then kept on the CPU until a trial shards a copy of it onto the
    devices, and no ``speedup`` is timed (no one device holds the teacher; use ``latency_ms``). Fixed per study."""

    def __post_init__(self) -> None:
        _check(bool(self.model), "model", "must name a model, e.g. minilm-l6")
        _check(
            self.strategy in ("replicate", "fsdp"),
            "strategy",
            f"must be replicate or fsdp, got {self.strategy!r}",
        )
        _check(self.train.devices == 1, "train.devices", "the teacher is fine-tuned on one device; remove it")
        _check(
            self.train.qat_fraction == 0,
            "train.qat_fraction",
            "the teacher is not quantized (student.quantize quantizes the student): remove it",
        )
        _check_lora(self, ("none", "lora"), "teacher")
        _check(
            self.adapter == "none" or self.train.max_steps > 0,
            "adapter",
            "lora adapts the teacher in teacher.train.max_steps steps, which is 0: set teacher.train.max_steps "
            "(e.g. 100) or adapter: none",
        )
        _check(
            self.train.max_minutes is None,
            "train.max_minutes",
            "limits trials, not the teacher; set train.max_minutes (top level) instead",
        )


@dataclass
class StudentArgs:
    """The student architecture: the teacher's with fewer layers, copied from the teacher or initialised from scratch."""

    model: str | None = None
    """A student of another architecture: a registry name, local directory or Hugging Face id of a pretrained
    model. A classifier gets a new classification head and is trained with its own tokenizer against the teacher's
    cached logits (``distill.cache_teacher_logits: true``); a causal LM must share the teacher's vocabulary.
    ``num_layers`` / ``layers`` then cut that model's layers. Null (the default): the student is cut from the
    teacher."""
    num_layers: int | None = None
    """Keep this many evenly spaced teacher layers; null with ``layers`` null keeps them all."""
    layers: list[int] | None = None
    """Exact teacher layer indices to keep, e.g. [0, 2, 4]; overrides ``num_layers``."""
    init: Literal["teacher", "scratch"] = "teacher"
    """``teacher``: copy the kept layers' weights (and embeddings) from the teacher; ``scratch``: random init."""
    hidden_size: int | None = None
    """Width of a ``scratch`` student; null keeps the teacher's."""
    intermediate_size: int | None = None
    """Feed-forward width of a ``scratch`` student; null keeps the teacher's."""
    num_attention_heads: int | None = None
    """Attention heads of a ``scratch`` student; null keeps the teacher's."""
    hidden_ratio: float = 1.0
    """Fraction of the teacher's hidden channels kept, in (0, 1], rounded to a multiple of 8 (``init: teacher``):
    the channels of largest mean |LayerNorm / RMSNorm output| on the calibration sample, sliced through every
    layer, the embeddings and the head. BERT-style encoders and Llama-style decoders."""
    ffn_ratio: float = 1.0
    """Fraction of each layer's feed-forward neurons kept, in (0, 1], rounded to a multiple of 8 (``init:
    teacher``): those of largest mean |activation| on the calibration sample."""
    heads_ratio: float = 1.0
    """Fraction of each layer's attention heads kept, in (0, 1], rounded to whole heads (``init: teacher``):
    those whose output has the largest mean norm on the calibration sample; each keeps the teacher's head size.
    With grouped-query attention it is the fraction of key/value groups kept, each with all its query heads."""
    layer_selection: Literal["even", "importance"] = "even"
    """Which ``num_layers`` teacher layers a student keeps: ``even``: evenly spaced from first to last;
    ``importance``: those whose output differs most from their input on the calibration sample (block influence,
    1 - cosine similarity)."""
    calibration_size: int = 256
    """Training examples (a fixed seeded sample; every one where the training split has fewer) whose activations
    rank heads, neurons, channels and layers for the ratios and ``layer_selection: importance``."""
    adapter: Literal["none", "lora", "qlora"] = "none"
    """``lora``: the student (once cut or pruned) trains a LoRA adapter through PEFT, its own weights frozen:
    W' = W + (lora_alpha / lora_r) * B A on the ``target_modules``; trials record ``trainable_params``, and ``hpo
    train`` writes the adapter merged into the weights. ``qlora``: the same over a 4-bit NF4 base (bitsandbytes),
    CUDA only. ``none``: every weight trains."""
    lora_r: int = 8
    """Rank r of the adapter's A (r x d_in) and B (d_out x r). Searchable as an int."""
    lora_alpha: float = 16.0
    """Scale alpha of the adapter's update, applied as alpha / r. Searchable."""
    lora_dropout: float = 0.0
    """Dropout on the adapter's input, in [0, 1). Searchable."""
    target_modules: str = "attention+mlp"
    """Which layers the adapter adapts: ``attention`` (the query, key, value and output projections),
    ``attention+mlp`` (and the feed-forward layers), ``all-linear`` (every linear layer but the output head);
    mapped to each architecture's module names. Searchable as a categorical."""
    quantize: Literal["none", "int8", "int4"] = "none"
    """Post-training quantization of the trained student's linear layers (torchao, weight-only): ``int8`` (per
    output channel; CPU and CUDA) or ``int4`` (groups of 128, CUDA only); ``none`` keeps fp32. The trial's final
    quality, latency, throughput and ``size_mb`` (bytes of the saved state) are the quantized model's; ``params``
    stays the parameter count. Searchable, e.g. ``{type: categorical, choices: [none, int8]}``."""

    @property
    def narrower(self) -> bool:
        """Whether any width ratio prunes the teacher's channels, heads or neurons."""
        return min(self.hidden_ratio, self.ffn_ratio, self.heads_ratio) < 1

    def __post_init__(self) -> None:
        _check(
            self.model is None or (isinstance(self.model, str) and self.model.strip() != ""),
            "model",
            f"must name a model (registry name, directory or hub id) or be null, got {self.model!r}",
        )
        if self.model is not None:
            for key in ("hidden_ratio", "ffn_ratio", "heads_ratio"):
                _check(
                    getattr(self, key) == 1,
                    key,
                    "prunes the teacher's channels, heads and neurons; a student.model of its own keeps its widths: "
                    "set it to 1.0 or drop student.model",
                )
            _check(
                self.layer_selection == "even",
                "layer_selection",
                "importance ranks the teacher's layers; with student.model use even (or list layers)",
            )
        _check(self.init in ("teacher", "scratch"), "init", f"must be 'teacher' or 'scratch', got {self.init!r}")
        for key in ("hidden_ratio", "ffn_ratio", "heads_ratio"):
            _check_fraction(getattr(self, key), key, low_open=True)
            _check(
                getattr(self, key) == 1 or self.init == "teacher",
                key,
                "prunes the teacher's weights, so needs init: teacher (a scratch student sets hidden_size etc.)",
            )
        _check(
            self.layer_selection in ("even", "importance"),
            "layer_selection",
            f"must be 'even' or 'importance', got {self.layer_selection!r}",
        )
        _check(
            self.layer_selection == "even" or (self.init == "teacher" and self.layers is None),
            "layer_selection",
            "importance ranks the teacher's layers, so needs init: teacher and no explicit layers list",
        )
        _check(
            self.quantize in QUANTIZE_DEVICES["cuda"],
            "quantize",
            f"must be one of {', '.join(QUANTIZE_DEVICES['cuda'])}, got {self.quantize!r}",
        )
        _check(self.calibration_size >= 1, "calibration_size", f"must be >= 1, got {self.calibration_size}")
        _check_lora(self, ("none", "lora", "qlora"), "student")
        _check(
            self.num_layers is None or self.num_layers >= 1,
            "num_layers",
            f"must be >= 1, got {self.num_layers}",
        )
        if self.layers is not None:
            _check(len(self.layers) >= 1, "layers", "must list at least one layer index")
            _check(all(i >= 0 for i in self.layers), "layers", f"indices must be >= 0, got {self.layers}")
            _check(
                len(set(self.layers)) == len(self.layers),
                "layers",
                f"indices must be unique, got {self.layers}",
            )
            _check(
                self.num_layers is None or self.num_layers == len(self.layers),
                "num_layers",
                f"is {self.num_layers} but layers lists {len(self.layers)}; set only one of them",
            )
        for key in ("hidden_size", "intermediate_size", "num_attention_heads"):
            value = getattr(self, key)
            if value is not None:
                _check(
                    self.init == "scratch",
                    key,
                    "changes the width, so needs init: scratch (weights cannot be copied)",
                )
                _check(value >= 1, key, f"must be >= 1, got {value}")
        if self.hidden_size is not None and self.num_attention_heads is not None:
            _check(
                self.hidden_size % self.num_attention_heads == 0,
                "hidden_size",
                f"{self.hidden_size} is not divisible by num_attention_heads {self.num_attention_heads}",
            )


@dataclass
class DistillArgs:
    """Knowledge distillation (Hinton et al. 2015), integrated approach: one run, combined loss."""

    temperature: float = 2.0
    """Softmax temperature T applied to teacher and student logits in the KD term."""
    alpha: float = 0.5
    """Weight of the KD term; 1 - alpha weighs the cross-entropy on hard labels (integrated approach)."""
    approach: Literal["integrated", "sequential"] = "integrated"
    """``integrated``: one run with the combined loss; ``sequential``: distil on the unlabelled transfer set with
    the KD loss only, then fine-tune on the labels."""
    transfer_ratio: float = 0.5
    """Sequential approach: share of ``train.max_steps`` spent distilling on the transfer set."""
    transfer_files: list[str] = field(default_factory=list)
    """Sequential approach: unlabelled texts added to the training texts as the transfer set: text files (one text
    per line), CSV / TSV / JSON Lines / JSON / Parquet files or Hugging Face dataset directories
    (``Dataset.save_to_disk``), whose ``data.text_column`` is read. A relative path is read from the working
    directory and stored absolute, so workers, ``hpo status``, ``export`` and ``delete`` run anywhere find it."""
    transfer_only: bool = False
    """Sequential approach: distil on the texts of ``transfer_files`` alone, not on the training texts with them
    (the labels are read only by the fine-tuning stage after it). Needs ``approach: sequential`` and at least one
    transfer file."""
    loss: Literal["forward_kl", "reverse_kl", "jsd"] = "forward_kl"
    """The divergence of the KD term: ``forward_kl`` KL(teacher || student) (Hinton et al.), ``reverse_kl``
    KL(student || teacher) (mode-seeking), ``jsd`` the generalised Jensen-Shannon divergence weighted by
    ``jsd_beta`` (as in on-policy distillation, GKD). Searchable as a categorical."""
    jsd_beta: float = 0.5
    """``loss: jsd``: the weight beta of the generalised JSD, in (0, 1) (see ``objectives.training._losses``)."""
    cache_teacher_logits: bool = True
    """Compute the frozen teacher's logits once per study and read them in every trial instead of running the
    teacher on every batch (exact: the teacher is in eval mode). A classifier's logits are stored whole; a causal
    LM's as its final hidden states (fp16, 2 d bytes per token) plus its LM head, from which each batch's logits are
    recomputed with one matmul: the full-vocabulary distribution at every temperature, equal to the live teacher's
    up to the fp16 rounding of the states (``bench/topk_cache.py``). False runs the live teacher."""

    hidden_weight: float = 0.0
    """Weight beta of the hidden-state term (TinyBERT): the mean squared error between each student layer's hidden
    states (and the embeddings output) and those of the teacher layer it was cut from (a ``scratch`` student's
    layer i: the teacher layer it stands for), through a learned linear map where the widths differ
    (``student.hidden_ratio`` < 1, or a scratch ``hidden_size``); padding excluded. A causal LM's states are
    compared after each model's final norm (``objectives.training._losses.final_normed``). 0 turns it off. Searchable."""
    attention_weight: float = 0.0
    """Weight gamma of the attention term (MiniLM): KL(teacher || student) between the attention distributions of
    matched layers, heads averaged where the counts differ (``student.heads_ratio`` < 1, or a scratch
    ``num_attention_heads``); padding excluded. 0 turns it off. Searchable.

    With either weight above 0 the teacher runs live on every batch and ``cache_teacher_logits`` is not used: the
    cache holds logits, a few bytes per example (8 for two classes), while hidden states and attentions would be
    (L + 1) x T x d and L x H x T x T numbers per example. For MiniLM-L6 (L = 6 layers, d = 384, H = 12 heads) on
    rt-snippets (mean T = 26.9 tokens at max_length 64) that is 289 KB and 209 KB per example in fp32, 2.4 GB and
    1.8 GB for its 8,454 training examples, against 68 KB of logits. For a causal LM the cache holds 1,152 bytes
    per token (SmolLM2-135M's last hidden state, 576 x fp16); all its hidden states (31 x 576 in fp16) would
    take 35,712 bytes per token (31 times as much; 36 GB per million training tokens, as ``student.num_layers`` is
    searched every layer would be kept) and its attentions (30 layers x 9 heads x (T + 1) / 2 keys, fp16) 34,830
    bytes per token at ``block_size`` 128, while a live teacher costs one forward pass per batch, without backward."""

    on_policy: float = 0.0
    """On-policy distillation (GKD, Agarwal et al. 2024), ``causal-lm`` with ``data.format`` prompt-completion or
    chat: the fraction lambda of training batches whose completions the student samples itself (at
    ``gen_temperature``, ``data.max_new_tokens`` tokens at most), scored token by token by the live teacher with the
    ``loss`` divergence alone; the other batches train on the references with the usual loss. 0 turns it off; the
    teacher runs live on the on-policy batches (its cached states cannot score new tokens), the others read the cache
    (``cache_teacher_logits``). Searchable."""
    gen_temperature: float = 1.0
    """``on_policy``: the sampling temperature of the student's completions. Searchable."""

    @property
    def needs_teacher_states(self) -> bool:
        """Whether a layer term is on, so the teacher must run live (its cached logits cannot serve it)."""
        return self.hidden_weight > 0 or self.attention_weight > 0

    def __post_init__(self) -> None:
        _check(self.temperature > 0, "temperature", f"must be > 0, got {self.temperature}")
        for key in ("hidden_weight", "attention_weight"):
            _check(getattr(self, key) >= 0, key, f"must be >= 0, got {getattr(self, key)}")
        _check_fraction(self.alpha, "alpha")
        _check(
            self.approach in ("integrated", "sequential"),
            "approach",
            f"must be integrated or sequential, got {self.approach!r}",
        )
        _check_fraction(self.transfer_ratio, "transfer_ratio", low_open=True, high_open=True)
        _check(
            self.loss in ("forward_kl", "reverse_kl", "jsd"),
            "loss",
            f"must be forward_kl, reverse_kl or jsd, got {self.loss!r}",
        )
        _check_fraction(self.jsd_beta, "jsd_beta", low_open=True, high_open=True)
        _check_fraction(self.on_policy, "on_policy")
        _check(self.gen_temperature > 0, "gen_temperature", f"must be > 0, got {self.gen_temperature}")
        if self.on_policy > 0:
            _check(
                self.approach == "integrated",
                "on_policy",
                f"samples completions in the integrated run; got approach {self.approach!r}: set it to 0 or use integrated",
            )
            _check(
                not self.needs_teacher_states,
                "on_policy",
                "scores the student's own tokens by their logits; set hidden_weight and attention_weight to 0, or it to 0",
            )
        for i, path in enumerate(self.transfer_files):
            _check(Path(path).expanduser().exists(), f"transfer_files[{i}]", f"{path!r} does not exist")
        self.transfer_files = [os.path.abspath(Path(path).expanduser()) for path in self.transfer_files]
        if self.transfer_only:
            _check(
                bool(self.transfer_files),
                "transfer_only",
                "distils on the transfer_files alone, and none are given: list them or set transfer_only: false",
            )
            _check(
                self.approach == "sequential",
                "transfer_only",
                f"distils on the transfer set, which only approach: sequential reads; got approach {self.approach!r}",
            )


def check_layer_terms(student: StudentArgs, distill: DistillArgs) -> None:
    """Refuse the layer terms (``distill.hidden_weight``, ``attention_weight``) for a ``student.model`` of its own:
    they match each student layer with the teacher layer it was cut from, and such a student was cut from no
    teacher layer. A ``scratch`` student is allowed: its layer i stands for teacher layer ``keep[i]``."""
    if student.model is None:
        return
    for key in ("hidden_weight", "attention_weight"):
        _check(
            getattr(distill, key) == 0,
            f"distill.{key}",
            "matches the student's layers with the teacher's layers they were cut from, which a student.model of its "
            "own was not; set it to 0 or drop student.model",
        )


@dataclass
class SyntheticArgs:
    """Behaviour of the synthetic objective."""

    target: float = 0.3
    """Where, in normalised units, every parameter is best."""
    steps: int = 5
    """Intermediate reports per trial."""
    sleep: float = 0.0
    """Seconds one trial takes, spread over its steps."""
    noise: float = 0.0
    """Standard deviation of Gaussian noise on accuracy (seeded by the trial seed)."""
    curve: Literal["rising", "crossing"] = "rising"
    """Intermediate accuracies: ``rising`` as sqrt(step / steps) toward the final value for every setting;
    ``crossing``: the better a setting ends, the slower it starts, so learning curves cross (a hard case for
    pruning)."""
    oom_trials: list[int] = field(default_factory=list)
    """Trial numbers that run out of memory (a real failed allocation)."""
    oom_mib: float | None = None
    """With a value, ``oom_trials`` allocate and fill this many MiB instead of an impossible amount: they run out
    of memory only under a worker's ``--memory-limit``."""
    nan_trials: list[int] = field(default_factory=list)
    """Trial numbers whose loss becomes NaN."""
    crash_trials: list[int] = field(default_factory=list)
    """Trial numbers that raise an ordinary exception."""
    hang_trials: list[int] = field(default_factory=list)
    """Trial numbers that hang in a C call no signal interrupts (as a stuck driver call does), until killed."""

    def __post_init__(self) -> None:
        _check(0 <= self.target <= 1, "target", f"must be in [0, 1], got {self.target}")
        _check(self.steps >= 1, "steps", f"must be >= 1, got {self.steps}")
        _check(self.sleep >= 0, "sleep", f"must be >= 0, got {self.sleep}")
        _check(self.noise >= 0, "noise", f"must be >= 0, got {self.noise}")
        _check(self.curve in ("rising", "crossing"), "curve", f"must be rising or crossing, got {self.curve!r}")
        _check(self.oom_mib is None or self.oom_mib > 0, "oom_mib", f"must be > 0 or null, got {self.oom_mib}")
