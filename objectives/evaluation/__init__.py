"""Measuring a model: quality metrics (accuracy, macro-F1, per-class scores, perplexity), costs (latency, throughput, size, FLOPs, peak memory, generation speed) and the store that measures each cost once per architecture.

Imports ``objectives._config``, ``objectives.data`` and ``objectives.students``.
"""
