"""Trials on several devices (``train.devices``): real ranks (spawned processes, gloo on CPU), real tiny BERTs, real
studies. A 2-rank trial (global batch 16 split 8 + 8) trains the model the 1-process trial does: validation loss at
every validation and the final scores agree within ``TOLERANCE``."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import optuna
import psutil
import pytest
import torch
import yaml

from hpo.execution import prepare_runner, trial_seed
from hpo.execution._distributed import RankFailed
from hpo.study import config_from_dict
from objectives import ConfigError, read_logits, teacher_logits
from objectives.students import load_classifier
from objectives.training._distributed import RankShard
from storage import FAIL_REASON, create_storage
from tests.conftest import sentiment_csv, tiny_config

TOLERANCE = 1e-5
"""Largest difference allowed between a 2-rank and a 1-process trial's validation loss, accuracy and F1: the ranks'
gradients are averaged in another floating-point order than one batch's."""

PARAMS = {"student.num_layers": 2}


@pytest.fixture(scope="module")
def reviews(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A small labelled CSV whose labels the tiny BERT learns within a few steps."""
    return sentiment_csv(tmp_path_factory.mktemp("data") / "reviews.csv", rows=160)


def config(data: str, devices: int = 1, strategy: str = "ddp", **overrides: Any) -> Any:
    """A finetune study of the tiny BERT on ``data`` whose one parameter has one value, validated every 2 steps on
    val_loss."""
    train = {"max_steps": 6, "lr": 1e-2, "warmup_ratio": 0.0, "batch_size": 16, "eval_every": 2, "dropout": 0.0}
    train.update(overrides.pop("train", {}))
    return config_from_dict(
        tiny_config(
            "dist",
            objective="finetune",
            n_trials=1,
            data={"name": data, "max_length": 32},
            pruning_metric="val_loss",
            train={**train, "devices": devices, "strategy": strategy},
            search_space={"student.num_layers": {"type": "int", "low": 2, "high": 2}},
            **overrides,
        )
    )


@pytest.fixture(scope="module")
def one_process(reviews: str) -> tuple[list[tuple[int, float]], dict[str, float]]:
    """The 1-process trial 0 of a study with seed 0: its validation-loss curve and final metrics."""
    single = config(reviews)
    curve: list[tuple[int, float]] = []
    metrics = prepare_runner(single, optuna.create_study()).train(
        single, PARAMS, trial_seed(0, 0), 0, lambda step, scores, final: curve.append((step, scores["val_loss"]))
    )
    return curve, metrics


def ranks_of_this_process() -> list[psutil.Process]:
    """The spawned rank processes below this one (not multiprocessing's resource tracker)."""
    ranks = []
    for process in psutil.Process().children(recursive=True):
        try:
            if "spawn_main" in " ".join(process.cmdline()):
                ranks.append(process)
        except psutil.Error:  # exited meanwhile
            pass
    return ranks


class Watch:
    """Polls this process's ranks while a trial runs: their pids and the TCP peers they connect to."""

    def __init__(self) -> None:
        self.pids: set[int] = set()
        self.peer_ports: set[int] = set()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            for process in ranks_of_this_process():
                try:
                    self.pids.add(process.pid)
                    self.peer_ports |= {c.raddr.port for c in process.net_connections("inet") if c.raddr}
                except psutil.Error:
                    pass
            time.sleep(0.2)

    def close(self) -> None:
        self.stop.set()
        self.thread.join()

    def left(self) -> list[int]:
        """Rank pids seen that still exist (not reaped)."""
        return [pid for pid in self.pids if psutil.pid_exists(pid)]


def run_trial(study: optuna.Study, cfg: Any, **optimize: Any) -> Watch:
    watch = Watch()
    try:
        study.optimize(prepare_runner(cfg, study), n_trials=1, **optimize)
    finally:
        watch.close()
    return watch


def test_each_rank_trains_its_slice_of_every_global_batch(reviews: str) -> None:
    work = prepare_runner(config(reviews), optuna.create_study()).work
    whole = work.train.train_batches(16, 7)
    shards = [RankShard(work.train, rank, 2).train_batches(16, 7) for rank in range(2)]
    for _ in range(3):
        batch, parts = next(whole), [next(s) for s in shards]
        assert [len(p["index"]) for p in parts] == [8, 8]
        for key in batch:
            assert (batch[key][:8] == parts[0][key]).all() and (batch[key][8:] == parts[1][key]).all()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"search_space": {"train.strategy": {"type": "categorical", "choices": ["ddp", "fsdp"]}}},
            "search_space.train.strategy: is fixed per study, not searched; set train.strategy instead",
        ),
        (
            {"search_space": {"train.devices": {"type": "int", "low": 1, "high": 2}}},
            "search_space.train.devices: is fixed per study",
        ),
        ({"train": {"devices": 3}}, "train.batch_size: is the global batch, split evenly across train.devices (3)"),
        ({"train": {"strategy": "deepspeed-zero3"}}, "train.strategy: deepspeed-zero3 is not available"),
        ({"teacher": {"train": {"devices": 2}}}, "teacher.train.devices: the teacher is fine-tuned on one device"),
        ({"objective": "synthetic"}, "train.devices: the synthetic objective trains nothing to spread"),
        ({"student": {"quantize": "int8"}}, "student.quantize: is not supported with train.devices > 1 yet"),
        (
            {"search_space": {"student.adapter": {"type": "categorical", "choices": ["none", "lora"]}}},
            "student.adapter: is not supported with train.devices > 1 yet",
        ),
    ],
)
def test_distributed_settings_are_checked(overrides: dict[str, Any], message: str) -> None:
    data = tiny_config("dist", train={"batch_size": 16, "devices": 2})
    for key, value in overrides.items():
        data[key] = {**data[key], **value} if key == "train" else value
    with pytest.raises(ConfigError) as error:
        config_from_dict(data)
    assert message in str(error.value)


def matching_one_process(
    study: optuna.Study, curve: list[tuple[int, float]], metrics: dict[str, float]
) -> optuna.trial.FrozenTrial:
    """The study's one trial, complete, having reported the 1-process ``curve`` of val_loss (negated: the study
    maximises) and ended with its final scores, within ``TOLERANCE``."""
    [trial] = study.trials
    assert trial.state == optuna.trial.TrialState.COMPLETE
    for step, value in curve:
        assert -trial.intermediate_values[step] == pytest.approx(value, abs=TOLERANCE)
    for key in ("val_loss", "accuracy", "f1"):
        assert trial.user_attrs[key] == pytest.approx(metrics[key], abs=TOLERANCE), key
    return trial


@pytest.mark.slow
def test_a_ddp_trial_is_one_optuna_trial_and_matches_one_process(
    one_process: tuple[list[tuple[int, float]], dict[str, float]],
    reviews: str,
    pg_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    curve, metrics = one_process
    assert curve[0][1] != pytest.approx(curve[-1][1], abs=1e-3)  # it trains: the comparison is not of a flat line
    name = f"dist-{uuid.uuid4().hex[:8]}"
    study = optuna.create_study(study_name=name, storage=create_storage(pg_url), direction="maximize")
    try:
        with caplog.at_level(logging.INFO, logger="hpo"):
            watch = run_trial(study, config(reviews, 2, "ddp"))
        trial = matching_one_process(study, curve, metrics)  # one Optuna trial for the two ranks
        assert sorted(trial.intermediate_values) == [step for step, _ in curve]
        assert trial.user_attrs["devices"] == 2 and trial.user_attrs["strategy"] == "ddp"
        assert len(trial.user_attrs["rank_peak_memory_mb"]) == 2
        # rank 1 trained the parameters and seed rank 0 asked the study for, and never connected to PostgreSQL
        seed = trial.user_attrs["seed"]
        assert f"rank 1 complete: seed {seed}, params {trial.params}" in caplog.text
        assert watch.pids and 5432 not in watch.peer_ports
        assert watch.left() == []
    finally:
        optuna.delete_study(study_name=name, storage=pg_url)


@pytest.mark.slow
def test_an_fsdp_trial_matches_one_process(
    one_process: tuple[list[tuple[int, float]], dict[str, float]], reviews: str
) -> None:
    curve, metrics = one_process
    study = optuna.create_study(direction="maximize")
    watch = run_trial(study, config(reviews, 2, "fsdp"))
    trial = matching_one_process(study, curve, metrics)
    assert trial.user_attrs["strategy"] == "fsdp" and watch.left() == []


@pytest.mark.slow
@pytest.mark.parametrize(
    ("strategy", "train"),
    [
        ("ddp", {"grad_accum_steps": 2}),
        ("fsdp", {"grad_accum_steps": 2}),
        # 16 validation examples in batches of 5 would leave rank 1 no row of the last: the ranks score 4 x 4
        ("fsdp", {"eval_batch_size": 5}),
        ("ddp", {"eval_batch_size": 5}),
    ],
)
def test_accumulated_micro_batches_sync_once_a_step_and_match_one_process(
    reviews: str, strategy: str, train: dict[str, int]
) -> None:
    """With ``grad_accum_steps`` 2 the ranks average their gradients on each step's second micro-batch only
    (``set_requires_gradient_sync``), and validation is sharded across the ranks even where the last batch is
    smaller than the ranks; the trial still trains and scores as the 1-process one."""
    accumulate = {"train": train}
    single = config(reviews, **accumulate)
    curve: list[tuple[int, float]] = []
    metrics = prepare_runner(single, optuna.create_study()).train(
        single, PARAMS, trial_seed(0, 0), 0, lambda step, scores, final: curve.append((step, scores["val_loss"]))
    )
    study = optuna.create_study(direction="maximize")
    watch = run_trial(study, config(reviews, 2, strategy, **accumulate))
    matching_one_process(study, curve, metrics)
    assert watch.left() == []


@pytest.mark.slow
def test_kill_9_of_rank_1_fails_the_trial_and_leaves_no_process(reviews: str) -> None:
    study = optuna.create_study(direction="maximize")
    long = config(reviews, 2, "ddp", train={"max_steps": 400})
    watch = Watch()
    done = threading.Event()

    def optimize() -> None:
        try:
            study.optimize(prepare_runner(long, study), n_trials=1, catch=(RankFailed,))
        finally:
            done.set()

    worker = threading.Thread(target=optimize)
    worker.start()
    try:
        while not done.is_set() and not (study.trials and study.trials[0].intermediate_values):
            time.sleep(0.2)  # mid-trial: it has reported a validation
        [rank1] = ranks_of_this_process()
        os.kill(rank1.pid, signal.SIGKILL)
        failed_at = time.monotonic()
        while not done.is_set() and study.trials[0].state == optuna.trial.TrialState.RUNNING:
            time.sleep(0.1)
        seconds = time.monotonic() - failed_at
    finally:
        worker.join(600)
        watch.close()
    first = study.trials[0]
    assert first.state == optuna.trial.TrialState.FAIL
    assert first.user_attrs[FAIL_REASON] == "RankFailed: rank 1: killed by SIGKILL"
    assert seconds < 15
    assert rank1.pid in watch.pids and watch.left() == []
    # the worker goes on: its next trial on two ranks completes (a new process group in the same process)
    again = run_trial(study, config(reviews, 2, "ddp"))
    assert study.trials[1].state == optuna.trial.TrialState.COMPLETE and again.left() == []


@pytest.mark.slow
def test_a_pruned_trial_stops_every_rank(reviews: str, caplog: pytest.LogCaptureFixture) -> None:
    # -val_loss (reported: the study maximises) is always below 0: the threshold pruner stops the trial at once
    pruned = config(reviews, 2, "ddp", train={"max_steps": 400})
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.ThresholdPruner(lower=0.0))
    with caplog.at_level(logging.INFO, logger="hpo"):
        watch = run_trial(study, pruned)
    [trial] = study.trials
    assert trial.state == optuna.trial.TrialState.PRUNED
    assert list(trial.intermediate_values) == [2]
    assert "rank 1 pruned" in caplog.text
    assert watch.pids and watch.left() == []


@pytest.mark.slow
def test_hpo_run_distills_on_two_ranks_reading_the_cached_teacher_logits(tmp_path: Path) -> None:
    # through the CLI (ranks spawned from `python -m hpo._cli`), a distillation study whose teacher logits are cached
    # by rank 0 and read from the same file by rank 1
    study = tiny_config("dist-e2e", n_trials=1, train={"max_steps": 2, "batch_size": 16, "eval_every": 2, "devices": 2})
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    url = f"sqlite:///{tmp_path}/study.db"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.pop("HPO_STORAGE", None)
    command = [sys.executable, "-m", "hpo._cli", "run", str(path), "--storage", url]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    [trial] = optuna.load_study(study_name="dist-e2e", storage=url).trials
    assert trial.state == optuna.trial.TrialState.COMPLETE
    assert trial.user_attrs["teacher_logits"] == "cache" and trial.user_attrs["devices"] == 2
    assert f"rank 1 complete: seed {trial.user_attrs['seed']}, params {trial.params}" in result.stderr
    # the cache was computed by both ranks (each its slice of every batch), and holds the 1-process logits
    assert "teacher logits computed on 2 ranks" in result.stderr
    [cached] = tmp_path.glob("hpo-artifacts/**/logits-train-*.pt")
    [weights] = [p.parent for p in tmp_path.glob("hpo-artifacts/**/config.json")]
    config = config_from_dict(study)
    work = config.task_spec.implementation().prepare_workload(config.data, config.teacher.model, torch.device("cpu"))
    teacher = load_classifier(str(weights), work.num_labels).eval()
    alone = teacher_logits(teacher, work.train, config.train.eval_batch_size)
    assert read_logits(cached).shape == alone.shape == (len(work.train), 2)
    assert torch.allclose(read_logits(cached), alone, atol=1e-5)


@pytest.mark.slow
def test_a_nan_loss_prunes_a_distributed_trial_as_on_one_device(reviews: str) -> None:
    study = optuna.create_study(direction="maximize")
    watch = run_trial(study, config(reviews, 2, "ddp", train={"lr": 1e12, "max_grad_norm": None}))
    [trial] = study.trials
    assert trial.state == optuna.trial.TrialState.PRUNED and trial.user_attrs[FAIL_REASON] == "nan"
    assert watch.pids and watch.left() == []


@pytest.mark.slow
def test_sigterm_to_the_worker_drains_every_rank(tmp_path: Path, reviews: str) -> None:
    long = tiny_config(
        "dist-term",
        objective="finetune",
        n_trials=1,
        data={"name": reviews, "max_length": 32},
        train={"max_steps": 400, "batch_size": 16, "eval_every": 2, "devices": 2},
        search_space={"student.num_layers": {"type": "int", "low": 2, "high": 2}},
    )
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(long))
    url = f"sqlite:///{tmp_path}/study.db"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.pop("HPO_STORAGE", None)
    command = [sys.executable, "-m", "hpo._cli", "run", str(path), "--storage", url]
    log_file = (tmp_path / "worker.log").open("w")
    worker = subprocess.Popen(command, cwd=tmp_path, env=env, stderr=log_file)
    seen: set[int] = set()

    def started() -> bool:  # rank 1 runs (so the study exists) and the trial has reported a validation
        seen.update(p.pid for p in psutil.Process(worker.pid).children(recursive=True))
        ranks = [p for p in psutil.Process(worker.pid).children() if "spawn_main" in " ".join(p.cmdline())]
        return bool(ranks) and any(t.intermediate_values for t in _trials(url))

    try:
        while worker.poll() is None and not started():
            time.sleep(0.5)
        seen |= {p.pid for p in psutil.Process(worker.pid).children(recursive=True)}
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=120)
    finally:
        worker.kill()
        log_file.close()
    trial, *retry = _trials(url)  # a stopped worker's trial is failed and queued again for another worker
    assert trial.state == optuna.trial.TrialState.FAIL, (tmp_path / "worker.log").read_text()[-2000:]
    assert trial.user_attrs[FAIL_REASON] == "worker stopped"
    assert [t.state for t in retry] in ([], [optuna.trial.TrialState.WAITING])
    assert len(seen) >= 2  # rank 1 and multiprocessing's resource tracker
    deadline = time.monotonic() + 10
    while [pid for pid in seen if psutil.pid_exists(pid)] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert [pid for pid in seen if psutil.pid_exists(pid)] == []


def _trials(url: str) -> list[optuna.trial.FrozenTrial]:
    try:
        return optuna.load_study(study_name="dist-term", storage=url).trials
    except KeyError:  # not created yet
        return []


@pytest.mark.parametrize("world", [2, 3])
def test_the_ranks_parts_of_a_causal_lm_cache_assemble_into_the_1_process_cache(tmp_path: Path, world: int) -> None:
    """Each rank's part of a tiny Llama's head inputs over 7 token blocks (batches of 3: a last batch of 1 row), put
    together in example order, is what one process computes (the collectives around them are in the hpo run test)."""
    import datasets

    from hpo.execution._distributed import _assemble, _write_part
    from objectives import Blocks
    from tests.conftest import tiny_decoder

    ids = torch.randint(0, 64, (7, 8), generator=torch.Generator().manual_seed(0))
    blocks = Blocks(datasets.Dataset.from_dict({"input_ids": ids.int().tolist()}).with_format("numpy"), 8, 0)
    teacher = tiny_decoder("llama", vocab_size=200, max_position_embeddings=64).eval()
    alone = teacher_logits(teacher, blocks, 3)
    for rank in range(world):
        _write_part(teacher, blocks, 3, rank, world, tmp_path)
    parts = [torch.load(tmp_path / f"rank-{r}.pt", weights_only=True) for r in range(world)]
    assembled = _assemble(parts, len(blocks))
    assert sorted(torch.cat([p["rows"] for p in parts]).tolist()) == list(range(7))  # every block once
    assert torch.equal(assembled.states, alone.states) and torch.equal(assembled.weight, alone.weight)


def live_teacher_config(data: str, artifacts: Path, student: str, teacher: str, **overrides: Any) -> Any:
    """A distillation study of the tiny BERT on ``data`` on 2 ranks (``student`` the train.strategy, ``teacher`` the
    teacher.strategy) whose attention term makes the teacher run live on every batch; one parameter of one value."""
    train = {"max_steps": 4, "lr": 1e-2, "warmup_ratio": 0.0, "batch_size": 16, "eval_every": 2, "dropout": 0.0}
    data_config = tiny_config("x")
    teacher_train = {"max_steps": 6, "lr": 1e-2, "batch_size": 16, "eval_every": 6, "dropout": 0.0}
    return config_from_dict(
        tiny_config(
            "dist-teacher",
            n_trials=1,
            artifacts_dir=str(artifacts),
            data={"name": data, "max_length": 32},
            pruning_metric="val_loss",
            teacher={**data_config["teacher"], "train": teacher_train, "strategy": teacher},
            train={**train, "devices": 2, "strategy": student},
            distill={"attention_weight": 1.0},
            search_space={"student.num_layers": {"type": "int", "low": 2, "high": 2}},
            **overrides,
        )
    )


@pytest.mark.slow
@pytest.mark.parametrize("student", ["fsdp", "ddp"])
def test_a_sharded_teacher_holds_half_its_weights_on_each_rank_and_teaches_as_the_whole_one(
    reviews: str, tmp_path: Path, student: str
) -> None:
    """``teacher.strategy: fsdp``: each rank's live teacher is a copy sharded across the 2 ranks (FSDP2), holding
    half of its weights; the trial trains the student the trial with a whole teacher on every rank does, under an
    FSDP student and a DDP one, and times no speedup against it."""
    trials = {}
    for teacher in ("replicate", "fsdp"):
        storage = create_storage(f"sqlite:///{tmp_path}/studies.db")  # the teacher's lease needs a database
        study = optuna.create_study(study_name=f"teacher-{teacher}", storage=storage, direction="maximize")
        watch = run_trial(study, live_teacher_config(reviews, tmp_path, student, teacher))
        [trials[teacher]] = study.trials
        assert trials[teacher].state == optuna.trial.TrialState.COMPLETE and watch.left() == []
    whole, sharded = trials["replicate"], trials["fsdp"]
    assert sharded.user_attrs["teacher_logits"] == "live"
    assert sorted(sharded.intermediate_values) == sorted(whole.intermediate_values) == [2, 4]
    assert whole.intermediate_values[2] != pytest.approx(whole.intermediate_values[4], abs=1e-3)  # it trains
    for step, value in whole.intermediate_values.items():
        assert sharded.intermediate_values[step] == pytest.approx(value, abs=TOLERANCE)
    for key in ("val_loss", "accuracy", "f1"):
        assert sharded.user_attrs[key] == pytest.approx(whole.user_attrs[key], abs=TOLERANCE), key
    weights = next(tmp_path.glob("**/config.json")).parent  # a study's fine-tuned teacher
    total = sum(p.numel() for p in load_classifier(str(weights), 2).parameters())
    assert whole.user_attrs["rank_teacher_params"] == [total, total]
    halves = sharded.user_attrs["rank_teacher_params"]
    assert sum(halves) == total and all(abs(held - total / 2) < 0.01 * total for held in halves), halves
    assert "speedup" in whole.user_attrs and "speedup" not in sharded.user_attrs


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"train": {"devices": 1}},
            "teacher.strategy: fsdp shards the teacher across train.devices, which is 1, so it would do nothing",
        ),
        (
            {"distill": {}},
            "teacher.strategy: fsdp shards the live teacher, and no trial of this study runs one",
        ),
        (
            {"objective": "finetune", "distill": {}},
            "teacher.strategy: fsdp shards the live teacher, and no trial of this study runs one",
        ),
        (
            {"directions": {"accuracy": "maximize", "speedup": "maximize"}},
            "directions.speedup: times the teacher on one device, and teacher.strategy: fsdp shards it across "
            "train.devices: use latency_ms",
        ),
        (
            {"constraints": {"speedup": ">= 2"}},
            "constraints.speedup: times the teacher on one device, and teacher.strategy: fsdp shards it",
        ),
        ({"teacher_strategy": "zero3"}, "teacher.strategy: must be one of replicate, fsdp, got 'zero3'"),
    ],
)
def test_a_sharded_teacher_that_would_do_nothing_or_be_timed_is_refused(
    overrides: dict[str, Any], message: str
) -> None:
    data = tiny_config("dist", train={"batch_size": 16, "devices": 2}, distill={"attention_weight": 1.0})
    data["teacher"] = {**data["teacher"], "strategy": overrides.get("teacher_strategy", "fsdp")}
    for key, value in overrides.items():
        if key != "teacher_strategy":
            data[key] = {**data[key], **value} if key == "train" else value
    with pytest.raises(ConfigError) as error:
        config_from_dict(data)
    assert message in str(error.value)


@pytest.mark.parametrize(
    "live",
    [
        {"distill": {"attention_weight": 1.0}, "train": {"strategy": "ddp"}},  # a DDP student beside it
        {"search_space": {"distill.hidden_weight": {"type": "float", "low": 0.0, "high": 1.0}}},  # some trials
        {"distill": {"cache_teacher_logits": False}},
    ],
)
def test_a_sharded_teacher_is_taken_where_some_trial_runs_it_live(live: dict[str, Any]) -> None:
    train = {"batch_size": 16, "devices": 2, **live.get("train", {})}
    data = tiny_config("dist", **{**live, "train": train})
    data["teacher"] = {**data["teacher"], "strategy": "fsdp"}
    assert config_from_dict(data).teacher.strategy == "fsdp"


def on_policy_config(data: str, teacher: str, artifacts: Path, devices: int, strategy: str = "ddp") -> Any:
    """A prompt-completion study of the tiny Llama whose every training batch is the student's own sampled
    completions, scored by the live teacher (``distill.on_policy: 1``), validated (with greedy generation) every 2
    steps."""
    return config_from_dict(
        {
            "name": "dist-on-policy",
            "task": "causal-lm",
            "artifacts_dir": str(artifacts),
            "directions": {"exact_match": "maximize"},
            "n_trials": 1,
            "seed": 0,
            "pruning_metric": "val_loss",
            "data": {
                "name": data,
                "format": "prompt-completion",
                "max_length": 32,
                "max_new_tokens": 4,
                "generation_rows": 4,
                "max_eval_rows": 8,
            },
            "teacher": {"model": teacher, "train": {"max_steps": 0}},
            "student": {"num_layers": 2},
            "train": {
                "max_steps": 4,
                "batch_size": 4,
                "eval_every": 2,
                "lr": 1e-3,
                "devices": devices,
                "strategy": strategy,
            },
            "distill": {"on_policy": 1.0},
            "search_space": {"distill.temperature": {"type": "float", "low": 2.0, "high": 2.0}},
        }
    )


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_an_on_policy_trial_samples_and_trains_on_two_ranks_as_on_one(
    tiny_lm: str, tmp_path: Path, strategy: str
) -> None:
    # The student samples its own completions between training steps and greedy ones at every validation: on two
    # ranks, wrapped for training, it must still generate, and train the student one process does (every rank samples
    # the global batch with the same random state and trains its half).
    from tests.objectives_tests.data_tests.test_examples import pairs_file

    data = pairs_file(tmp_path / "pairs.jsonl", rows=40)
    curves = {}
    for devices in (1, 2):
        study = optuna.create_study(direction="maximize", storage=f"sqlite:///{tmp_path}/{devices}.db")
        run_trial(study, on_policy_config(data, tiny_lm, tmp_path / f"artifacts-{devices}", devices, strategy))
        [trial] = study.trials
        assert trial.state == optuna.trial.TrialState.COMPLETE, trial.user_attrs.get(FAIL_REASON)
        curves[devices] = trial.intermediate_values
    assert sorted(curves[2]) == sorted(curves[1]) == [2, 4]
    for step, value in curves[1].items():
        assert curves[2][step] == pytest.approx(value, abs=TOLERANCE)


def _training_layer_calls(cfg: Any) -> tuple[list[tuple[int, float]], dict[str, float], int]:
    """One 1-process trial of ``cfg``: its validation-loss curve, final metrics and how many times a transformer
    layer's feed-forward block ran in training mode (validation runs the model in eval mode; transformers
    checkpoints a layer's ``forward``, so the layer's own hooks run once, its submodules' again on the recompute)."""
    calls = 0

    def count(module: torch.nn.Module, args: Any, output: Any) -> None:
        nonlocal calls
        if module.training and type(module).__name__ == "BertIntermediate":
            calls += 1

    curve: list[tuple[int, float]] = []
    handle = torch.nn.modules.module.register_module_forward_hook(count)
    try:
        metrics = prepare_runner(cfg, optuna.create_study()).train(
            cfg, PARAMS, trial_seed(0, 0), 0, lambda step, scores, final: curve.append((step, scores["val_loss"]))
        )
    finally:
        handle.remove()
    return curve, metrics, calls


def test_gradient_checkpointing_recomputes_every_layer_and_trains_the_same_model(reviews: str) -> None:
    plain_curve, plain, plain_calls = _training_layer_calls(config(reviews))
    curve, metrics, calls = _training_layer_calls(config(reviews, train={"gradient_checkpointing": True}))
    assert plain_calls == 6 * 2  # 6 steps through the 2 layers of the student
    assert calls == 2 * plain_calls  # each layer's forward again in the backward pass: checkpointed
    assert [s for s, _ in curve] == [s for s, _ in plain_curve]
    for (_, value), (_, expected) in zip(curve, plain_curve, strict=True):
        assert value == pytest.approx(expected, abs=1e-6)  # recomputed activations: the same gradients
    assert metrics["accuracy"] == pytest.approx(plain["accuracy"], abs=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_a_checkpointed_trial_on_two_ranks_matches_one_process(
    one_process: tuple[list[tuple[int, float]], dict[str, float]], reviews: str, strategy: str
) -> None:
    curve, metrics = one_process
    study = optuna.create_study(direction="maximize")
    watch = run_trial(study, config(reviews, 2, strategy, train={"gradient_checkpointing": True}))
    matching_one_process(study, curve, metrics)
    assert watch.left() == []
