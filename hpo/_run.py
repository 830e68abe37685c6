"""``hpo run``: one process that creates or loads the study, prepares the teacher once, and runs trials."""

from __future__ import annotations

import logging
import os

import optuna
import torch

from hpo._config import Config
from hpo._runner import TrialRunner, budget_left, describe, run_trials
from hpo._study import open_study
from hpo._table import results_table, state_counts
from hpo._teacher import ensure_teacher
from objectives import prepare_workload
from storage import ArtifactDir, create_storage, redact_url

log = logging.getLogger("hpo")


def resolve_device(name: str) -> torch.device:
    """``auto`` is the first CUDA device when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def run(config: Config, storage_url: str, threads: int | None = None) -> str:
    """Run the study's remaining trial budget in this process and return the results table."""
    # A fixed thread count keeps latency measurements comparable between trials.
    torch.set_num_threads(threads or os.cpu_count() or 1)
    device = resolve_device(config.device)
    log.info("study %r on %s, device %s", config.name, redact_url(storage_url), device)
    study = open_study(config, create_storage(storage_url))
    left = budget_left(study, config.n_trials)
    work = prepare_workload(config.data, config.teacher.model, device)
    log.info(
        "data %s: %d train / %d validation rows (test split of %d rows held out)",
        config.data.name,
        len(work.train),
        len(work.validation),
        len(work.task.test_idx),
    )
    teacher_dir, teacher = ensure_teacher(config, work, ArtifactDir(config.artifacts_dir, config.name), study)
    log.info("teacher: validation accuracy %.4f, f1 %.4f, %s", teacher["accuracy"], teacher["f1"], teacher_dir)
    runner = TrialRunner(config, work, teacher_dir)
    budget = config.n_trials

    def progress(trial: optuna.trial.FrozenTrial) -> None:
        done = budget and budget - (budget_left(study, budget) or 0)
        log.info("[%s/%s] %s", done, budget or "-", describe(trial, config.metric_names))

    if left == 0:
        log.info("study budget of %d trials already spent; showing results", budget)
    run_trials(study, runner, config.n_trials, config.timeout, progress)
    return f"study {config.name!r}: {state_counts(study)}\n\n{results_table(study)}"
