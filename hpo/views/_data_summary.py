"""A study's data, opened before anything is created: ``hpo validate`` prints this summary, ``hpo run`` and
``hpo create`` check the data with it before the study is written. No model is loaded.

One summary per task (:data:`SUMMARIES`): labelled rows and their classes, or a language-model corpus (or its
instruction examples, tokenised with the teacher's tokenizer)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from hpo.views._table import render
from objectives import (
    ConfigError,
    DataArgs,
    DistillArgs,
    load_corpus,
    load_instructions,
    load_lm_tokenizer,
    open_data,
    split_cap,
    tokenise_examples,
    transfer_texts,
)

RARE_SHARE = 0.02
"""A class with less than this share of the rows is flagged as rare."""

_FIXES = {
    "train": "no model can learn it; add rows",
    "validation": "trials cannot score it; raise data.val_fraction or add rows",
    "test": "the model card cannot score it; raise data.test_fraction or add rows",
}


def summarise_labelled(args: DataArgs, model: str | None = None) -> str:
    """Rows, columns and classes (with their rows in each split) of the data ``args`` names, and warnings for
    classes that are rare or missing from a split. Raises ConfigError (``data.<key>: ...``) when the data cannot
    be read: a missing file, a missing column, label names that do not fit."""
    task = open_data(args)
    rows = task.rows
    total = len(rows.labels)
    columns = f"columns {', '.join(rows.columns)}; " if rows.columns else ""
    text_label = f"text {args.text_column!r}, label {args.label_column!r}" if rows.columns else "built-in"
    lines = [f"data {args.name}: {total:,} rows ({columns}{text_label}), {task.num_labels} classes"]
    splits = {"train": task.train_idx, "validation": task.val_idx, "test": task.test_idx}
    counts = {split: Counter(rows.labels[i] for i in idx) for split, idx in splits.items()}
    every = Counter(rows.labels)
    table = [
        [str(c), name, str(every[c]), *(str(counts[split][c]) for split in splits)]
        for c, name in enumerate(rows.label_names)
    ]
    lines.append(render(["id", "class", "rows", *(f"{s} ({len(idx)})" for s, idx in splits.items())], table))
    for c, name in enumerate(rows.label_names):
        if every[c] < RARE_SHARE * total:
            lines.append(
                f"warning: class {name!r} is rare ({every[c]} of {total:,} rows, {100 * every[c] / total:.1f}%): "
                "accuracy can hide it; read f1 (macro) and the per-class scores, or set train.class_weights: balanced"
            )
        for split, fix in _FIXES.items():
            if counts[split][c] == 0:
                lines.append(f"warning: class {name!r} has no {split} rows; {fix}")
    return "\n".join(lines)


def summarise_examples(args: DataArgs, model: str) -> str:
    """Rows of each split of prompt-completion or chat data, and of the examples a trial reads (after the caps)
    their mean prompt and completion tokens and how many ``data.max_length`` cut, tokenised with ``model``'s
    tokenizer (no model is loaded)."""
    try:
        data = load_instructions(args)
        tokenizer = load_lm_tokenizer(model)
        examples = {
            split: tokenise_examples(tokenizer, rows, args, split_cap(args, split))
            for split, rows in data.splits.items()
        }
    except ConfigError as exc:
        raise exc.under("data") from None
    table = []
    for split, rows in data.splits.items():
        prompt, completion = examples[split].token_counts()
        used = examples[split]
        table.append(
            [split, f"{len(rows):,}", f"{len(used):,}", f"{prompt:.1f}", f"{completion:.1f}", f"{used.truncated:,}"]
        )
    header = f"data {args.name}: {sum(len(r) for r in data.splits.values()):,} {args.format} rows"
    columns = ["split", "rows", "examples", "prompt tokens (mean)", "completion tokens (mean)", "truncated"]
    notes = (
        f"loss and KD on completion tokens only; examples longer than data.max_length = {args.max_length} tokens are "
        f"cut from the prompt side; exact_match / rouge_l on {min(args.generation_rows, len(examples['validation']))} "
        f"validation prompts, {args.max_new_tokens} new tokens at most"
    )
    return "\n".join([header, render(columns, table), notes])


def summarise_corpus(args: DataArgs, model: str | None = None) -> str:
    """Documents and characters of each split of a causal-LM corpus (tokens depend on the model, so they are counted
    when a worker packs them); a split without text is an error naming ``data.name``. Prompt-completion and chat data
    (``data.format``): :func:`summarise_examples` with ``model``'s tokenizer."""
    if args.format != "text":
        if model is None:
            raise ConfigError("teacher.model", f"is needed to tokenise {args.format} data")
        return summarise_examples(args, model)
    try:
        corpus = load_corpus(args)
    except ConfigError as exc:
        raise exc.under("data") from None
    rows = []
    for split, texts in corpus.splits.items():
        chars = sum(len(t) for batch in texts.iter(batch_size=10_000) for t in batch["text"])
        if chars == 0:
            raise ConfigError("data.name", f"{args.name!r} has no {split} text; add documents or change the fractions")
        rows.append([split, f"{len(texts):,}", f"{chars:,}"])
    header = f"data {args.name}: a corpus of {sum(len(t) for t in corpus.splits.values()):,} documents"
    blocks = f"packed into {args.block_size}-token blocks per split (train capped at {args.max_train_rows} blocks)"
    return "\n".join([header, render(["split", "documents", "characters"], rows), blocks])


def summarise_transfer(distill: DistillArgs, data: DataArgs) -> str:
    """The texts ``distill.transfer_files`` add to the transfer set, read as a trial reads them; raises ConfigError
    (``distill.transfer_files[i]: ...``) for a file without ``data.text_column`` or without text."""
    texts = transfer_texts(distill.transfer_files, data.text_column)
    used = "the whole transfer set (transfer_only)" if distill.transfer_only else "added to the training texts"
    return f"transfer files: {len(texts):,} texts from {len(distill.transfer_files)} paths, {used}"


SUMMARIES: dict[str, Callable[[DataArgs, str | None], str]] = {
    "classification": summarise_labelled,
    "causal-lm": summarise_corpus,
}
"""The data summary of each task."""


def summarise_data(args: DataArgs, task: str = "classification", model: str | None = None) -> str:
    """The summary of the ``task``'s data (:data:`SUMMARIES`; ``model``: the teacher, whose tokenizer counts an
    instruction set's tokens); raises ConfigError (``data.<key>: ...``) when the data cannot be read."""
    return SUMMARIES[task](args, model)
