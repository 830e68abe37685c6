"""Every study of a storage and where it stands (settings, paused, trial counts), which pool workers rank and
``hpo status`` lists; ``hpo pause`` / ``hpo resume``."""

from __future__ import annotations

import datetime
import logging
from dataclasses import dataclass

import optuna
from optuna.trial import TrialState

from hpo.study._config import Config, config_from_dict
from hpo.study._records import CONFIG_ATTR
from hpo.study._study import apply_settings, is_grid
from objectives import ConfigError
from storage import PAUSED_ATTR, create_storage, first_starts, redact_url, set_paused, timed_out, trial_counts

log = logging.getLogger("hpo")


@dataclass
class Standing:
    """Where one study stands, from one survey of the storage."""

    name: str
    study_id: int
    config: Config
    """The study's stored config with its live settings (``n_trials``, ``timeout``, ``priority``, ``max_parallel``,
    ``device``)."""
    paused: bool
    finished: int
    """COMPLETE or PRUNED trials."""
    running: int
    waiting: int
    started: datetime.datetime | None = None
    """When its first trial started (the clock of ``timeout``); None before any has."""

    @property
    def done(self) -> bool:
        """The budget is spent: ``n_trials`` trials finished, ``timeout`` seconds passed since the first trial
        started, or a grid with nothing queued or running."""
        n = self.config.n_trials
        if (n is not None and self.finished >= n) or timed_out(self.started, self.config.timeout):
            return True
        return is_grid(self.config) and self.waiting == 0 and self.running == 0

    @property
    def state(self) -> str:
        """``done``, ``paused`` or ``running`` (budget left: served by workers, or waiting for them)."""
        return "done" if self.done else "paused" if self.paused else "running"


def survey(
    storage: optuna.storages.RDBStorage,
    configs: dict[int, Config] | None = None,
    unreadable: dict[int, tuple[str, str]] | None = None,
) -> list[Standing]:
    """Every study created by hpo in ``storage``, with its settings and trial counts. ``configs`` caches the
    parsed stored configs by study id (they never change; the settings are re-read every time).

    A study whose stored config does not parse here is left out: logged as a warning, or, given ``unreadable``,
    put there (study id -> (name, why)) for the caller to report."""
    configs = {} if configs is None else configs
    counts = trial_counts(storage)
    starts = first_starts(storage)
    out = []
    for frozen in storage.get_all_studies():
        attrs = frozen.user_attrs
        if CONFIG_ATTR not in attrs:
            continue  # not created by hpo: no config to run it with
        config = configs.get(frozen._study_id)
        if config is None:
            try:
                config = configs[frozen._study_id] = config_from_dict(attrs[CONFIG_ATTR])
            except ConfigError as exc:
                if unreadable is None:
                    log.warning(
                        "study %r: its stored config is not valid here (%s); skipping it", frozen.study_name, exc
                    )
                else:
                    unreadable[frozen._study_id] = (frozen.study_name, str(exc))
                continue
        by_state = counts.get(frozen._study_id, {})
        out.append(
            Standing(
                name=frozen.study_name,
                study_id=frozen._study_id,
                config=apply_settings(config, attrs),
                paused=bool(attrs.get(PAUSED_ATTR, False)),
                finished=by_state.get(TrialState.COMPLETE, 0) + by_state.get(TrialState.PRUNED, 0),
                running=by_state.get(TrialState.RUNNING, 0),
                waiting=by_state.get(TrialState.WAITING, 0),
                started=starts.get(frozen._study_id),
            )
        )
    return out


def pause(url: str, name: str, paused: bool) -> str:
    """``hpo pause`` / ``hpo resume``: stop or restart new trials of study ``name``; running trials go on."""
    storage = create_storage(url, create_tables=False)
    try:
        ids = {s.study_name: s._study_id for s in storage.get_all_studies()}
        if name not in ids:
            known = ", ".join(sorted(ids)) or "none"
            raise ConfigError("NAME", f"no study named {name!r} in {redact_url(url)} (studies: {known})")
        set_paused(storage, ids[name], paused)
        running = storage.get_n_trials(ids[name], (TrialState.RUNNING,))
    finally:
        storage.engine.dispose()
    if paused:
        return f"study {name!r} paused: no new trial starts, {running} running go on; hpo resume {name} restarts it"
    return f"study {name!r} resumed: workers start its trials again"
