"""Orchestration: the study config, search space, samplers and pruners, the study, the trial runner and the CLI."""

from hpo.study import (
    PRUNERS,
    SAMPLERS,
    Config,
    ParamSpec,
    PrunerArgs,
    SamplerArgs,
    apply_params,
    config_from_dict,
    dump_config,
    grid_of,
    load_config,
    make_pruner,
    make_sampler,
    suggest_params,
)

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
