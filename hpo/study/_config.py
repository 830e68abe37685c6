"""The study config: typed dataclasses loaded from YAML, validated before any worker starts.

Every error is one line that names the key and the fix, e.g. ``train.lr: must be > 0, got -1.0``. Unknown keys are
errors (with a suggestion), never silently dropped. ``dump_config`` writes YAML that ``load_config`` reads back.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from hpo.study._constraints import Constraint, parse_constraint
from hpo.study._search_space import ParamSpec
from objectives import (
    TASKS,
    ConfigError,
    DataArgs,
    DistillArgs,
    StudentArgs,
    SyntheticArgs,
    TaskSpec,
    TeacherArgs,
    TrainArgs,
    check_layer_terms,
    check_quantize_device,
    direction,
    get_task,
)
from storage import store_protocol

SEARCHABLE_SECTIONS = ("train", "distill", "student")
"""Config sections whose fields a search space may vary per trial (data and teacher are fixed per study)."""

OBJECTIVES = ("finetune", "distill", "synthetic")
"""What a trial does: fine-tune the student on labels, distil it from the study's teacher, or evaluate the fast
analytic ``synthetic`` function (for testing orchestration)."""

OBJECTIVE_IGNORES: dict[str, dict[str, str]] = {
    "finetune": {"distill": "its students learn from labels, without a teacher; remove it or use objective: distill"},
}
"""Config keys (dotted, or a whole section) an objective has no use for, each with why and the fix; refused like a
task's :attr:`objectives.TaskSpec.ignores`."""

RUN_CONTROL = ("n_trials", "timeout", "storage", "device", "priority", "max_parallel")
"""Fields that may differ between runs of the same study (they do not change what a trial computes)."""

STUDY_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}")
"""A study name: 1-128 letters, digits, ``.``, ``_`` or ``-``, not starting with a dot (it names a directory)."""

MAX_CONFIG_VALUES = 100_000
"""A loaded config holds at most this many values (mappings, lists and scalars), counted after YAML aliases are
expanded: a few lines of aliases can stand for billions of values."""


@dataclass
class SamplerArgs:
    """Which Optuna sampler proposes parameters."""

    name: str = "tpe"
    """grid, random, tpe, gp, nsga2, cmaes or qmc."""
    options: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments of the sampler's constructor, e.g. {n_startup_trials: 5}."""


@dataclass
class PrunerArgs:
    """Which Optuna pruner stops unpromising trials early (single-objective studies)."""

    name: str = "median"
    """none, median, percentile, sha, hyperband, patient or threshold (single-objective); pareto or none
    (multi-objective)."""
    options: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments of the pruner's constructor, e.g. {n_warmup_steps: 25}."""


@dataclass
class WorkerArgs:
    """How workers detect each other's crashes and retry."""

    heartbeat_interval: int = 10
    """Seconds between heartbeats of a running trial."""
    grace_period: int = 60
    """A running trial without a heartbeat for this long is stale: marked FAIL and retried."""
    max_retries: int = 3
    """Times a trial that failed through no fault of its parameters (its worker crashed or lost the database) is
    re-run with the same parameters. A trial stopped by SIGTERM (preemption, a rolling update) is re-run however
    often it is stopped: stops do not count."""
    storage_retries: int = 8
    """Attempts (with exponential backoff, 0.5 s doubling to 30 s) when the database is unreachable."""
    max_consecutive_failures: int = 10
    """A worker stops (exit 1, naming the last failure) after this many failed trials in a row: a broken config
    or environment, not bad luck."""

    def __post_init__(self) -> None:
        if self.heartbeat_interval < 1:
            raise ConfigError("heartbeat_interval", f"must be >= 1 second, got {self.heartbeat_interval}")
        if self.grace_period <= self.heartbeat_interval:
            raise ConfigError(
                "grace_period", f"must exceed heartbeat_interval ({self.heartbeat_interval}), got {self.grace_period}"
            )
        if self.max_retries < 0:
            raise ConfigError("max_retries", f"must be >= 0, got {self.max_retries}")
        if self.storage_retries < 1:
            raise ConfigError("storage_retries", f"must be >= 1, got {self.storage_retries}")
        if self.max_consecutive_failures < 1:
            raise ConfigError("max_consecutive_failures", f"must be >= 1, got {self.max_consecutive_failures}")


HARDWARE_METRICS = frozenset(
    {"latency_ms", "latency_ms_p95", "prefill_ms", "throughput", "speedup", "train_seconds", "peak_memory_mb"}
)
"""Metrics measured on the hardware, whose values differ between a CPU and a GPU (``params``, ``size_mb``,
``gflops`` and the scores do not)."""


@dataclass
class Config:
    """A study: what each trial trains, what it is scored on, and how the search proceeds."""

    name: str = ""
    """Study name, unique within the storage."""
    task: str = "classification"
    """What the models do: ``classification`` (sentences into classes) or ``causal-lm`` (next-token language
    models: perplexity and per-token latency). ``causal-lm`` changes the defaults of ``directions`` (perplexity),
    ``data.name`` (wikitext-2) and ``teacher.model`` (smollm2-135m, used as it is: ``teacher.train.max_steps: 0``)."""
    objective: Literal["finetune", "distill", "synthetic"] = "distill"
    """``distill``: students learn from the study's fine-tuned teacher; ``finetune``: students learn from labels;
    ``synthetic``: a fast analytic function of the parameters, for testing orchestration."""
    directions: dict[str, str] = field(default_factory=lambda: {"accuracy": "maximize"})
    """Study objectives: metric name -> maximize/minimize, in order. Several make a multi-objective study."""
    pruning_metric: str | None = None
    """Validation score a trial reports at each validation for pruning: one of the task's validation metrics
    (``accuracy``, ``f1``, ``val_loss``; ``perplexity``, ``token_accuracy``, ``val_loss`` for ``causal-lm``); null
    is the study's quality objective (the first objective that is one of these; else the task's first)."""
    n_trials: int | None = 10
    """Trial budget of the study: trials that end COMPLETE or PRUNED; null runs until ``timeout``."""
    timeout: float | None = None
    """Time budget of the study in seconds: no worker starts a trial once this long has passed since the study's
    first trial started (the earliest start time stored in the study, by the workers' clocks); running trials
    finish. Null for no limit. Like ``n_trials`` it is kept with the study and the latest ``hpo create`` /
    ``hpo run`` sets it: raise it to extend a study whose time is up."""
    priority: int = 0
    """Pool workers (``hpo worker`` without ``--study``) start the next trial from the study of highest priority
    that has budget left; equal priorities share workers (fewest running trials first)."""
    max_parallel: int | None = None
    """Running trials of this study at most, across every worker; null for no limit."""
    seed: int = 0
    """Study seed: each trial's seed derives from it and the trial number; also seeds the sampler."""
    storage: str | None = None
    """Storage URL; overridden by --storage and HPO_STORAGE; default sqlite:///hpo.db."""
    artifacts_dir: str = "hpo-artifacts"
    """Where the study's artifacts live (the fine-tuned teacher, its logits): a folder (a shared filesystem when
    workers span nodes), or an object-store URL every node reaches (``s3://bucket/prefix``, ``gs://...``, any fsspec
    protocol), read through a per-node cache. A relative path is made absolute (from the creator's working
    directory) when the study is created; a worker that sees the same store under another path passes
    ``hpo worker --artifacts PATH`` (or ``HPO_ARTIFACTS_DIR``)."""
    artifacts_options: dict[str, Any] = field(default_factory=dict)
    """Options of an object-store ``artifacts_dir``, passed to its fsspec filesystem, e.g. ``{endpoint_url:
    http://minio:9000}`` for an S3-compatible server. Stored with the study, so no credentials: those come from the
    environment (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``), ``~/.aws`` or the node's role."""
    device: str = "auto"
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N``: where trials run, in every worker (kept with the study). ``auto`` is
    CUDA when there is one in ``hpo run``; in ``hpo worker`` the slot's GPU when pinned with ``--gpus``, else the
    CPU. ``hpo worker --gpus`` pins each slot to its GPU whatever the device. Each trial records where it ran
    (``device``, ``gpu``)."""
    mix_hardware: bool = False
    """Allow workers on CPUs and on GPUs in one study whose objectives or constraints depend on the hardware
    (:data:`HARDWARE_METRICS`). By default the first worker's kind of device is the study's and a worker of the
    other kind refuses it: its latencies would share one Pareto front with the others'."""
    sampler: SamplerArgs = field(default_factory=SamplerArgs)
    """The sampler; see :class:`SamplerArgs`."""
    pruner: PrunerArgs = field(default_factory=PrunerArgs)
    """The pruner; see :class:`PrunerArgs`."""
    data: DataArgs = field(default_factory=DataArgs)
    """The labelled data and its fixed splits."""
    teacher: TeacherArgs = field(default_factory=TeacherArgs)
    """The base model and how it is fine-tuned into the teacher once per study."""
    student: StudentArgs = field(default_factory=StudentArgs)
    """The student architecture (defaults of searchable fields)."""
    train: TrainArgs = field(default_factory=TrainArgs)
    """How each trial trains its student (defaults of searchable fields)."""
    distill: DistillArgs = field(default_factory=DistillArgs)
    """Distillation loss settings (defaults of searchable fields)."""
    constraints: dict[str, str] = field(default_factory=dict)
    """Feasibility bounds on metrics, e.g. ``{latency_ms: "<= 5", size_mb: "<= 40"}``; recorded with
    ``Trial.set_constraint`` so TPE, NSGA-II and GP prefer feasible trials; infeasible ones are kept and marked."""
    synthetic: SyntheticArgs = field(default_factory=SyntheticArgs)
    """Behaviour of the ``synthetic`` objective (ignored by the others)."""
    worker: WorkerArgs = field(default_factory=WorkerArgs)
    """Heartbeats, retries and database reconnection of workers."""
    search_space: dict[str, ParamSpec] = field(default_factory=dict)
    """Parameters searched per trial, by dotted path, e.g. ``distill.temperature: {type: float, low: 1, high: 8}``."""

    def __post_init__(self) -> None:
        if not self.name:
            raise ConfigError("name", "is required: the study name, e.g. name: movie-distill")
        if not STUDY_NAME.fullmatch(self.name):
            raise ConfigError(
                "name", f"must be 1-128 letters, digits, '.', '_' or '-', not starting with '.', got {self.name!r}"
            )
        if not 0 <= self.seed < 2**32:
            raise ConfigError("seed", f"must be in [0, 2**32), got {self.seed}")
        spec = self.task_spec
        if self.objective not in OBJECTIVES:
            raise ConfigError("objective", f"must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        if self.objective == "synthetic" and self.task != "classification":
            raise ConfigError("objective", "synthetic stands in for a classifier; use it with task: classification")
        if self.train.devices > 1 and self.objective == "synthetic":
            raise ConfigError("train.devices", "the synthetic objective trains nothing to spread; remove it")
        if self.train.devices > 1:  # not shown with a sharded model yet: refused, not run half-tested
            for key in ("student.adapter", "student.quantize"):
                if any(v != "none" for v in _values(self, key)):
                    raise ConfigError(key, "is not supported with train.devices > 1 yet; set train.devices: 1 or none")
        if self.train.max_steps < 1:
            raise ConfigError("train.max_steps", f"must be >= 1 (a trial trains), got {self.train.max_steps}")
        if not self.directions:
            raise ConfigError(
                "directions", f"needs at least one metric, e.g. {{{spec.quality}: {direction(spec.quality)}}}"
            )
        valid = (*spec.metrics, "val_loss")
        for metric, way in self.directions.items():
            if metric not in valid:
                raise ConfigError(f"directions.{metric}", get_task(self.task).unknown_metric(metric, valid))
            if way not in ("maximize", "minimize"):
                raise ConfigError(f"directions.{metric}", f"must be maximize or minimize, got {way!r}")
        if self.pruning_metric is not None and self.pruning_metric not in spec.validation_metrics:
            raise ConfigError(
                "pruning_metric",
                f"must be one of {', '.join(spec.validation_metrics)} or null, got {self.pruning_metric!r}",
            )
        if self.n_trials is not None and self.n_trials < 1:
            raise ConfigError("n_trials", f"must be >= 1 or null, got {self.n_trials}")
        if self.n_trials is None and self.timeout is None:
            raise ConfigError("n_trials", "is null and so is timeout: set one so the study ends")
        if self.max_parallel is not None and self.max_parallel < 1:
            raise ConfigError("max_parallel", f"must be >= 1 or null (no limit), got {self.max_parallel}")
        if self.timeout is not None and self.timeout <= 0:
            raise ConfigError("timeout", f"must be > 0 seconds or null, got {self.timeout}")
        _check_device(self.device)
        if not isinstance(self.mix_hardware, bool):
            raise ConfigError("mix_hardware", f"must be true or false, got {self.mix_hardware!r}")
        if self.mix_hardware and not self.hardware_metrics:
            raise ConfigError(
                "mix_hardware",
                "does nothing: no objective or constraint of the study depends on the hardware; remove it",
            )
        _check_artifacts(self.artifacts_dir, self.artifacts_options)
        _check_student_model(self)
        _check_adapter(self)
        _check_quantize(self.device, self.student, self.search_space.get("student.quantize"))
        _check_qat(self.train, self.student, self.search_space)
        _check_teacher_strategy(self)
        for name, param in self.search_space.items():
            _check_searchable(self, name, param)
        check_used(self, self.task_spec, self.objective, self.search_space)
        self.parsed_constraints()

    @property
    def task_spec(self) -> TaskSpec:
        return get_task(self.task).for_format(self.data.format)

    def parsed_constraints(self) -> list[Constraint]:
        """The ``constraints`` as :class:`Constraint` objects."""
        metrics = self.task_spec.metrics
        return [
            parse_constraint(expr, f"constraints.{metric}", metric, metrics)
            for metric, expr in self.constraints.items()
        ]

    @property
    def hardware_metrics(self) -> list[str]:
        """The objectives and constrained metrics whose values depend on the hardware a trial ran on."""
        return [m for m in dict.fromkeys([*self.directions, *self.constraints]) if m in HARDWARE_METRICS]

    @property
    def metric_names(self) -> list[str]:
        return list(self.directions)

    @property
    def is_multi_objective(self) -> bool:
        return len(self.directions) > 1

    @property
    def pruning(self) -> tuple[str, str]:
        """(metric, direction) of the validation score reported for pruning (see ``pruning_metric``)."""
        spec = self.task_spec
        quality = [m for m in self.directions if m in spec.validation_metrics]
        metric = self.pruning_metric or (quality[0] if quality else spec.quality)
        return metric, direction(metric)


@dataclass
class SourceArgs:
    """Where an exported configuration came from."""

    study: str = ""
    """Study name."""
    trial: int | None = None
    """Trial number in that study."""
    params: dict[str, Any] = field(default_factory=dict)
    """The trial's searched parameters (already applied to the sections of the job)."""
    metrics: dict[str, Any] = field(default_factory=dict)
    """The trial's validation metrics."""


@dataclass
class TrainJob:
    """A full training run: ``hpo export`` writes it from a trial, ``hpo train`` runs it.

    Besides the chosen student it trains the same student without the teacher (same initial weights, KD off) and
    from the pretrained base, and evaluates them and the teacher on the held-out test split for the model card.
    """

    name: str = ""
    """Name of the trained model (used in the model card)."""
    task: str = "classification"
    """``classification`` or ``causal-lm`` (see the study config's ``task``)."""
    objective: Literal["finetune", "distill"] = "distill"
    """How the student learns: from the teacher (``distill``) or from labels only (``finetune``)."""
    seed: int = 0
    """Seed of the run (the source trial's seed, so full training starts where the trial did)."""
    device: str = "auto"
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N``."""
    teacher_path: str | None = None
    """A fine-tuned teacher in a local model directory (a hand-written job); fine-tuned again from ``teacher`` when
    missing. ``hpo export`` names the study's teacher in its store instead (``artifacts_dir``, ``teacher_entry``)."""
    artifacts_dir: str | None = None
    """The artifact store of the source study (its ``artifacts_dir``: a folder or an object-store URL), which holds
    the teacher ``teacher_entry``; ``hpo train --artifacts PATH`` reaches it under another path."""
    artifacts_options: dict[str, Any] = field(default_factory=dict)
    """fsspec options of an object-store ``artifacts_dir`` (the study's ``artifacts_options``)."""
    teacher_entry: str | None = None
    """The study's teacher in ``artifacts_dir`` (an entry under the folder of ``source.study``): ``hpo train``
    downloads it into this node's cache and distils from it, never fine-tuning another."""
    data: DataArgs = field(default_factory=DataArgs)
    """The data and its fixed splits (the same split seed as the study)."""
    teacher: TeacherArgs = field(default_factory=TeacherArgs)
    """The base model and how it was fine-tuned into the teacher."""
    student: StudentArgs = field(default_factory=StudentArgs)
    """The student architecture."""
    train: TrainArgs = field(default_factory=TrainArgs)
    """Full-training settings: more steps, early stopping on validation loss, best checkpoint kept."""
    distill: DistillArgs = field(default_factory=DistillArgs)
    """Distillation settings."""
    source: SourceArgs = field(default_factory=SourceArgs)
    """The study and trial this job was exported from."""

    def __post_init__(self) -> None:
        if not self.name:
            raise ConfigError("name", "is required: the model's name, e.g. name: movie-student")
        get_task(self.task)
        if self.objective not in ("finetune", "distill"):
            raise ConfigError("objective", f"must be finetune or distill, got {self.objective!r}")
        _check_device(self.device)
        _check_quantize(self.device, self.student)
        _check_qat(self.train, self.student)
        if (self.artifacts_dir is None) != (self.teacher_entry is None):
            raise ConfigError(
                "teacher_entry", "and artifacts_dir name the study's teacher together: give both, or neither"
            )
        if self.artifacts_dir is None and self.artifacts_options:
            raise ConfigError("artifacts_options", "are for the store artifacts_dir names; set it or remove them")
        if self.artifacts_dir is not None:
            _check_artifacts(self.artifacts_dir, self.artifacts_options)
            if not self.source.study:
                raise ConfigError("source.study", "is required with teacher_entry: the store keeps it under the study")
        check_used(self, self.task_spec, self.objective)

    @property
    def task_spec(self) -> TaskSpec:
        return get_task(self.task).for_format(self.data.format)


def check_loaded(data: Any, key: str = "", limit: int = MAX_CONFIG_VALUES) -> None:
    """Refuse a parsed document with more than ``limit`` values (YAML alias bombs) or a non-finite number, naming
    the dotted key. Stops counting at the limit, so an alias bomb costs no more than ``limit`` steps."""
    seen = 0
    stack = [(key, data)]
    while stack:
        where, value = stack.pop()
        seen += 1
        if seen > limit:
            raise ConfigError("CONFIG", f"holds more than {limit:,} values (YAML aliases expanded); it is not a config")
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(where or "CONFIG", f"must be a finite number, got {value}")
        if isinstance(value, dict):
            stack += [(f"{where}.{k}" if where else str(k), v) for k, v in value.items()]
        elif isinstance(value, list):
            stack += [(f"{where}[{i}]", v) for i, v in enumerate(value)]


def load_job(path: str | Path) -> TrainJob:
    """Read and validate a full-training YAML file (as written by ``hpo export``)."""
    data = _read_yaml(path)
    check_loaded(data)
    return build(TrainJob, with_task_defaults(data, TrainJob))


def dump_job(job: TrainJob) -> str:
    """``job`` as YAML that :func:`load_job` reads back to an equal job, without the keys its task and objective
    have no use for (:func:`ignored_keys`)."""
    data = dataclasses.asdict(job)
    for key in ignored_keys(job.task_spec, job.objective):
        *sections, last = key.split(".")
        inner = data
        for section in sections:
            inner = inner[section]
        del inner[last]
    return yaml.safe_dump(data, sort_keys=False)


def ignored_keys(spec: TaskSpec, objective: str) -> dict[str, str]:
    """Keys (dotted, or whole sections) a study or job of task ``spec`` and ``objective`` has no use for, with why
    and the fix."""
    return {**spec.ignores, **OBJECTIVE_IGNORES.get(objective, {})}


def check_used(
    config: Config | TrainJob, spec: TaskSpec, objective: str, search_space: typing.Iterable[str] = ()
) -> None:
    """Refuse a key of :func:`ignored_keys` that ``config`` sets to another value than its default (the task's
    default where it has one), or that ``search_space`` names: it would be accepted and then do nothing."""
    for key, why in ignored_keys(spec, objective).items():
        what = spec.name if key in spec.ignores else objective
        searched = [name for name in search_space if name == key or name.startswith(f"{key}.")]
        if searched:
            raise ConfigError(f"search_space.{searched[0]}", f"does nothing in a {what} study: {why}")
        section, *path = key.split(".")
        given = getattr(config, section)
        default = build(type(given), spec.defaults.get(section), section)
        for part in path:
            given, default = getattr(given, part), getattr(default, part)
        changed = _changed(given, default, key)
        if changed:
            raise ConfigError(changed[0], f"does nothing in a {what} study: {why}")


def _changed(value: Any, default: Any, key: str) -> list[str]:
    """Dotted keys under ``key`` where ``value`` differs from ``default`` (fields of dataclasses, in order)."""
    if dataclasses.is_dataclass(value):
        return [
            name
            for f in dataclasses.fields(value)
            for name in _changed(getattr(value, f.name), getattr(default, f.name), f"{key}.{f.name}")
        ]
    return [] if value == default else [key]


def _check_device(device: str) -> None:
    if device not in ("auto", "cpu") and not device.startswith("cuda"):
        raise ConfigError("device", f"must be auto, cpu, cuda or cuda:N, got {device!r}")


_CREDENTIAL = re.compile(r"secret|passw|token|credential|(^|_)key(_id)?$", re.IGNORECASE)
"""Option names that hold credentials (s3fs's ``key``, ``secret``, ``token``; botocore's ``aws_secret_access_key``)."""


def _check_artifacts(root: str, options: dict[str, Any]) -> None:
    """An ``artifacts_dir`` that is a folder or a URL of a protocol fsspec knows; ``artifacts_options`` only for a
    URL, and without credentials (they would be stored in the study's database)."""
    if not root:
        raise ConfigError("artifacts_dir", "must name a folder or an object-store URL, e.g. s3://bucket/hpo")
    protocol = store_protocol(root)
    if protocol is not None:
        from fsspec.registry import known_implementations, registry

        if protocol not in known_implementations and protocol not in registry:
            raise ConfigError(
                "artifacts_dir",
                f"unknown storage protocol {protocol!r}; use a folder or an fsspec URL such as s3://bucket/prefix",
            )
    elif options:
        raise ConfigError(
            "artifacts_options", "are for an object-store artifacts_dir (s3://...); remove them for a folder"
        )
    stack = [("artifacts_options", options)]
    while stack:
        where, value = stack.pop()
        for key, inner in value.items():
            if _CREDENTIAL.search(str(key)):
                raise ConfigError(
                    f"{where}.{key}",
                    "is a credential, which would be stored in the study's database; give it through the environment "
                    "(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY), ~/.aws/credentials or the node's role instead",
                )
            if isinstance(inner, dict):
                stack.append((f"{where}.{key}", inner))


def _check_quantize(device: str, student: StudentArgs, searched: ParamSpec | None = None) -> None:
    """Refuse a ``student.quantize`` setting (given, or a searched choice) that ``device`` cannot run, where the
    device is known (``auto`` is checked when a trial starts, on the device it resolved to)."""
    if device == "auto":
        return
    kind = "cpu" if device == "cpu" else "cuda"
    check_quantize_device(student.quantize, kind)
    for value in searched.bounds() if searched is not None else []:
        check_quantize_device(value, kind, "search_space.student.quantize")


def _check_qat(train: TrainArgs, student: StudentArgs, search_space: dict[str, ParamSpec] | None = None) -> None:
    """Refuse quantization-aware training (``train.qat_fraction`` above 0, or searched) where no trial quantizes:
    ``student.quantize`` none and not searched to another choice."""
    space = search_space or {}
    if train.qat_fraction == 0 and "train.qat_fraction" not in space:
        return
    searched = space.get("student.quantize")
    choices = searched.bounds() if searched is not None else [student.quantize]
    if all(choice == "none" for choice in choices):
        key = "train.qat_fraction" if "train.qat_fraction" not in space else "search_space.train.qat_fraction"
        raise ConfigError(
            key,
            "fake-quantizes the weights as student.quantize will quantize them, and it is none: set student.quantize "
            "(e.g. int8) or remove the key",
        )


def _values(config: Config, key: str) -> list[Any]:
    """The values ``key`` (``section.field``) takes in the study's trials: its searched bounds, or its one value."""
    spec = config.search_space.get(key)
    section, name = key.split(".")
    return spec.bounds() if spec is not None else [getattr(getattr(config, section), name)]


def _live_teacher(config: Config) -> bool:
    """Whether a trial of the study (at a bound of its search space) runs the teacher live: a distillation with a
    layer term (``distill.hidden_weight``, ``attention_weight``), on-policy batches (``distill.on_policy``), or no
    logit cache (``distill.cache_teacher_logits: false``) with a KD term (``alpha`` > 0, or the sequential
    approach's KD stage)."""
    if config.objective != "distill":
        return False
    terms = ("distill.hidden_weight", "distill.attention_weight", "distill.on_policy")
    if any(value > 0 for key in terms for value in _values(config, key)):
        return True
    uncached = not all(_values(config, "distill.cache_teacher_logits"))
    kd = "sequential" in _values(config, "distill.approach") or max(_values(config, "distill.alpha")) > 0
    return uncached and kd


def _check_teacher_strategy(config: Config) -> None:
    """``teacher.strategy: fsdp`` only where it does something: a trial on several devices (``train.devices`` > 1)
    that runs the teacher live (:func:`_live_teacher`); and no ``speedup`` to optimise or constrain, which times the
    teacher on one device, where no sharded teacher is."""
    if config.teacher.strategy == "replicate":
        return
    if config.train.devices == 1:
        raise ConfigError(
            "teacher.strategy",
            "fsdp shards the teacher across train.devices, which is 1, so it would do nothing: set train.devices "
            "(e.g. 2) or teacher.strategy: replicate",
        )
    if not _live_teacher(config):
        raise ConfigError(
            "teacher.strategy",
            "fsdp shards the live teacher, and no trial of this study runs one (they learn from labels or cached logits), so it "
            "would do nothing: set teacher.strategy: replicate, or a distill.attention_weight / hidden_weight / "
            "on_policy above 0",
        )
    for section in ("directions", "constraints"):
        if "speedup" in getattr(config, section):
            raise ConfigError(
                f"{section}.speedup",
                "times the teacher on one device, and teacher.strategy: fsdp shards it across train.devices: use "
                "latency_ms (the student's own), or teacher.strategy: replicate",
            )


def _check_student_model(config: Config) -> None:
    """A student of another architecture (``student.model``): a classifier with its own tokenizer, or a causal LM
    sharing the teacher's vocabulary (checked when its tokenizer loads); the teacher's signal reaches it as logits,
    not layer by layer (:func:`objectives.check_layer_terms`)."""
    if config.objective == "distill":
        check_layer_terms(config.student, config.distill)


LORA_KEYS = ("student.lora_r", "student.lora_alpha", "student.lora_dropout", "student.target_modules")
"""The student's LoRA fields, which only ``student.adapter: lora`` (or ``qlora``) reads."""


def _check_adapter(config: Config) -> None:
    """Refuse ``student.adapter: qlora`` (set, or a searched choice) in a study whose device is the CPU (bitsandbytes'
    4-bit layers need CUDA; with ``device: auto`` the trial refuses it when it starts on a CPU), and a searched LoRA
    field without a fixed adapter: a trial without one would ignore it."""
    space = config.search_space.get("student.adapter")
    adapters = {config.student.adapter, *(space.bounds() if space is not None else ())}
    if "qlora" in adapters and config.device == "cpu":
        raise ConfigError(
            "search_space.student.adapter" if config.student.adapter != "qlora" else "student.adapter",
            "qlora keeps the base in 4 bits through bitsandbytes, which needs a CUDA device, and this study's device is "
            "cpu: use lora, or device: cuda",
        )
    for name in LORA_KEYS:
        if name in config.search_space and (space is not None or config.student.adapter == "none"):
            raise ConfigError(
                f"search_space.{name}",
                "is read only by a LoRA adapter, and student.adapter is "
                + ("searched (a trial without one would ignore it)" if space is not None else "none")
                + ": set student.adapter: lora and do not search it",
            )


def _check_searchable(config: Config, name: str, spec: ParamSpec) -> None:
    section, _, key = name.partition(".")
    if section not in SEARCHABLE_SECTIONS or not key:
        raise ConfigError(
            f"search_space.{name}",
            f"must be a dotted path into {', '.join(SEARCHABLE_SECTIONS)}, e.g. distill.temperature",
        )
    fields = {f.name for f in dataclasses.fields(getattr(config, section))}
    if key not in fields:
        raise ConfigError(f"search_space.{name}", f"{section} has no field {key!r}{_suggest(key, fields)}")
    if section == "student" and key == "layers":
        raise ConfigError(f"search_space.{name}", "search student depth with student.num_layers (an int range)")
    if name in ("train.devices", "train.strategy"):  # one process layout for the whole study
        raise ConfigError(f"search_space.{name}", f"is fixed per study, not searched; set {name} instead")
    for value in spec.bounds():
        try:
            _check_student_model(apply_params(config, {name: value}))
        except ConfigError as exc:
            raise ConfigError(f"search_space.{name}", f"value {value!r} is invalid: {exc}") from None


def _suggest(key: str, valid: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(key, list(valid), n=1)
    return f"; did you mean {close[0]!r}?" if close else f"; valid: {', '.join(sorted(valid))}"


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Convert a YAML value to the annotated type ``hint`` or raise a ConfigError naming ``key``."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        errors = []
        for arg in options:
            try:
                return _coerce(value, arg, key)
            except ConfigError as exc:
                errors.append(exc)
        if len(errors) == 1:
            raise errors[0]
        names = ", ".join(getattr(a, "__name__", str(a)) for a in options)
        raise ConfigError(key, f"expected one of {names}, got {value!r}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(key, f"must be one of {', '.join(map(str, args))}, got {value!r}")
        return value
    if dataclasses.is_dataclass(hint):
        return build(hint, value, key)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(key, f"expected a list, got {value!r}")
        return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(key, f"expected a mapping, got {value!r}")
        return {str(k): _coerce(v, args[1], f"{key}.{k}") for k, v in value.items()}
    if hint is Any:
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(key, f"expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(key, f"must be a finite number, got {value}")
        if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value:
            raise ConfigError(key, f"expected a whole number, got {value!r}")
        return int(value)
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 reads 5e-5 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(key, f"expected a number, got {value!r}")
        try:
            value = float(value)
        except OverflowError:  # an integer beyond the float range
            raise ConfigError(key, f"must be a finite number, got an integer of {len(str(value))} digits") from None
        if not math.isfinite(value):
            raise ConfigError(key, f"must be a finite number, got {value}")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(key, f"expected a string, got {value!r}")
        return value
    raise ConfigError(key, f"unsupported type {hint}")


RETIRED_KEYS: dict[tuple[type, str], str] = {
    (DistillArgs, "cache_top_k"): (
        "is gone: the causal-LM logit cache is exact now (the teacher's LM-head inputs, every logit recomputed per "
        "batch, at every temperature); remove the key"
    ),
}
"""Keys of earlier versions, refused with what replaced them rather than as unknown."""


def build(cls: type, data: Any, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys and wrong types with the key's dotted path."""
    where = prefix or "config"
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(where, f"expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if (cls, key) in RETIRED_KEYS:
            raise ConfigError(dotted, RETIRED_KEYS[cls, key])
        if key not in fields:
            raise ConfigError(dotted, f"unknown key{_suggest(str(key), fields)}")
        kwargs[key] = _coerce(value, hints[key], dotted)
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        raise (exc.under(prefix) if prefix else exc) from None


def with_task_defaults(data: Any, cls: type) -> Any:
    """``data`` (a parsed :class:`Config` or :class:`TrainJob`, ``cls``) over the defaults of its ``task``
    (:attr:`objectives.TaskSpec.defaults`, those ``cls`` has): a key the document sets always wins; a mapping is
    merged key by key."""
    if not isinstance(data, dict) or not isinstance(data.get("task"), str) or data["task"] not in TASKS:
        return data  # no task, or an unknown one: the dataclass defaults, or the error naming ``task``

    def merge(default: Any, given: Any) -> Any:
        if isinstance(default, dict) and isinstance(given, dict):
            return {**default, **{k: merge(default.get(k), v) for k, v in given.items()}}
        return given

    fields = {f.name for f in dataclasses.fields(cls)}
    defaults = {k: copy.deepcopy(v) for k, v in TASKS[data["task"]].defaults.items() if k in fields}
    if "directions" in data:  # objectives replace the default objectives, they are not merged with them
        defaults.pop("directions", None)
    return merge(defaults, data)


def config_from_dict(data: Any) -> Config:
    """Validate a parsed YAML document into a :class:`Config`."""
    check_loaded(data)
    return build(Config, with_task_defaults(data, Config))


def load_config(path: str | Path) -> Config:
    """Read and validate a YAML config file (``yaml.safe_load``)."""
    return config_from_dict(_read_yaml(path))


def _read_yaml(path: str | Path) -> Any:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError("CONFIG", f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError("CONFIG", f"{path} is not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError("CONFIG", f"{path} is not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    return data


def config_to_dict(config: Config) -> dict[str, Any]:
    """Plain data of ``config`` (YAML-ready), in field order."""
    return dataclasses.asdict(config)


def dump_config(config: Config) -> str:
    """``config`` as YAML that :func:`load_config` reads back to an equal config."""
    return yaml.safe_dump(config_to_dict(config), sort_keys=False)


def apply_params(config: Config, params: dict[str, Any]) -> Config:
    """A copy of ``config`` with trial ``params`` (dotted paths) set; each changed section is validated again."""
    data = config_to_dict(config)
    for name, value in params.items():
        section, _, key = name.partition(".")
        data[section][key] = value
    updated = copy.copy(config)
    for section in {name.partition(".")[0] for name in params}:
        setattr(updated, section, build(type(getattr(config, section)), data[section], section))
    return updated


def config_diff(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted paths whose values differ between two config dicts."""
    out = []
    for key in sorted(set(a) | set(b), key=str):
        path = f"{prefix}.{key}" if prefix else str(key)
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += config_diff(va, vb, path)
        elif va != vb:
            out.append(f"{path}: {va!r} -> {vb!r}")
    return out
