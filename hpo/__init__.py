"""Orchestration, in three rooms and the commands above them: ``hpo.study`` (what is searched and how, what a study
keeps), ``hpo.views`` (what a user sees), ``hpo.execution`` (running trials); ``_cli``, ``_export`` and ``_training``
(``hpo train``) use them all. The study's public names are re-exported here. Imports ``objectives`` and ``storage``,
never the other way."""

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
