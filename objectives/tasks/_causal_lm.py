"""The causal-LM task: a decoder-only language model cut from the teacher and distilled over token distributions.

Implements :class:`objectives.tasks._task.TaskImplementation`. Text is packed into ``data.block_size`` token blocks per
split, or (``data.format``: prompt-completion, chat) made into padded examples trained on their completions only and
also scored by their greedy completions of held-out prompts; the student keeps some of the teacher's decoder layers (weights copied, tied embeddings kept tied) or starts
from scratch; quality is validation perplexity and next-token accuracy, cost is per-token generation latency with
the KV cache, prefill time and batched throughput.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from objectives._config import (
    ConfigError,
    DataArgs,
    DistillArgs,
    StudentArgs,
    TeacherArgs,
    TrainArgs,
    check_layer_terms,
)
from objectives.data import (
    Blocks,
    Corpus,
    Examples,
    Instructions,
    load_corpus,
    load_instructions,
    pack,
    split_cap,
    tokenise_examples,
    transfer_texts,
)
from objectives.evaluation import (
    CompletionEvaluation,
    CostStore,
    completion_evaluate,
    decode_steps,
    generation_costs,
    lm_evaluate,
    paired_speedup,
    speedup_clock,
    stored_cost,
)
from objectives.students import (
    Importance,
    add_adapter,
    cached_importance,
    calibration_batches,
    count_parameters,
    cut_decoder,
    decoder_importance,
    final_norm,
    lm_identity,
    load_causal_lm,
    load_lm_tokenizer,
    merged,
    num_layers,
    prune_decoder,
    quantized,
    quiet_transformers,
    save_adapter,
    saved_size_mb,
    scratch_decoder,
    set_dropout,
    student_layers,
)
from objectives.training import (
    CostHook,
    HeadInputs,
    LayerDistillLoss,
    LogitSource,
    OnPolicy,
    Report,
    Stage,
    Teachers,
    distill_stages,
    fit,
    frozen_teacher,
    get_loss,
    shards_teacher,
)

PROMPTS = ("The history of the city", "In 1998 , the band", "The species is found in")
"""Fixed prompts whose greedy continuations a model card shows for each model."""

COST_PROMPT = 128
"""Tokens of the prompt costs are measured after (validation text): the prefill length, and the context that
per-token latency is measured in (shorter for a model with fewer positions than this plus :data:`NEW_TOKENS`)."""

NEW_TOKENS = 32
"""Tokens generated after the prompt for per-token latency and throughput."""

SPEEDUP_ROUNDS = 7
"""Rounds of :data:`NEW_TOKENS` decoding steps per model for ``speedup``, the two models' steps alternating
(:func:`objectives.evaluation.paired_speedup`): 224 step ratios; a round of SmolLM2-135M costs about 1.3 s on one
CPU thread."""


@dataclass
class Workload:
    """The packed train and validation blocks (or instruction examples) of a study, shared by all its trials in a
    process."""

    corpus: Corpus | Instructions
    tokenizer: Any
    train: Blocks | Examples
    validation: Blocks | Examples
    device: torch.device

    @property
    def fingerprint(self) -> str:
        """The text's content and splits (``Corpus.fingerprint``)."""
        return self.corpus.fingerprint

    @property
    def unit(self) -> str:
        return "examples" if isinstance(self.train, Examples) else f"blocks of {self.train.block_size} tokens"

    @property
    def evaluate(self) -> Any:
        """How a model is scored on a split: next-token scores of blocks, or of examples' completions with the
        generation metrics."""
        return completion_evaluate if isinstance(self.validation, Examples) else lm_evaluate

    def test(self) -> Blocks | Examples:
        """The packed test split (for full-training reports; no trial reads it)."""
        return _packed(self.tokenizer, self.corpus, "test")

    @property
    def n_test(self) -> int:
        """Documents of the held-out test split (counted without tokenising it: trials never touch it)."""
        return len(self.corpus.splits["test"])


_PACKED: dict[tuple[Any, ...], Blocks | Examples] = {}


def _packed(tokenizer: Any, corpus: Corpus | Instructions, split: str) -> Blocks | Examples:
    """``Corpus.blocks`` of one split, or its instruction examples (:func:`objectives.data.tokenise_examples`,
    capped as blocks are), once per process for a corpus, tokenizer, block size (or example settings) and caps."""
    args = corpus.args
    if isinstance(corpus, Instructions):
        cap = split_cap(args, split)
        settings = (args.max_length, args.max_new_tokens, args.generation_rows)
        key = (corpus.fingerprint, str(tokenizer.name_or_path), split, cap, *settings)
        if key not in _PACKED:
            _PACKED[key] = tokenise_examples(tokenizer, corpus.splits[split], args, cap)
        return _PACKED[key]
    key = (
        corpus.fingerprint,
        str(tokenizer.name_or_path),
        split,
        args.block_size,
        args.max_train_rows,
        args.max_val_rows,
        args.max_eval_rows,
    )
    if key not in _PACKED:
        _PACKED[key] = corpus.blocks(tokenizer, split)
    return _PACKED[key]


def _corpus_and_tokenizer(data: DataArgs, model: str) -> tuple[Any, Any]:
    """The corpus of ``data`` (its errors named under ``data.``) and ``model``'s tokenizer."""
    quiet_transformers()
    try:
        corpus = load_corpus(data) if data.format == "text" else load_instructions(data)
    except ConfigError as exc:
        raise exc.under("data") from None
    return corpus, load_lm_tokenizer(model)


def prepare_workload(data: DataArgs, model: str, device: str | torch.device = "cpu") -> Workload:
    """Load the corpus and pack its train and validation splits with ``model``'s tokenizer (cached per process)."""
    corpus, tokenizer = _corpus_and_tokenizer(data, model)
    train = _packed(tokenizer, corpus, "train")
    validation = _packed(tokenizer, corpus, "validation")
    for name, blocks in (("train", train), ("validation", validation)):
        if len(blocks) == 0:
            raise ConfigError("data.block_size", f"the {name} split has fewer than {data.block_size} tokens")
    if isinstance(train, Examples) and not any(y != -100 for labels in train.labels for y in labels[1:]):
        raise ConfigError("data.max_length", "leaves no completion token to train on; raise it")
    return Workload(corpus, tokenizer, train, validation, torch.device(device))


def evaluation_rows(data: DataArgs, model: str) -> dict[str, int]:
    """Blocks of the validation and test splits one evaluation pass reads (``data.max_eval_rows`` at most), packed
    with ``model``'s tokenizer (cached per process; ``datasets`` caches the tokenising of files)."""
    corpus, tokenizer = _corpus_and_tokenizer(data, model)
    return {split: len(_packed(tokenizer, corpus, split)) for split in ("validation", "test")}


def measure_cost(
    model: torch.nn.Module, work: Workload, costs: CostStore | None = None, teacher: torch.nn.Module | None = None
) -> dict[str, float]:
    """Per-token generation latency (batch 1, KV cache), prefill, throughput (batch 8), FLOPs per token, size,
    after a fixed prompt of validation text, and with a ``teacher`` the ``speedup`` of per-token decoding over it
    (:func:`objectives.evaluation.paired_speedup` of :func:`objectives.evaluation.decode_steps`); once per
    architecture, hardware, prompt and teacher (:func:`objectives.evaluation._costs.stored_cost`)."""
    device = next(model.parameters()).device
    # A model with few positions (GPT-2 style absolute embeddings) gets a shorter prompt: prompt + new tokens fit.
    limits = [getattr(m.config, "max_position_embeddings", None) for m in (model, teacher) if m is not None]
    length = min([COST_PROMPT, *(limit - NEW_TOKENS for limit in limits if limit)])
    prompt = _cost_prompt(work.validation, length).to(device)

    def measure() -> dict[str, float]:
        params = count_parameters(model)
        cost = generation_costs(model, prompt, new_tokens=NEW_TOKENS, prefill_tokens=length)
        if teacher is not None:
            clock = speedup_clock(device)
            student_steps = decode_steps(model, prompt, NEW_TOKENS, clock)
            teacher_steps = decode_steps(teacher, prompt, NEW_TOKENS, clock)
            list(teacher_steps())  # warm-up (the student's was in generation_costs)
            cost["speedup"] = paired_speedup(student_steps, teacher_steps, SPEEDUP_ROUNDS)
        return {**cost, "params": float(params), "size_mb": saved_size_mb(model)}

    return stored_cost(model, prompt.tolist(), measure, costs, teacher)


def _cost_prompt(data: Blocks | Examples, length: int) -> torch.Tensor:
    """(1, ``length``) tokens of ``data``'s first rows, their padding left out (fewer where the split is shorter)."""
    parts, have, row = [], 0, 0
    while have < length and row < len(data):
        batch = data.batch([row])
        tokens = batch["input_ids"][batch["attention_mask"] == 1]
        parts.append(tokens)
        have, row = have + len(tokens), row + 1
    return torch.cat(parts)[None, :length]


def _fit(
    model: torch.nn.Module,
    work: Workload,
    stages: list[Stage],
    *,
    seed: int,
    report: Report | None = None,
    on_cost: CostHook | None = None,
    costs: CostStore | None = None,
    teacher: torch.nn.Module | None = None,
    quantize: str = "none",
) -> dict[str, Any]:
    """Train ``model`` through ``stages`` and return every metric of the task plus ``val_loss`` and ``steps``; the
    ``speedup`` is over ``teacher``."""
    evaluation, metrics = fit(
        model,
        stages,
        work.validation,
        device=work.device,
        evaluate=work.evaluate,
        cost=lambda m: measure_cost(merged(m), work, costs, teacher),  # an adapter's: the merged model's
        seed=seed,
        report=report,
        on_cost=on_cost,
        quantize=quantize,
    )
    return {**evaluation.scores(), **metrics}


def finetune_teacher(work: Workload, args: TeacherArgs, seed: int, out_dir: Path) -> dict[str, Any]:
    """Adapt the base model to the corpus with next-token CE for ``args.train.max_steps`` (0: use it as it is),
    all its weights or, with ``teacher.adapter: lora``, a LoRA adapter merged into them afterwards (teacher
    correction); save it and the tokenizer to ``out_dir``, return its validation metrics (perplexity: the study's
    baseline)."""
    torch.manual_seed(seed)
    quiet_transformers()
    model = add_adapter(load_causal_lm(args.model, args.train.dropout), args, work.device, "teacher", causal=True)
    metrics = _fit(model, work, [Stage(work.train, args.train, get_loss("lm_ce"))], seed=seed)
    merged(model).save_pretrained(out_dir)
    work.tokenizer.save_pretrained(out_dir)
    return {**metrics, "speedup": 1.0}  # over itself


def load_teacher(path: Path, work: Workload) -> torch.nn.Module:
    """The frozen teacher saved at ``path``, loaded once per process and device."""
    return frozen_teacher(path, work.device, load_causal_lm)


def lm_importance(base: torch.nn.Module, calibration: Blocks, size: int) -> Importance:
    """:func:`objectives.students._pruning.decoder_importance` of ``base`` on ``size`` calibration blocks (a fixed
    seeded sample, :func:`objectives.students.calibration_batches`; every block of a smaller split), once per model
    and data in this process."""

    def measure() -> Importance:
        return decoder_importance(base, calibration_batches(calibration, size, batch_size=8))

    return cached_importance(base, calibration, size, measure)


def _other_model(args: StudentArgs, work: Workload) -> torch.nn.Module | None:
    """The pretrained LM ``student.model`` names (None: the student comes from the teacher). It must read and
    predict the teacher's tokens, whose distributions it learns token by token: a tokenizer with another vocabulary
    is a :class:`ConfigError`."""
    if args.model is None:
        return None
    theirs, ours = load_lm_tokenizer(args.model).get_vocab(), work.tokenizer.get_vocab()
    if theirs != ours:
        raise ConfigError(
            "student.model",
            f"{args.model!r} has another vocabulary ({len(theirs):,} tokens, the teacher's {len(ours):,}); a causal-LM "
            "student must share the teacher's tokenizer, as its next-token distributions are compared token by token",
        )
    return load_causal_lm(args.model)


def _kept_layers(base: torch.nn.Module, args: StudentArgs, calibration: Blocks) -> list[int]:
    """The decoder layers of ``base`` the student of ``args`` keeps, in order (student layer i is ``base`` layer
    ``[i]``): evenly spaced, or with ``layer_selection: importance`` the most influential on
    ``student.calibration_size`` training blocks."""
    influence = None
    if args.layer_selection == "importance":
        influence = lm_importance(base, calibration, args.calibration_size).influence
    try:
        return student_layers(args, num_layers(base), influence)
    except ConfigError as exc:
        raise exc.under("student") from None


def _student(base: torch.nn.Module, args: StudentArgs, dropout: float | None, work: Workload) -> torch.nn.Module:
    """``base`` with the decoder layers ``args`` keeps (:func:`_kept_layers`), weights copied and tied embeddings
    tied, and with width ratios below 1 narrowed to the most important channels, neurons and key/value groups
    (:func:`objectives.students._pruning.prune_decoder`); or from scratch. With ``student.adapter`` it trains
    through a LoRA adapter (:func:`objectives.students.add_adapter`)."""
    return add_adapter(_architecture(base, args, dropout, work.train), args, work.device, "student", causal=True)


def _architecture(
    base: torch.nn.Module, args: StudentArgs, dropout: float | None, calibration: Blocks
) -> torch.nn.Module:
    """The student of :func:`_student` before any adapter."""
    keep = _kept_layers(base, args, calibration)
    if args.init == "scratch":
        widths = {k: getattr(args, k) for k in ("hidden_size", "intermediate_size", "num_attention_heads")}
        return scratch_decoder(set_dropout(copy.deepcopy(base.config), dropout), len(keep), **widths)
    if not args.narrower:
        return cut_decoder(base, keep, dropout)
    return prune_decoder(base, keep, lm_importance(base, calibration, args.calibration_size), args, dropout)


def finetune_student(
    work: Workload,
    base_model: str,
    student: StudentArgs,
    args: TrainArgs,
    seed: int,
    report: Report | None = None,
    on_cost: CostHook | None = None,
    costs: CostStore | None = None,
    init: torch.nn.Module | None = None,
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The student cut from the base (not adapted) model, trained with next-token CE; returns it and its metrics.
    The base model is loaded once per process (frozen; the student gets copies of its weights), so its importance
    scores are measured once per study, not per trial. ``init``: start from this model instead (e.g. a copy of
    :func:`initial_student`, the distilled student's starting point: the same student trained without the
    teacher): no model is loaded to train it, the base model only to time the ``speedup`` against."""
    torch.manual_seed(seed)
    quiet_transformers()
    if init is None:
        base = _other_model(student, work) or frozen_teacher(Path(base_model), work.device, load_causal_lm)
        model = _student(base, student, args.dropout, work)
    else:
        model = init
    stages = [Stage(work.train, args, get_loss("lm_ce"))]
    # the speedup is over the teacher's architecture: the base model's (adapting it changes weights, not speed)
    reference = frozen_teacher(Path(base_model), work.device, load_causal_lm)
    return model, _fit(
        model,
        work,
        stages,
        seed=seed,
        report=report,
        on_cost=on_cost,
        costs=costs,
        teacher=reference,
        quantize=student.quantize,
    )


def transfer_blocks(work: Workload, distill: DistillArgs) -> Blocks:
    """Unlabelled text for sequential distillation, as a classifier's transfer set is made: the training blocks
    (``work.train``, so ``data.max_train_rows`` caps them as it caps the split every other trial trains on) and,
    packed after them, every text of ``distill.transfer_files`` (:func:`objectives.data.transfer_texts`); with
    ``distill.transfer_only`` those alone."""
    import datasets

    if not distill.transfer_files:
        return work.train
    texts = transfer_texts(distill.transfer_files, work.corpus.args.text_column)
    extra = pack(work.tokenizer, datasets.Dataset.from_dict({"text": texts}), work.train.block_size, None)
    if distill.transfer_only:
        if len(extra) == 0:
            raise ConfigError("distill.transfer_files", f"hold fewer than data.block_size = {extra.block_size} tokens")
        return extra
    both = datasets.concatenate_datasets([work.train.data, extra.data]).with_format("numpy")
    return Blocks(both, work.train.block_size, work.train.pad_token_id)


def initial_student(
    work: Workload, teacher_dir: Path, student: StudentArgs, args: TrainArgs, seed: int
) -> torch.nn.Module:
    """The student :func:`distill_student` starts from with ``seed``, before any training: cut from the teacher
    saved at ``teacher_dir`` (or ``student.model``), see :func:`_student`."""
    torch.manual_seed(seed)
    quiet_transformers()
    return _student(_other_model(student, work) or load_teacher(teacher_dir, work), student, args.dropout, work)


def distill_student(
    work: Workload,
    teacher_dir: Path,
    student: StudentArgs,
    args: TrainArgs,
    distill: DistillArgs,
    seed: int,
    report: Report | None = None,
    on_cost: CostHook | None = None,
    logits: LogitSource | None = None,
    costs: CostStore | None = None,
    init: torch.nn.Module | None = None,
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """A student cut from the teacher (``init``: this model, made by :func:`initial_student`), trained per
    non-padding token with

    - ``integrated``: alpha * T^2 * D(teacher, student) + (1 - alpha) * CE(next token), D the ``distill.loss``
      divergence (forward KL, reverse KL or generalised JSD), or
    - ``sequential``: the KD term alone (alpha = 1) on the transfer text for ``transfer_ratio`` of the steps, then
      CE for the rest.

    With ``logits``, the teacher's logits come from the study's cache instead of a teacher forward pass on every
    batch: its final hidden states (fp16) and LM head, recomputed into the exact (B, L, V) logits per batch
    (:class:`objectives.HeadInputs`), so every divergence sees the full-vocabulary teacher distribution.

    ``distill.hidden_weight`` / ``attention_weight`` add the layer terms of :class:`objectives.training._losses.
    LayerDistillLoss` to the KD stage: student layer i against the teacher layer it was cut from (a scratch
    student's: the one it stands for, through a learned map where the widths differ), hidden states compared after
    each model's final norm. They read the live teacher on every batch, and ``logits`` is not used: a cache of
    SmolLM2-135M's hidden states would take 35,712 bytes per token (31 states x 576 x fp16), 31 times the 1,152
    of the last one the logit cache keeps (see ``DistillArgs.attention_weight``), against one teacher forward pass
    per batch.

    ``distill.on_policy`` (lambda > 0, instruction examples): a fraction lambda of the batches are the student's own
    completions of their prompts, sampled at ``distill.gen_temperature`` and scored by the live teacher with the
    divergence alone (:class:`objectives.training.OnPolicy`, as TRL's ``GKDTrainer``); the other batches read
    ``logits`` where given (:class:`objectives.training.Teachers`), so the teacher runs on lambda of the batches."""
    check_layer_terms(student, distill)
    model = init if init is not None else initial_student(work, teacher_dir, student, args, seed)
    torch.manual_seed(seed)  # the same random state from here on, whether the student was built here or passed in
    teacher = load_teacher(teacher_dir, work)
    if distill.needs_teacher_states or distill.on_policy == 1:
        logits = None  # the layer terms read the live teacher's hidden states, on-policy batches new tokens

    def signal(name: str, data: Blocks | OnPolicy) -> torch.nn.Module | torch.Tensor | HeadInputs | Teachers:
        if logits is None:
            return teacher
        if isinstance(data, OnPolicy):  # the live teacher for the student's batches, the cache for the references
            return Teachers(teacher, logits(name, data.data, teacher), data)
        return logits(name, data, teacher)

    divergence = {"divergence": distill.loss, "jsd_beta": distill.jsd_beta, "temperature": distill.temperature}

    train_data: Blocks | Examples | OnPolicy = work.train
    if distill.on_policy > 0:
        train_data = OnPolicy(
            work.train,
            model,
            fraction=distill.on_policy,
            temperature=distill.gen_temperature,
            max_new_tokens=work.corpus.args.max_new_tokens,
        )

    def kd(alpha: float) -> Any:
        loss = get_loss("lm_kd", alpha=alpha, **divergence)
        if isinstance(train_data, OnPolicy):
            return train_data.loss(loss, get_loss("lm_kd", alpha=1.0, **divergence))
        if not distill.needs_teacher_states:
            return loss
        return LayerDistillLoss(
            loss,
            _kept_layers(teacher, student, work.train),
            hidden_weight=distill.hidden_weight,
            attention_weight=distill.attention_weight,
            student_width=model.config.hidden_size,
            teacher_width=teacher.config.hidden_size,
            # the kept teacher is on the CPU when a sharded copy trains (teacher.strategy: fsdp): its norm goes along
            final_norms=(final_norm(model), copy.deepcopy(final_norm(teacher)).to(work.device)),
        )

    stages = distill_stages(
        train_data,
        args,
        distill,
        ce=get_loss("lm_ce"),
        kd=kd,
        signal=signal,
        transfer=lambda: transfer_blocks(work, distill),
    )
    return model, _fit(
        model,
        work,
        stages,
        seed=seed,
        report=report,
        on_cost=on_cost,
        costs=costs,
        teacher=None if shards_teacher() else teacher,  # a sharded teacher is timed on no one device
        quantize=student.quantize,
    )


@torch.inference_mode()
def samples(model: torch.nn.Module, work: Workload, max_new_tokens: int = 20) -> list[tuple[str, str]]:
    """Greedy continuations of :data:`PROMPTS`: (prompt, continuation) pairs."""
    device = next(model.parameters()).device
    model.eval()
    out = []
    for prompt in PROMPTS:
        ids = work.tokenizer(prompt, return_tensors="pt")["input_ids"].to(device)
        generated = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=work.tokenizer.pad_token_id,
        )
        out.append((prompt, work.tokenizer.decode(generated[0, ids.shape[1] :], skip_special_tokens=True).strip()))
    return out


def heldout_metrics(model: torch.nn.Module, work: Workload, quantize: str = "none") -> dict[str, Any]:
    """Perplexity and next-token accuracy on the held-out test split (``data.max_eval_rows`` blocks or examples of
    it at most; ``tokens``: those predicted; of examples, their completions', with the generation metrics), cost,
    and greedy continuations (``samples``: of fixed prompts, or of the test examples' generation sample), for
    full-training reports (never called by a trial); of a copy quantized with ``quantize`` (``student.quantize``)
    where it is not ``none``."""
    model = quantized(model.to(work.device), quantize)
    evaluation = work.evaluate(model, work.test(), 16)
    scores = {**evaluation.scores(), "tokens": evaluation.tokens}
    shown = evaluation.samples[:3] if isinstance(evaluation, CompletionEvaluation) else samples(model, work)
    return {**scores, "samples": shown, **measure_cost(merged(model), work)}


model_identity = lm_identity


def save_model(model: torch.nn.Module, work: Workload, out: Path, adapter_only: bool = False) -> None:
    """Write ``model`` and the tokenizer to ``out`` (``AutoModelForCausalLM.from_pretrained`` and
    ``pipeline("text-generation")`` load it), an adapter merged into its weights; with ``adapter_only`` the
    weights it adapts and the adapter alone (:func:`objectives.students.save_adapter`)."""
    save_adapter(model, out) if adapter_only else merged(model).save_pretrained(out)
    work.tokenizer.save_pretrained(out)
