"""Samplers by name: each factory imports what it needs lazily and lists valid names on a miss."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from typing import Any

import optuna

from hpo.study._search_space import SearchSpace, grid_of
from objectives import ConfigError

_EXTRA_HINT = {"scipy": "pip install scipy (or distill-hpo[samplers])", "cmaes": "pip install cmaes"}


def _needs(module: str, sampler: str) -> None:
    try:
        importlib.import_module(module)
    except ImportError:
        raise ConfigError("sampler.name", f"{sampler} needs {module}: {_EXTRA_HINT[module]}") from None


def _grid(space: SearchSpace, seed: int, options: dict[str, Any], n_objectives: int) -> optuna.samplers.BaseSampler:
    if not space:
        raise ConfigError("search_space", "is empty; a grid search needs at least one parameter")
    return _construct(optuna.samplers.GridSampler, options, grid_of(space), seed=seed)


def _random(space: SearchSpace, seed: int, options: dict[str, Any], n_objectives: int) -> optuna.samplers.BaseSampler:
    return _construct(optuna.samplers.RandomSampler, options, seed=seed)


def _tpe(space: SearchSpace, seed: int, options: dict[str, Any], n_objectives: int) -> optuna.samplers.BaseSampler:
    # Multivariate TPE models parameter interactions (T with alpha, lr with depth); Optuna 5 enables it by default
    # only for single-objective studies, so say it explicitly. constant_liar (default True in Optuna 5) keeps
    # parallel workers from proposing the same point.
    return _construct(optuna.samplers.TPESampler, {"multivariate": True, **options}, seed=seed)


def _gp(space: SearchSpace, seed: int, options: dict[str, Any], n_objectives: int) -> optuna.samplers.BaseSampler:
    _needs("scipy", "gp")
    return _construct(optuna.samplers.GPSampler, options, seed=seed)


def _nsga2(space: SearchSpace, seed: int, options: dict[str, Any], n_objectives: int) -> optuna.samplers.BaseSampler:
    return _construct(optuna.samplers.NSGAIISampler, options, seed=seed)


def _cmaes(space: SearchSpace, seed: int, options: dict[str, Any], n_objectives: int) -> optuna.samplers.BaseSampler:
    _needs("cmaes", "cmaes")
    if n_objectives > 1:
        raise ConfigError("sampler.name", "cmaes is single-objective; use tpe, nsga2, gp or random for several")
    return _construct(optuna.samplers.CmaEsSampler, options, seed=seed)


def _qmc(space: SearchSpace, seed: int, options: dict[str, Any], n_objectives: int) -> optuna.samplers.BaseSampler:
    _needs("scipy", "qmc")
    return _construct(optuna.samplers.QMCSampler, options, seed=seed)


SAMPLERS: dict[str, Callable[[SearchSpace, int, dict[str, Any], int], optuna.samplers.BaseSampler]] = {
    "grid": _grid,
    "random": _random,
    "tpe": _tpe,
    "gp": _gp,
    "nsga2": _nsga2,
    "cmaes": _cmaes,
    "qmc": _qmc,
}


# What a YAML value must be for each part of a constructor annotation such as "int | None"; a part not listed
# (Callable, BaseSampler, np.ndarray) is an object no YAML value is.
_YAML_TYPES: dict[str, Callable[[Any], bool]] = {
    "None": lambda v: v is None,
    "bool": lambda v: isinstance(v, bool),
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "float": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "str": lambda v: isinstance(v, str),
    "dict": lambda v: isinstance(v, dict),
    "list": lambda v: isinstance(v, list),
    "Sequence": lambda v: isinstance(v, list),
    "Any": lambda v: True,
}


def _fits(value: Any, annotation: Any) -> bool:
    """Whether a YAML ``value`` fits a constructor parameter's ``annotation`` (a type or its string)."""
    if annotation is inspect.Parameter.empty:
        return True
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    parts = [part.strip().split("[")[0] for part in text.split("|")]
    return any(_YAML_TYPES.get(part, lambda v: False)(value) for part in parts)


def _construct(cls: type, options: dict[str, Any], *args: Any, **fixed: Any) -> Any:
    """``cls(*args, **fixed, **options)``; an option the constructor lacks, or a value of a type it does not take,
    is a ConfigError listing valid ones."""
    params = inspect.signature(cls.__init__).parameters
    accepted = [p for p in params if p not in ("self", "search_space")]
    for key, value in options.items():
        if key not in accepted or key in fixed:
            why = "is set by distill-hpo (from the study seed)" if key in fixed else "is not an option"
            raise ConfigError(f"options.{key}", f"{why} of {cls.__name__}; valid: {', '.join(sorted(accepted))}")
        annotation = params[key].annotation
        if not _fits(value, annotation):
            shown = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", annotation)
            raise ConfigError(f"options.{key}", f"{cls.__name__} takes {shown}, got {value!r}")
    try:
        return cls(*args, **fixed, **options)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError("options", f"{cls.__name__} rejected them: {exc}") from None


def make_sampler(
    name: str, options: dict[str, Any], space: SearchSpace, seed: int, n_objectives: int
) -> optuna.samplers.BaseSampler:
    """The sampler ``name`` for ``space``, seeded with ``seed``."""
    if name not in SAMPLERS:
        raise ConfigError("sampler.name", f"unknown sampler {name!r}; valid: {', '.join(SAMPLERS)}")
    try:
        return SAMPLERS[name](space, seed, options, n_objectives)
    except ConfigError as exc:
        raise (exc if exc.key.startswith(("sampler", "search_space")) else exc.under("sampler")) from None
