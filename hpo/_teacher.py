"""The study's teacher: fine-tuned once, published as an artifact, reused by every trial and worker."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import optuna

from hpo._config import Config, config_to_dict
from objectives import Workload, finetune_teacher
from storage import ArtifactDir

log = logging.getLogger("hpo")

TEACHER_ATTR = "teacher"
"""Study user attribute with the teacher's artifact path and validation metrics."""


def teacher_key(config: Config) -> str:
    """Artifact name of the teacher: changes whenever anything that shapes its weights changes."""
    recipe = {
        "teacher": config_to_dict(config)["teacher"],
        "data": config_to_dict(config)["data"],
        "seed": config.seed,
    }
    return "teacher-" + hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]


def ensure_teacher(config: Config, work: Workload, artifacts: ArtifactDir, study: optuna.Study) -> tuple[Path, dict]:
    """Path and metrics of the study's fine-tuned teacher, training it first if no worker has yet.

    Workers that arrive while another trains it wait on the artifact lock, then load the published result.
    """
    name = teacher_key(config)
    with artifacts.lock(name):
        if not artifacts.exists(name):
            log.info(
                "fine-tuning the teacher %s (%d steps), once for this study",
                config.teacher.model,
                config.teacher.train.max_steps,
            )
            with artifacts.staging(name) as tmp:
                metrics = finetune_teacher(work, config.teacher, config.seed, tmp)
                (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2))
    path = artifacts.entry(name)
    metrics = json.loads((path / "metrics.json").read_text())
    if TEACHER_ATTR not in study.user_attrs:
        study.set_user_attr(TEACHER_ATTR, {"path": str(path), "model": config.teacher.model, **metrics})
    return path, metrics
