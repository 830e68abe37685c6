"""Creating or loading the Optuna study of a config, with its config stored in the study."""

from __future__ import annotations

import hashlib
import itertools
import os
import time
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna

from hpo.study._config import RUN_CONTROL, Config, config_diff, config_to_dict
from hpo.study._pruners import make_pruner
from hpo.study._records import BUDGET_ATTR, CONFIG_ATTR, STORE_ATTR
from hpo.study._samplers import make_sampler
from hpo.study._search_space import grid_of
from objectives import CORPORA, DATASETS, ConfigError, TaskSpec, get_task
from storage import ArtifactDir, claim_study_attr, redact_text, store_root

CLAIM_ATTR = "hpo:config"
"""Study system attribute written once, by the first creator: the config and a token naming that creator. Only the
creator whose token is kept stores the config and queues the grid, so concurrent ``hpo create`` queue it once."""


STORE_MARKER = "hpo-store.json"
"""The artifact written into a study's store by ``hpo create``: the study's name and the random id kept in the
study's :data:`STORE_ATTR`."""

STORE_FIX = "point this process at the study's store with --artifacts PATH or HPO_ARTIFACTS_DIR"


SETTINGS = (BUDGET_ATTR, "timeout", "priority", "max_parallel", "device")
"""Config fields kept as study user attributes of the same name, not in the stored config: the latest
``hpo create`` / ``hpo run`` sets them (so they can change without a new study) and every worker follows them
(``hpo worker --gpus`` pins a slot to its GPU over ``device``)."""


def stored_config(config: Config) -> dict:
    """What is kept in the study: the config minus fields that may differ between runs (and may hold secrets)."""
    data = config_to_dict(config)
    for key in RUN_CONTROL:
        data.pop(key, None)
    return data


def study_task(study: optuna.Study) -> TaskSpec:
    """The task of a study as its data format makes it, from its stored config (classification for a study
    without one)."""
    stored = study.user_attrs.get(CONFIG_ATTR) or {}
    return get_task(stored.get("task", "classification")).for_format((stored.get("data") or {}).get("format", "text"))


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
    study's points are queued, by the one process whose write-once claim of the study wins the race (a loser with
    the same config loads the study; with another config it is refused). A fresh study is sampled with the study
    seed (reproducible); a resumed one with a seed derived from it and the trials it holds, so that it does not
    propose the first run's parameters again. A relative ``artifacts_dir`` is made absolute (in ``config`` too,
    from this process's working directory) and stored that way, so workers started anywhere share one teacher; so
    are a local ``data.name``, ``teacher.model`` and ``student.model``. The creator of a ``distill`` study writes a
    store marker into its artifact store (:func:`study_store` checks it).
    """
    validate_search(config)
    _absolute_paths(config)
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
    won = False
    if existing is None:  # new, or another process is creating it right now: the first claim decides
        token = uuid.uuid4().hex
        claim = claim_study_attr(study._storage, study._study_id, CLAIM_ATTR, {"config": wanted, "token": token})
        won, existing = claim["token"] == token, claim["config"]
    if won:
        with warnings.catch_warnings():  # set_metric_names is marked experimental but stable since Optuna 3.2
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(config.metric_names)
        if is_grid(config):
            grid = grid_of(config.search_space)
            for values in itertools.product(*grid.values()):
                study.enqueue_trial(dict(zip(grid, values, strict=True)))
        if config.objective == "distill":
            study.set_user_attr(STORE_ATTR, _mark_store(config))
        study.set_user_attr(CONFIG_ATTR, wanted)  # last: workers load only a study whose grid is queued
    elif existing != wanted:
        diff = config_diff(existing, wanted)
        raise ConfigError(
            "name",
            f"study {config.name!r} exists with another config ({'; '.join(diff[:5])}); "
            "use a new name or the same config",
        )
    else:
        _wait_for_config(study)
    attrs = study.user_attrs
    for key in SETTINGS:
        if key not in attrs or attrs[key] != getattr(config, key):
            study.set_user_attr(key, getattr(config, key))
    held = len(study.get_trials(deepcopy=False))
    if held:
        study.sampler = study_sampler(config, salt=f"resumed-at-{held}")
    return study


def _absolute_paths(config: Config) -> None:
    """Local paths of ``config`` made absolute from this process's working directory: the artifact store, and the
    data file or folder and model directories that exist here (built-in data sets and model names stay as they
    are)."""
    config.artifacts_dir = store_root(config.artifacts_dir)
    if config.data.name not in DATASETS and config.data.name not in CORPORA:
        config.data.name = _absolute(config.data.name)
    config.teacher.model = _absolute(config.teacher.model)
    if config.student.model is not None:
        config.student.model = _absolute(config.student.model)


def _absolute(name: str) -> str:
    path = Path(name).expanduser()
    return os.path.abspath(path) if path.exists() else name


def open_store(root: str, study_name: str, options: dict[str, Any]) -> ArtifactDir:
    """The artifact store of study ``study_name`` under ``root`` (``artifacts_dir``, in this process), unchecked."""
    try:
        return ArtifactDir(root, study_name, options=options)
    except ImportError as exc:  # s3:// without s3fs, say
        raise ConfigError(
            "artifacts_dir", f"{root} needs a package missing here ({exc}); e.g. pip install s3fs"
        ) from None


def store_error(exc: Exception) -> str:
    """An exception of a store's filesystem as one safe line: its type and the first line of its message."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {redact_text(text.splitlines()[0])}" if text else type(exc).__name__


def _mark_store(config: Config) -> dict[str, str]:
    """Write the store marker of a new study into its artifact store; returns what the study keeps of it."""
    store = {"root": config.artifacts_dir, "id": uuid.uuid4().hex}
    artifacts = open_store(config.artifacts_dir, config.name, config.artifacts_options)
    try:
        artifacts.write_json(STORE_MARKER, {"study": config.name, "id": store["id"]})
    except Exception as exc:
        raise ConfigError(
            "artifacts_dir",
            f"cannot write to the artifact store {artifacts.location} ({store_error(exc)}); use a folder or URL this "
            "machine can write, and check artifacts_options and the credentials",
        ) from None
    return store


def study_store(config: Config, attrs: dict[str, Any]) -> ArtifactDir:
    """The artifact store of a study in this process (``config.artifacts_dir``, which ``--artifacts`` or
    ``HPO_ARTIFACTS_DIR`` may have replaced), checked against the marker its creator wrote there (``attrs``: the
    study's user attributes): a process reading another folder would train a private teacher. Raises ConfigError
    (``artifacts_dir``) naming the store and the fix when it is not the study's or cannot be reached."""
    artifacts = open_store(config.artifacts_dir, config.name, config.artifacts_options)
    expected = attrs.get(STORE_ATTR)
    if expected is None:  # a study created before stores were marked
        return artifacts
    try:
        found = artifacts.read_json(STORE_MARKER) if artifacts.exists(STORE_MARKER) else {}
    except Exception as exc:
        raise ConfigError(
            "artifacts_dir",
            f"cannot reach {artifacts.location}, the artifact store of study {config.name!r} ({store_error(exc)}); "
            f"{STORE_FIX}, and check artifacts_options and the credentials",
        ) from None
    if found.get("id") != expected["id"]:
        raise ConfigError(
            "artifacts_dir",
            f"{artifacts.location} is not the artifact store of study {config.name!r} (its marker is not there; the "
            f"study's store is {expected['root']}); {STORE_FIX}",
        )
    return artifacts


def _summary(storage: optuna.storages.BaseStorage, name: str, flag: str) -> optuna.study.StudySummary:
    summaries = {s.study_name: s for s in optuna.get_all_study_summaries(storage, include_best_trial=False)}
    if name not in summaries:
        known = ", ".join(sorted(summaries)) or "none"
        raise ConfigError(flag, f"no study named {name!r} in this storage (studies: {known}); run hpo create first")
    return summaries[name]


def _wait_for_config(study: optuna.Study, timeout: float = 120.0) -> None:
    """Wait until the process that won the creation race has queued the grid and stored the config."""
    deadline = time.monotonic() + timeout
    while CONFIG_ATTR not in study.user_attrs:
        if time.monotonic() > deadline:
            raise ConfigError(
                "name",
                f"study {study.study_name!r} is being created by another process; try again (if its creator was "
                f"killed, remove the half-made study with hpo delete {study.study_name} --yes)",
            )
        time.sleep(0.2)


def apply_settings(config: Config, attrs: dict[str, Any]) -> Config:
    """``config`` (changed in place) with the :data:`SETTINGS` found in ``attrs``, a study's user attributes."""
    for key in SETTINGS:
        if key in attrs:
            setattr(config, key, attrs[key])
    return config


def load_study(storage: optuna.storages.BaseStorage, name: str, salt: str = "") -> tuple[optuna.Study, Config]:
    """Load study ``name`` created by ``hpo create`` / ``hpo run``, with its stored config; its sampler is seeded
    from the study seed and ``salt`` (a worker passes its host and process id)."""
    from hpo.study._config import config_from_dict

    summary = _summary(storage, name, "--study")
    stored = summary.user_attrs.get(CONFIG_ATTR)
    if stored is None:
        raise ConfigError("--study", f"study {name!r} was not created by hpo (it has no stored config)")
    config = config_from_dict(stored)
    apply_settings(config, summary.user_attrs)
    study = optuna.load_study(
        study_name=name, storage=storage, sampler=study_sampler(config, salt), pruner=study_pruner(config)
    )
    return study, config


def delete_study(
    storage: optuna.storages.BaseStorage,
    name: str,
    *,
    force: bool,
    confirm: Callable[[str], bool],
    artifacts_dir: str | None = None,
) -> ArtifactDir | None:
    """Delete study ``name`` with its trials, after ``confirm`` (given a description) says yes; returns the study's
    artifact store (None when not deleted), at ``artifacts_dir`` when given (the store under this machine's path).
    Refuses while trials are RUNNING (workers are on it) unless ``force``."""
    from hpo.study._config import config_from_dict

    summary = _summary(storage, name, "NAME")
    study = optuna.load_study(study_name=name, storage=storage)
    running = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)))
    if running and not force:
        raise ConfigError(
            "--force", f"study {name!r} has {running} running trials (workers on it); stop them first or pass --force"
        )
    stored = summary.user_attrs.get(CONFIG_ATTR)
    if stored:
        config = config_from_dict(stored)
        config.artifacts_dir = artifacts_dir or config.artifacts_dir
        artifacts = open_store(config.artifacts_dir, config.name, config.artifacts_options)
    else:  # not created by hpo
        artifacts = ArtifactDir(artifacts_dir or "hpo-artifacts", name)
    if not confirm(f"study {name!r} ({summary.n_trials} trials, {running} running)"):
        return None
    optuna.delete_study(study_name=name, storage=storage)
    return artifacts
