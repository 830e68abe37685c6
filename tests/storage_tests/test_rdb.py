"""The Optuna storage on real databases: SQLite here, PostgreSQL through HPO_TEST_PG_URL."""

import uuid
from pathlib import Path

import optuna

from storage import create_storage


def _roundtrip(url: str) -> None:
    storage = create_storage(url)
    name = f"rdb-{uuid.uuid4().hex[:8]}"
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=3)
    again = optuna.load_study(study_name=name, storage=create_storage(url))
    assert len(again.trials) == 3 and again.best_value == study.best_value
    optuna.delete_study(study_name=name, storage=storage)


def test_sqlite(tmp_path: Path) -> None:
    _roundtrip(f"sqlite:///{tmp_path}/s.db")


def test_postgresql(pg_url: str) -> None:
    _roundtrip(pg_url)
