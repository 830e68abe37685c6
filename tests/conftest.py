"""Shared fixtures: offline mode, the real PostgreSQL URL, and a tiny study config for end-to-end runs."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def _database_url(variable: str) -> str:
    """A real database of the test machine named by ``variable``; CI always sets it, so these tests run there."""
    url = os.environ.get(variable)
    if not url:
        if os.environ.get("CI"):
            pytest.fail(f"{variable} must be set in CI")
        pytest.skip(f"{variable} is not set")
    return url


@pytest.fixture
def pg_url() -> str:
    """The real PostgreSQL (``HPO_TEST_PG_URL``)."""
    return _database_url("HPO_TEST_PG_URL")


@pytest.fixture
def mysql_url() -> str:
    """The real MariaDB (``HPO_TEST_MYSQL_URL``)."""
    return _database_url("HPO_TEST_MYSQL_URL")


def tiny_config(name: str, **overrides: object) -> dict:
    """A study that trains real MiniLM models for a handful of steps on a small slice of rt-snippets."""
    config = {
        "name": name,
        "objective": "distill",
        "n_trials": 2,
        "seed": 0,
        "sampler": {"name": "random"},
        "pruner": {"name": "none"},
        "data": {"name": "rt-snippets", "max_train_rows": 96, "max_val_rows": 48, "max_length": 32},
        "teacher": {"train": {"max_steps": 4, "batch_size": 16, "eval_every": 4}},
        "student": {"num_layers": 2},
        "train": {"max_steps": 4, "batch_size": 16, "eval_every": 2},
        "search_space": {
            "distill.temperature": {"type": "float", "low": 1.0, "high": 4.0},
            "student.num_layers": {"type": "int", "low": 1, "high": 2},
        },
    }
    config.update(overrides)
    return config
