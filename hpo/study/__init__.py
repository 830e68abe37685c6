"""The study: what is searched and how. The config (typed dataclasses loaded from YAML), the search space, samplers,
pruners (the Pareto rung pruner too), constraints, and opening, loading, surveying and deleting a study in the
storage.

Imports ``objectives`` and ``storage``; never ``hpo.execution`` or ``hpo.views``.
"""

from __future__ import annotations

from hpo.study._config import (
    Config,
    PrunerArgs,
    SamplerArgs,
    SourceArgs,
    TrainJob,
    apply_params,
    config_from_dict,
    config_to_dict,
    dump_config,
    dump_job,
    load_config,
    load_job,
)
from hpo.study._constraints import Constraint, parse_constraint
from hpo.study._pareto_pruner import ParetoRungPruner, rung_attr
from hpo.study._pruners import PRUNERS, make_pruner
from hpo.study._records import (
    BUDGET_ATTR,
    CONFIG_ATTR,
    CURVE_PREFIX,
    STORE_ATTR,
    TEACHER_ATTR,
    TIMING_ATTRS,
    TRAINING_ATTRS,
    teacher_warning,
)
from hpo.study._samplers import SAMPLERS, make_sampler
from hpo.study._search_space import ParamSpec, grid_of, suggest_params
from hpo.study._study import (
    CLAIM_ATTR,
    STORE_MARKER,
    delete_study,
    is_grid,
    load_study,
    open_store,
    open_study,
    store_error,
    study_store,
    study_task,
    validate_search,
)
from hpo.study._survey import Standing, pause, survey

__all__ = [
    "BUDGET_ATTR",
    "CLAIM_ATTR",
    "CONFIG_ATTR",
    "CURVE_PREFIX",
    "PRUNERS",
    "SAMPLERS",
    "STORE_ATTR",
    "STORE_MARKER",
    "TEACHER_ATTR",
    "TIMING_ATTRS",
    "TRAINING_ATTRS",
    "Config",
    "Constraint",
    "ParamSpec",
    "ParetoRungPruner",
    "PrunerArgs",
    "SamplerArgs",
    "SourceArgs",
    "Standing",
    "TrainJob",
    "apply_params",
    "config_from_dict",
    "config_to_dict",
    "delete_study",
    "dump_config",
    "dump_job",
    "grid_of",
    "is_grid",
    "load_config",
    "load_job",
    "load_study",
    "make_pruner",
    "make_sampler",
    "open_store",
    "open_study",
    "parse_constraint",
    "pause",
    "rung_attr",
    "store_error",
    "study_store",
    "study_task",
    "suggest_params",
    "survey",
    "teacher_warning",
    "validate_search",
]
