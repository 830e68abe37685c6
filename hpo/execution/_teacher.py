"""The study's teacher: fine-tuned once, published as an artifact, reused by every trial and worker."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import torch

from hpo.study import TEACHER_ATTR, Config, config_to_dict, teacher_warning
from objectives import (
    HeadInputs,
    read_logits,
    teacher_logits,
    weights_hash,
)
from storage import ArtifactDir, Leases

log = logging.getLogger("hpo")


def teacher_key(config: Config, work: Any) -> str:
    """Artifact name of the teacher: changes whenever anything that shapes its weights changes: its config, the data
    config and content (the rows and splits: ``Task.fingerprint``), the base model's weights and the seed."""
    recipe = {
        "teacher": config_to_dict(config)["teacher"],
        "data": config_to_dict(config)["data"],
        "data_fingerprint": work.fingerprint,
        "base_model": config.task_spec.implementation().model_identity(config.teacher.model),
        "seed": config.seed,
    }
    return "teacher-" + hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]


def study_leases(config: Config, study: optuna.Study) -> Leases:
    """The leases of the study's database, as long-lived as its trials' heartbeats: renewed every
    ``worker.heartbeat_interval`` seconds, taken over ``worker.grace_period`` seconds after its holder died."""
    return Leases(study._storage, ttl=config.worker.grace_period, renew_every=config.worker.heartbeat_interval)


def ensure_teacher(
    config: Config, work: Any, artifacts: ArtifactDir, study: optuna.Study, leases: Leases
) -> tuple[Path, dict]:
    """Path and metrics of the study's fine-tuned teacher, training it first if no worker has yet.

    One worker trains it under a lease in the study's database (:meth:`storage.ArtifactDir.produce`); workers that
    arrive meanwhile wait, then load the published result (downloaded into this node's cache from a remote store).
    The study records the teacher's ``entry`` in its store, which ``hpo export`` passes on to ``hpo train``.
    """
    name = teacher_key(config, work)

    def train(tmp: Path) -> None:
        steps = config.teacher.train.max_steps
        if steps:
            log.info("fine-tuning the teacher %s (%d steps), once for this study", config.teacher.model, steps)
        else:
            log.info("scoring the teacher %s as it is (teacher.train.max_steps: 0)", config.teacher.model)
        metrics = config.task_spec.implementation().finetune_teacher(work, config.teacher, config.seed, tmp)
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2))

    artifacts.produce(name, train, leases)  # leaves this node a local copy, whoever wrote it
    path = artifacts.entry(name)
    metrics = json.loads((path / "metrics.json").read_text())
    warning = teacher_warning(metrics)
    if warning:
        log.warning("%s", warning)
    if TEACHER_ATTR not in study.user_attrs:
        record = {"entry": name, "path": str(path), "model": config.teacher.model}
        study.set_user_attr(TEACHER_ATTR, {**record, **metrics})
    return path, metrics


class LogitCache:
    """The teacher's logits over a data set, computed once per (teacher weights, token ids) and shared by every
    trial and worker through the study's artifact directory.

    The key hashes the teacher's weight file and the exact token ids (so the tokenizer, ``max_length`` and the data
    are all in it) and the stored format. A classifier's logits are stored whole; a causal LM's as the inputs of its
    LM head plus the head (:class:`objectives.HeadInputs`), from which each batch's exact logits are recomputed, so
    cached and live trials see the same teacher distribution at every temperature. The first process to need an
    entry computes it under a lease in the study's database and publishes it atomically; the others wait, then read
    it; a half-written entry is never published.
    """

    FORMAT = "head-inputs-1"
    """In every key, so an entry of an older format (such as the top-k logits of earlier versions) is never read."""

    def __init__(self, artifacts: ArtifactDir, teacher_dir: Path, leases: Leases, batch_size: int = 128) -> None:
        self.artifacts = artifacts
        self.leases = leases
        self.batch_size = batch_size
        self.teacher_hash = weights_hash(teacher_dir)
        self.computed = 0
        self.compute_logits: Callable[[torch.nn.Module, Any, int], torch.Tensor | HeadInputs] = teacher_logits
        """How an entry's logits are computed (a trial on several devices computes them across its ranks)."""
        self._memory: dict[str, torch.Tensor | HeadInputs] = {}

    def entry(self, name: str, data: Any) -> str:
        """Artifact name of the logits of ``data`` (called ``name``, e.g. ``train``)."""
        key = hashlib.sha256(f"{self.teacher_hash}:{data.fingerprint()}:{self.FORMAT}".encode()).hexdigest()[:16]
        return f"logits-{name}-{key}.pt"

    def __call__(self, name: str, data: Any, teacher: torch.nn.Module) -> torch.Tensor | HeadInputs:
        entry = self.entry(name, data)
        if entry not in self._memory:

            def compute(tmp: Path) -> None:
                log.info("computing the teacher's logits on %d %s examples, once for this study", len(data), name)
                logits = self.compute_logits(teacher, data, self.batch_size)  # logs its device / host-copy split
                start = time.perf_counter()
                torch.save(logits if isinstance(logits, torch.Tensor) else logits.state(), tmp)
                log.info(
                    "teacher cache written in %.2f s (%.1f MB)", time.perf_counter() - start, tmp.stat().st_size / 2**20
                )

            self.computed += self.artifacts.produce(entry, compute, self.leases)
            # never unpickled; memory-mapped, so a large LM cache is paged in as trials read it
            self._memory[entry] = read_logits(self.artifacts.fetch(entry))
        return self._memory[entry]
