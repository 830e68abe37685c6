"""Orchestration: the study config, search space, samplers and pruners, the study, the trial runner and the CLI."""

from hpo._config import (
    Config,
    PrunerArgs,
    SamplerArgs,
    apply_params,
    config_from_dict,
    dump_config,
    load_config,
)
from hpo._pruners import PRUNERS, make_pruner
from hpo._samplers import SAMPLERS, make_sampler
from hpo._search_space import ParamSpec, grid_of, suggest_params

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
