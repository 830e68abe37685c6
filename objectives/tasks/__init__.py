"""Tasks: the task spec and registry (``TASKS``: metrics, directions, defaults, without torch) and one module per task (classification, causal LM, synthetic) that says what a trial of that task does.

Imports every other room of ``objectives``; nothing imports a task module except through ``TaskSpec.implementation()``.
"""
