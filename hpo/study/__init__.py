"""The study: what is searched and how. The config (typed dataclasses loaded from YAML), the search space, samplers, pruners (the Pareto rung pruner too), constraints, and opening, loading, surveying and deleting a study in the storage.

Imports ``objectives`` and ``storage``; never ``hpo.execution`` or ``hpo.views``.
"""
