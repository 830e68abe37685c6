"""Data: labelled datasets for classification (registry, local files, hub ids, splits, tokenisation, batches) and text
corpora for causal LMs (packing into token blocks).

Imports only ``objectives._config``.
"""

from __future__ import annotations

from objectives.data._corpus import CORPORA, Blocks, Corpus, load_corpus, pack
from objectives.data._data import (
    DATASETS,
    Encoded,
    Rows,
    Task,
    collate,
    encode,
    forget_encoded,
    load_rows,
    load_task,
    normalise_text,
    open_data,
    package_file,
    train_batches,
    transfer_texts,
)

__all__ = [
    "CORPORA",
    "DATASETS",
    "Blocks",
    "Corpus",
    "Encoded",
    "Rows",
    "Task",
    "collate",
    "encode",
    "forget_encoded",
    "load_corpus",
    "load_rows",
    "load_task",
    "normalise_text",
    "open_data",
    "pack",
    "package_file",
    "train_batches",
    "transfer_texts",
]
