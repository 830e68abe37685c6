"""The teacher-logit cache (whole logits, or a decoder's LM-head inputs): exact, computed once per study across
processes, never read half-written."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch

from hpo import config_from_dict
from hpo.execution import LogitCache, run
from objectives import (
    DataArgs,
    DistillArgs,
    HeadInputs,
    StudentArgs,
    TrainArgs,
    build_student,
    load_classifier,
    prepare_workload,
)
from objectives.data import collate
from objectives.tasks._classification import _fit
from objectives.training import Stage, kd_loss
from storage import ArtifactDir, Leases
from tests.conftest import tiny_bert, tiny_config, write_corpus

DATA = DataArgs(max_train_rows=64, max_val_rows=16, max_length=32)


@pytest.fixture
def leases(tmp_path: Path) -> Leases:
    return Leases(f"sqlite:///{tmp_path}/leases.db")


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("teacher")
    load_classifier(tiny_bert(), num_labels=2).save_pretrained(path)
    return path


def test_cached_logits_give_the_live_teachers_loss(teacher_dir: Path, tmp_path: Path, leases: Leases) -> None:
    work = prepare_workload(DATA, tiny_bert())
    teacher = load_classifier(str(teacher_dir), num_labels=2).eval()
    cache = LogitCache(ArtifactDir(tmp_path, "s"), teacher_dir, leases)
    cached = cache("train", work.train, teacher)
    assert cached.shape == (64, 2) and cache.computed == 1
    batch = collate(work.train, [5, 17, 3, 42, 8, 60, 0, 33])  # another grouping and padding than the cache's
    with torch.no_grad():
        live = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    student_logits = torch.randn(8, 2)
    for t, alpha in ((1.0, 0.5), (4.0, 0.9)):
        a = kd_loss(student_logits, batch["labels"], live, temperature=t, alpha=alpha)
        b = kd_loss(student_logits, batch["labels"], cached[batch["index"]], temperature=t, alpha=alpha)
        assert a.item() == pytest.approx(b.item(), rel=1e-5, abs=1e-6)
    # a second cache object (another trial, another process) reads the published entry instead of computing
    again = LogitCache(ArtifactDir(tmp_path, "s"), teacher_dir, leases)
    assert torch.equal(again("train", work.train, teacher), cached) and again.computed == 0


def test_training_from_the_cache_matches_the_live_teacher(teacher_dir: Path, tmp_path: Path, leases: Leases) -> None:
    work = prepare_workload(DATA, tiny_bert())
    teacher = load_classifier(str(teacher_dir), num_labels=2).eval()
    cached = LogitCache(ArtifactDir(tmp_path, "s"), teacher_dir, leases)("train", work.train, teacher)
    args = TrainArgs(max_steps=4, batch_size=16, eval_every=2)
    loss = lambda s, y, t: kd_loss(s, y, t, temperature=2.0, alpha=0.5)  # noqa: E731
    results = []
    for signal_ in (teacher, cached):
        torch.manual_seed(0)
        student = build_student(teacher, StudentArgs(num_layers=2))
        results.append(_fit(student, work, [Stage(work.train, args, loss, signal_)], seed=3))
    live, from_cache = results
    assert from_cache["val_loss"] == pytest.approx(live["val_loss"], rel=1e-4)
    assert from_cache["accuracy"] == live["accuracy"]


def _compute(root: str, teacher_dir: str, url: str, out: multiprocessing.Queue) -> None:
    work = prepare_workload(DATA, tiny_bert())
    teacher = load_classifier(teacher_dir, num_labels=2).eval()
    cache = LogitCache(ArtifactDir(root, "s"), Path(teacher_dir), Leases(url, ttl=2.0, renew_every=0.5))
    cache("train", work.train, teacher)
    out.put(cache.computed)


def _die_mid_write(root: str, name: str, url: str) -> None:
    def write(tmp: Path) -> None:
        tmp.write_bytes(b"half a tensor")
        time.sleep(60)  # killed here

    ArtifactDir(root, "s").produce(name, write, Leases(url, ttl=2.0, renew_every=0.5))


def test_two_processes_compute_once_and_a_killed_writer_publishes_nothing(
    teacher_dir: Path, tmp_path: Path, leases: Leases
) -> None:
    ctx = multiprocessing.get_context("spawn")
    work = prepare_workload(DATA, tiny_bert())
    artifacts = ArtifactDir(tmp_path, "s")
    name = LogitCache(artifacts, teacher_dir, leases).entry("train", work.train)
    url = f"sqlite:///{tmp_path}/leases.db"
    # A writer killed mid-write publishes nothing (its temporary file stays aside); its lease expires 2 s later.
    dying = ctx.Process(target=_die_mid_write, args=(str(tmp_path), name, url))
    dying.start()
    deadline = time.monotonic() + 300  # a spawned process imports torch first: slow on a busy machine
    while not list(artifacts.path.glob(f".{name}.tmp-*")):
        assert time.monotonic() < deadline and dying.is_alive(), "the writer never started writing"
        time.sleep(0.1)
    os.kill(dying.pid, signal.SIGKILL)
    dying.join()
    assert list(artifacts.path.glob(f".{name}.tmp-*")) and not artifacts.exists(name)

    out = ctx.Queue()
    procs = [ctx.Process(target=_compute, args=(str(tmp_path), str(teacher_dir), url, out)) for _ in range(2)]
    for p in procs:
        p.start()
    computed = sorted(out.get(timeout=300) for _ in procs)
    for p in procs:
        p.join(60)
    assert computed == [0, 1]  # one process computed (after the dead writer's lease expired), the other read it
    teacher = load_classifier(str(teacher_dir), num_labels=2).eval()
    live = LogitCache(ArtifactDir(tmp_path / "fresh", "s"), teacher_dir, leases)("train", work.train, teacher)
    assert torch.allclose(torch.load(artifacts.entry(name)), live, atol=1e-5)


def test_trials_record_which_teacher_path_they_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    url = f"sqlite:///{tmp_path}/s.db"
    run(config_from_dict(tiny_config("cached", n_trials=1)), url)
    run(config_from_dict(tiny_config("live", n_trials=1, distill={"cache_teacher_logits": False})), url)
    cached = optuna.load_study(study_name="cached", storage=url).trials[0]
    live = optuna.load_study(study_name="live", storage=url).trials[0]
    assert cached.user_attrs["teacher_logits"] == "cache" and live.user_attrs["teacher_logits"] == "live"
    assert list((tmp_path / "hpo-artifacts" / "cached").glob("logits-train-*.pt"))
    assert not list((tmp_path / "hpo-artifacts" / "live").glob("logits-*.pt"))


def test_a_decoders_cache_holds_its_head_inputs_and_trains_a_student_as_the_live_teacher_does(
    tiny_lm: str, tmp_path: Path, leases: Leases
) -> None:
    from objectives.tasks import _causal_lm as lm

    corpus = write_corpus(tmp_path / "corpus.txt")
    work = lm.prepare_workload(DataArgs(name=corpus, block_size=16, max_train_rows=16, max_val_rows=4), tiny_lm)
    teacher = lm.load_teacher(Path(tiny_lm), work)
    cache = LogitCache(ArtifactDir(tmp_path, "s"), Path(tiny_lm), leases, batch_size=4)
    stored = cache("train", work.train, teacher)
    assert isinstance(stored, HeadInputs) and stored.states.shape == (16, 16, 32) and cache.computed == 1
    again = LogitCache(ArtifactDir(tmp_path, "s"), Path(tiny_lm), leases)
    assert torch.equal(again("train", work.train, teacher).states, stored.states) and again.computed == 0
    # two steps at T = 2 from the cache and from the live teacher: the same student, up to fp16 states
    args = TrainArgs(max_steps=2, batch_size=4, eval_every=2, eval_batch_size=4)
    distill = DistillArgs(temperature=2.0, alpha=0.5)
    student = StudentArgs(num_layers=2)
    live = lm.distill_student(work, Path(tiny_lm), student, args, distill, seed=0)[1]
    cached = lm.distill_student(work, Path(tiny_lm), student, args, distill, seed=0, logits=cache)[1]
    assert cached["val_loss"] == pytest.approx(live["val_loss"], rel=1e-4)


def test_changing_one_row_of_a_local_csv_trains_a_new_teacher(tmp_path: Path, leases: Leases) -> None:
    from hpo.execution import ensure_teacher

    csv = tmp_path / "reviews.csv"
    lines = [f"review number {i} was {'great' if i % 2 else 'awful'},{i % 2}" for i in range(40)]
    csv.write_text("text,label\n" + "\n".join(lines) + "\n")
    teacher = {"model": tiny_bert(), "train": {"max_steps": 1, "batch_size": 8, "eval_every": 1}}
    config = config_from_dict(tiny_config("rows", data={"name": str(csv), "max_length": 16}, teacher=teacher))
    artifacts = ArtifactDir(tmp_path / "artifacts", "rows")

    def teacher_path() -> Path:  # the study recreated under the same name: a new study, the same artifacts
        work = prepare_workload(config.data, config.teacher.model)
        return ensure_teacher(config, work, artifacts, optuna.create_study(), leases)[0]

    first = teacher_path()
    assert teacher_path() == first  # nothing changed: the published teacher is reused
    lines[7] = "review number 7 was great,0"  # one row edited
    csv.write_text("text,label\n" + "\n".join(lines) + "\n")
    second = teacher_path()
    assert second != first and (second / "metrics.json").is_file() and (first / "metrics.json").is_file()


@pytest.mark.parametrize("task", ["classification", "causal-lm"])
def test_trials_with_a_layer_term_use_the_live_teacher_not_the_cache(task: str) -> None:
    from hpo.execution import TrialRunner

    space = {"distill.hidden_weight": {"type": "categorical", "choices": [0.0, 1.5]}}
    raw = tiny_config("layers", n_trials=2, search_space=space, task=task)
    if task == "causal-lm":  # text is packed into blocks: a causal-lm study refuses max_length
        del raw["data"]["max_length"]
    config = config_from_dict(raw)
    asked: list[tuple[float, bool]] = []

    class Runner(TrialRunner):
        def train(self, config: Any, params: dict, seed: int, *args: Any, **kwargs: Any) -> dict[str, float]:
            asked.append((config.distill.hidden_weight, self._cached(config)))
            return dict.fromkeys((*config.task_spec.metrics, "val_loss", "steps"), 1.0)

    study = optuna.create_study(directions=["maximize"])
    for weight in (0.0, 1.5):
        study.enqueue_trial({"distill.hidden_weight": weight})
    study.optimize(Runner(config, work=object(), teacher_dir=Path("t"), logits=lambda *a: None), n_trials=2)
    attrs = {t.params["distill.hidden_weight"]: t.user_attrs["teacher_logits"] for t in study.trials}
    assert attrs == {0.0: "cache", 1.5: "live"}
    assert asked == [(0.0, True), (1.5, False)]
