"""Instruction data for causal LMs: prompt/completion pairs and chat conversations (``data.format``), tokenised into
one right-padded example per row whose targets are the completion (assistant) tokens only.

Rows are read as a corpus's documents are (local CSV/TSV/JSONL/JSON/Parquet files, dataset directories, hub ids),
or made from a built-in labelled set (:data:`PROMPTED`); split by a seeded shuffle of whole rows. Imports neither
torch nor datasets until a function needs them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from objectives._config import ConfigError, DataArgs
from objectives.data._data import _LOCAL_SUFFIXES, DATASETS, read_local, stratified_split, train_batches

if TYPE_CHECKING:
    import datasets
    import torch

IGNORE = -100
"""The label of a token that carries no loss (prompt, non-assistant and padding tokens)."""

PROMPTED = {
    "rt-snippets": "Review: {text}\nSentiment:",
    "sms-spam": "Message: {text}\nSpam or ham:",
}
"""Built-in labelled sets as prompt-completion data: each text in its prompt, its class name (after a space) the
completion, e.g. ``Review: a fine film\\nSentiment:`` -> `` positive``."""


@dataclass(frozen=True)
class Instructions:
    """Instruction rows of train / validation / test (``datasets``, the format's columns only)."""

    args: DataArgs
    splits: dict[str, datasets.Dataset]
    fingerprint: str
    """A hash of every row and which split it is in."""


def _prompted(args: DataArgs) -> tuple[datasets.Dataset, list[int]]:
    """A built-in labelled set as prompt/completion rows, and its labels (to split by)."""
    import datasets

    rows = DATASETS[args.name](args)
    template = PROMPTED[args.name]
    prompts = [template.format(text=text) for text in rows.texts]
    completions = [f" {rows.label_names[label]}" for label in rows.labels]
    if args.format == "chat":
        pairs = zip(prompts, completions, strict=True)
        messages = [[{"role": "user", "content": p}, {"role": "assistant", "content": c.strip()}] for p, c in pairs]
        return datasets.Dataset.from_dict({args.messages_column: messages}), rows.labels
    return datasets.Dataset.from_dict({args.prompt_column: prompts, args.completion_column: completions}), rows.labels


def _read_records(args: DataArgs) -> datasets.Dataset:
    """Every row of a local file, dataset directory or hub dataset, the format's columns only."""
    import datasets

    path = Path(args.name).expanduser()
    if path.is_dir():
        records = read_local(path, hf_config=args.hf_config, split=args.hf_split)
    elif path.suffix in _LOCAL_SUFFIXES:
        if not path.is_file():
            raise ConfigError("name", f"file {args.name!r} does not exist; built-in sets are {sorted(PROMPTED)}")
        records = read_local(path, **({"delimiter": "\t"} if path.suffix == ".tsv" else {}))
    elif "/" not in args.name:
        raise ConfigError(
            "name",
            f"unknown {args.format} data {args.name!r}; use one of {sorted(PROMPTED)}, a local "
            f"{'/'.join(sorted(_LOCAL_SUFFIXES))} file, or a Hugging Face id",
        )
    else:
        records = datasets.load_dataset(args.name, args.hf_config, split=args.hf_split)
    keys = ("messages_column",) if args.format == "chat" else ("prompt_column", "completion_column")
    columns = list(records.column_names)
    for key in keys:
        if getattr(args, key) not in columns:
            raise ConfigError(key, f"column {getattr(args, key)!r} not in the dataset; its columns are {columns}")
    return records.select_columns([getattr(args, key) for key in keys])


def load_instructions(args: DataArgs) -> Instructions:
    """The rows ``args`` names in its ``format``, split by ``args.val_fraction`` / ``test_fraction`` /
    ``split_seed`` (a built-in set stratified by its classes)."""
    if args.name in PROMPTED:
        records, labels = _prompted(args)
    else:
        records = _read_records(args)
        labels = [0] * len(records)
    if len(records) < 3:
        raise ConfigError("name", f"{args.name!r} has {len(records)} rows; need at least 3")
    parts = stratified_split(labels, args.val_fraction, args.test_fraction, args.split_seed)
    splits = {
        split: records.select(sorted(idx)) for split, idx in zip(("train", "validation", "test"), parts, strict=True)
    }
    digest = hashlib.sha256(args.format.encode())
    for split, rows in splits.items():
        digest.update(f"\x01{split}\x01".encode())
        for row in rows:
            digest.update(repr(sorted(row.items())).encode() + b"\x00")
    return Instructions(args, splits, digest.hexdigest()[:16])


def _segments(tokenizer: Any, row: dict[str, Any], args: DataArgs) -> tuple[list[tuple[str, bool]], str]:
    """A row as text segments, each with whether it is a completion (trained on), and the reference of its last
    completion (what generation is scored against)."""
    if args.format == "prompt-completion":
        prompt, completion = row[args.prompt_column], row[args.completion_column]
        if prompt is None or completion is None or not str(completion).strip():
            raise ConfigError("completion_column", "every row needs a prompt and a non-empty completion")
        return [(str(prompt), False), (str(completion), True)], str(completion).strip()
    messages = row[args.messages_column]
    if getattr(tokenizer, "chat_template", None) is None:
        raise ConfigError(
            "format",
            f"chat renders conversations with the tokenizer's chat template, and {tokenizer.name_or_path!r} has none; "
            "use a model with one or data.format: prompt-completion",
        )
    turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    if not turns:
        raise ConfigError("messages_column", "every conversation needs an assistant message to train on")

    def render(upto: int, prompt: bool) -> str:
        return tokenizer.apply_chat_template(messages[:upto], tokenize=False, add_generation_prompt=prompt)

    full, segments, done = render(len(messages), False), [], 0
    for i in turns:
        start, end = render(i, True), render(i + 1, False)
        if not (end.startswith(start) and full.startswith(end)):
            raise ConfigError("format", "the tokenizer's chat template does not render conversations turn by turn")
        segments += [(full[done : len(start)], False), (full[len(start) : len(end)], True)]
        done = len(end)
    segments.append((full[done:], False))
    return [s for s in segments if s[0]], str(messages[turns[-1]]["content"]).strip()


@dataclass(frozen=True, eq=False)
class Examples:
    """One split as token examples, batched as :class:`objectives.Blocks` are (``input_ids``, ``attention_mask``,
    ``labels`` with :data:`IGNORE` on every token but the completions', ``index``), right-padded: per batch for
    training (grouped by length), to the split's longest example for evaluation (so a teacher's stored states have
    one width), and the prompts and references of a fixed sample for generation."""

    input_ids: list[list[int]]
    labels: list[list[int]]
    prompt_lengths: list[int]
    """Tokens before each example's last completion: its prompt for generation."""
    references: list[str]
    """Each example's last completion (assistant message), stripped."""
    truncated: int
    """Examples longer than ``data.max_length``, cut from the prompt side."""
    pad_token_id: int
    tokenizer: Any
    max_new_tokens: int
    generation_rows: int

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def width(self) -> int:
        return max((len(ids) for ids in self.input_ids), default=1)

    def mean_length(self) -> float:
        return sum(len(ids) for ids in self.input_ids) / max(1, len(self))

    def token_counts(self) -> tuple[float, float]:
        """Mean prompt (untrained) and completion (trained) tokens per example."""
        completion = sum(sum(y != IGNORE for y in labels) for labels in self.labels)
        total = sum(len(ids) for ids in self.input_ids)
        return (total - completion) / max(1, len(self)), completion / max(1, len(self))

    @cached_property
    def _digest(self) -> str:
        digest = hashlib.sha256(str(self.pad_token_id).encode())
        for ids in self.input_ids:
            digest.update(b",".join(str(i).encode() for i in ids) + b";")
        return digest.hexdigest()[:16]

    def fingerprint(self) -> str:
        """A hash of the token ids (the model inputs)."""
        return self._digest

    def batch(self, idx: Sequence[int], width: int | None = None) -> dict[str, torch.Tensor]:
        """The examples ``idx`` right-padded to ``width`` (their longest where None)."""
        import torch

        width = width or max(len(self.input_ids[i]) for i in idx)
        input_ids = torch.full((len(idx), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(idx), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):
            n = len(self.input_ids[i])
            input_ids[row, :n] = torch.tensor(self.input_ids[i])
            labels[row, :n] = torch.tensor(self.labels[i])
            mask[row, :n] = 1
        index = torch.tensor(list(idx), dtype=torch.long)
        return {"input_ids": input_ids, "attention_mask": mask, "labels": labels, "index": index}

    def train_batches(self, batch_size: int, seed: int, *, group_by_length: bool = True) -> Iterator[dict[str, Any]]:
        """Endless shuffled training batches (:func:`objectives.train_batches`), padded per batch."""
        return train_batches(self, batch_size, seed, group_by_length=group_by_length)

    def eval_batches(self, batch_size: int) -> Iterator[dict[str, Any]]:
        """Every example once, in order, padded to :attr:`width`."""
        for start in range(0, len(self), batch_size):
            yield self.batch(range(start, min(start + batch_size, len(self))), self.width)

    def generation_sample(self) -> list[int]:
        """The fixed examples whose prompts are completed for the generation metrics: ``generation_rows`` evenly
        spaced over the split (all of a smaller one)."""
        k = min(self.generation_rows, len(self))
        return [i * len(self) // k for i in range(k)]

    def prompt(self, i: int) -> list[int]:
        return self.input_ids[i][: self.prompt_lengths[i]]


def tokenise_examples(tokenizer: Any, rows: datasets.Dataset, args: DataArgs, cap: int | None = None) -> Examples:
    """``rows`` (at most ``cap``, evenly spaced) as :class:`Examples`: segments tokenised one by one without special
    tokens (so a prompt's tokens are the same alone as before its completion), a prompt-completion's completion
    followed by EOS. An example longer than ``args.max_length`` loses its oldest tokens, down to one token before its
    last completion, then (a completion alone too long) its end."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ConfigError("model", "its tokenizer has no EOS token to end completions with; set tokenizer.eos_token")
    if cap is not None and cap < len(rows):
        rows = rows.select([i * len(rows) // cap for i in range(cap)])
    all_ids, all_labels, prompts, references, truncated = [], [], [], [], 0
    for row in rows:
        segments, reference = _segments(tokenizer, row, args)
        ids: list[int] = []
        labels: list[int] = []
        last = 0
        for text, trained in segments:
            part = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
            if trained:
                last = len(ids)
                part = [*part, eos] if args.format == "prompt-completion" else part
            ids += part
            labels += part if trained else [IGNORE] * len(part)
        if len(ids) > args.max_length:
            truncated += 1
            cut = min(len(ids) - args.max_length, max(0, last - 1))
            ids, labels, last = ids[cut:][: args.max_length], labels[cut:][: args.max_length], last - cut
        all_ids.append(ids)
        all_labels.append(labels)
        prompts.append(last)
        references.append(reference)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    return Examples(
        all_ids,
        all_labels,
        prompts,
        references,
        truncated,
        pad,
        tokenizer,
        args.max_new_tokens,
        args.generation_rows,
    )
