"""Students: loading base models (encoders and causal LMs), cutting students out of a teacher by layers, measuring importance and pruning widths. Shared helpers at the bottom (``_shared``), the models and decoders above them, pruning above those, and the composer that builds a student (``_student``) on top.

Imports ``objectives._config`` and ``objectives.data``.
"""
