"""Creating or loading the Optuna study of a config, with its config stored in the study."""

from __future__ import annotations

import warnings

import optuna

from hpo._config import RUN_CONTROL, Config, config_diff, config_to_dict
from hpo._pruners import make_pruner
from hpo._samplers import make_sampler
from objectives import ConfigError

CONFIG_ATTR = "config"
"""Study user attribute holding the study's config (without run-control fields such as the storage URL)."""


def stored_config(config: Config) -> dict:
    """What is kept in the study: the config minus fields that may differ between runs (and may hold secrets)."""
    data = config_to_dict(config)
    for key in RUN_CONTROL:
        data.pop(key, None)
    return data


def open_study(config: Config, storage: optuna.storages.BaseStorage | str) -> optuna.Study:
    """Create the study named ``config.name`` or load it, after checking the stored config is the same."""
    n_objectives = len(config.directions)
    sampler = make_sampler(config.sampler.name, config.sampler.options, config.search_space, config.seed, n_objectives)
    pruner = make_pruner(config.pruner.name, config.pruner.options, n_objectives)
    directions = [config.directions[m] for m in config.metric_names]
    study = optuna.create_study(
        study_name=config.name,
        storage=storage,
        sampler=sampler,
        pruner=pruner,
        directions=directions,
        load_if_exists=True,
    )
    wanted = stored_config(config)
    existing = study.user_attrs.get(CONFIG_ATTR)
    if existing is None:
        study.set_user_attr(CONFIG_ATTR, wanted)
        with warnings.catch_warnings():  # set_metric_names is marked experimental but stable since Optuna 3.2
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(config.metric_names)
    elif existing != wanted:
        diff = config_diff(existing, wanted)
        raise ConfigError(
            "name",
            f"study {config.name!r} exists with another config ({'; '.join(diff[:5])}); "
            "use a new name or the same config",
        )
    return study
