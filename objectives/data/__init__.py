"""Data: labelled datasets for classification (registry, local files, hub ids, splits, tokenisation, batches) and text corpora for causal LMs (packing into token blocks).

Imports only ``objectives._config``.
"""
