"""Data: labelled datasets for classification (registry, local files, hub ids, splits, tokenisation, batches) and text
corpora for causal LMs (packing into token blocks), and instruction data for causal LMs (prompt-completion pairs and
chat conversations, padded examples trained on their completions).

Imports only ``objectives._config``.
"""

from __future__ import annotations

from objectives.data._corpus import CORPORA, Blocks, Corpus, load_corpus, pack, split_cap
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
from objectives.data._examples import IGNORE, PROMPTED, Examples, Instructions, load_instructions, tokenise_examples

__all__ = [
    "CORPORA",
    "DATASETS",
    "IGNORE",
    "PROMPTED",
    "Blocks",
    "Corpus",
    "Encoded",
    "Examples",
    "Instructions",
    "Rows",
    "Task",
    "collate",
    "encode",
    "forget_encoded",
    "load_corpus",
    "load_instructions",
    "load_rows",
    "load_task",
    "normalise_text",
    "open_data",
    "pack",
    "package_file",
    "split_cap",
    "tokenise_examples",
    "train_batches",
    "transfer_texts",
]
