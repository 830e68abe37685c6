"""Training: losses (cross-entropy, Hinton KD, per-token KD, layer terms), stored teacher logits, the optimiser and schedule, the training loop, and ``fit`` (the stages of a distillation run).

Imports ``objectives._config``, ``objectives.data``, ``objectives.students`` and ``objectives.evaluation``.
"""
