"""Creating or loading the Optuna study of a config, with its config stored in the study."""

from __future__ import annotations

import hashlib
import itertools
import warnings
from typing import Any

import optuna

from hpo._config import RUN_CONTROL, Config, config_diff, config_to_dict
from hpo._pruners import make_pruner
from hpo._samplers import make_sampler
from hpo._search_space import grid_of
from objectives import ConfigError

CONFIG_ATTR = "config"
"""Study user attribute holding the study's config (without run-control fields such as the storage URL)."""

BUDGET_ATTR = "n_trials"
"""Study user attribute holding the trial budget that workers follow; the latest ``hpo create`` / ``hpo run`` sets
it."""

SETTINGS = (BUDGET_ATTR, "priority", "max_parallel")
"""Config fields kept as study user attributes of the same name, not in the stored config: the latest
``hpo create`` / ``hpo run`` sets them (so they can change without a new study) and workers follow them."""


def stored_config(config: Config) -> dict:
    """What is kept in the study: the config minus fields that may differ between runs (and may hold secrets)."""
    data = config_to_dict(config)
    for key in RUN_CONTROL:
        data.pop(key, None)
    return data


def is_grid(config: Config) -> bool:
    return config.sampler.name == "grid"


def sampler_seed(seed: int, salt: str = "") -> int:
    """The sampler seed of one process: the study seed itself without ``salt``, else one derived from both."""
    if not salt:
        return seed
    return int.from_bytes(hashlib.sha256(f"{seed}:{salt}".encode()).digest()[:4], "big") >> 1


def study_sampler(config: Config, salt: str = "") -> optuna.samplers.BaseSampler:
    """The sampler a process uses for the study, seeded with :func:`sampler_seed` of the study seed and ``salt``.

    Processes sampling one study at once, or a run resuming it, must not share a seed: seeded alike, they would
    propose the same parameters (every worker's first random trial would be the same). A grid study's points are
    queued once when it is created and claimed from the queue by workers (each point runs exactly once); GridSampler
    itself would repeat points under concurrency, so the queue replaces it.
    """
    seed = sampler_seed(config.seed, salt)
    if is_grid(config):
        return optuna.samplers.RandomSampler(seed=seed)
    n_objectives = len(config.directions)
    return make_sampler(config.sampler.name, config.sampler.options, config.search_space, seed, n_objectives)


def study_pruner(config: Config) -> optuna.pruners.BasePruner:
    """The Optuna pruner of the study; ``pareto`` prunes inside the trial runner, so Optuna's is a no-op then."""
    pruner = make_pruner(config.pruner.name, config.pruner.options, len(config.directions))
    return pruner if isinstance(pruner, optuna.pruners.BasePruner) else optuna.pruners.NopPruner()


def validate_search(config: Config) -> None:
    """Build the sampler and pruner once, so their errors surface before anything runs."""
    n_objectives = len(config.directions)
    make_sampler(config.sampler.name, config.sampler.options, config.search_space, config.seed, n_objectives)
    make_pruner(config.pruner.name, config.pruner.options, n_objectives)


def open_study(config: Config, storage: optuna.storages.BaseStorage | str) -> optuna.Study:
    """Create the study named ``config.name`` or load it, after checking the stored config is the same.

    On creation the config is stored in the study (workers need only the storage URL and the name) and a grid
    study's points are queued. A fresh study is sampled with the study seed (reproducible); a resumed one with a
    seed derived from it and the trials it holds, so that it does not propose the first run's parameters again.
    """
    validate_search(config)
    sampler = study_sampler(config)
    pruner = study_pruner(config)
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
        if is_grid(config):
            grid = grid_of(config.search_space)
            for values in itertools.product(*grid.values()):
                study.enqueue_trial(dict(zip(grid, values, strict=True)))
    elif existing != wanted:
        diff = config_diff(existing, wanted)
        raise ConfigError(
            "name",
            f"study {config.name!r} exists with another config ({'; '.join(diff[:5])}); "
            "use a new name or the same config",
        )
    attrs = study.user_attrs
    for key in SETTINGS:
        if key not in attrs or attrs[key] != getattr(config, key):
            study.set_user_attr(key, getattr(config, key))
    held = len(study.get_trials(deepcopy=False))
    if held:
        study.sampler = study_sampler(config, salt=f"resumed-at-{held}")
    return study


def apply_settings(config: Config, attrs: dict[str, Any]) -> Config:
    """``config`` (changed in place) with the :data:`SETTINGS` found in ``attrs``, a study's user attributes."""
    for key in SETTINGS:
        if key in attrs:
            setattr(config, key, attrs[key])
    return config


def load_study(storage: optuna.storages.BaseStorage, name: str, salt: str = "") -> tuple[optuna.Study, Config]:
    """Load study ``name`` created by ``hpo create`` / ``hpo run``, with its stored config; its sampler is seeded
    from the study seed and ``salt`` (a worker passes its host and process id)."""
    from hpo._config import config_from_dict

    summaries = {s.study_name: s for s in optuna.get_all_study_summaries(storage, include_best_trial=False)}
    if name not in summaries:
        known = ", ".join(sorted(summaries)) or "none"
        raise ConfigError(
            "--study", f"no study named {name!r} in this storage (studies: {known}); run hpo create first"
        )
    stored = summaries[name].user_attrs.get(CONFIG_ATTR)
    if stored is None:
        raise ConfigError("--study", f"study {name!r} was not created by hpo (it has no stored config)")
    config = config_from_dict(stored)
    apply_settings(config, summaries[name].user_attrs)
    study = optuna.load_study(
        study_name=name, storage=storage, sampler=study_sampler(config, salt), pruner=study_pruner(config)
    )
    return study, config
