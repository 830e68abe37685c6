"""Orchestration: the study config, search space, samplers and pruners, the study, the trial runner and the CLI."""

from hpo.study._config import (
    Config,
    PrunerArgs,
    SamplerArgs,
    apply_params,
    config_from_dict,
    dump_config,
    load_config,
)
from hpo.study._pruners import PRUNERS, make_pruner
from hpo.study._samplers import SAMPLERS, make_sampler
from hpo.study._search_space import ParamSpec, grid_of, suggest_params

__all__ = [
    "PRUNERS",
    "SAMPLERS",
    "Config",
    "ParamSpec",
    "PrunerArgs",
    "SamplerArgs",
    "apply_params",
    "config_from_dict",
    "dump_config",
    "grid_of",
    "load_config",
    "make_pruner",
    "make_sampler",
    "suggest_params",
]
