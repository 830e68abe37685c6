"""Students beyond a plain layer cut: layer distillation (hidden states, attentions), a student of another
architecture with its own tokenizer, trained against the teacher's per-example logits, and the transfer set of
sequential distillation."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

import objectives.tasks._classification
from objectives import (
    ConfigError,
    DataArgs,
    DistillArgs,
    StudentArgs,
    TrainArgs,
    distill_student,
    finetune_student,
    load_classifier,
    prepare_workload,
    teacher_logits,
)
from objectives.students import load_tokenizer
from objectives.tasks._classification import heldout_metrics, save_model, student_workload
from tests.conftest import tiny_distilbert, write_corpus

DATA = DataArgs(max_train_rows=64, max_val_rows=16, max_length=32)
ARGS = TrainArgs(max_steps=3, batch_size=8, eval_every=3, lr=1e-3)


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled MiniLM with a new 2-class head (not fine-tuned: a frozen teacher all the same), saved."""
    path = tmp_path_factory.mktemp("teacher")
    torch.manual_seed(0)
    load_classifier("minilm-l6", 2).save_pretrained(path)
    load_tokenizer("minilm-l6").save_pretrained(path)
    return path


class RecordingCache:
    """A LogitSource computing the teacher's logits in-process and recording what it was asked for."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def __call__(self, name: str, data: Any, teacher: torch.nn.Module) -> torch.Tensor:
        self.calls.append((name, data))
        return teacher_logits(teacher, data, 64)


def test_layer_distillation_trains_a_narrow_student_from_the_live_teacher(teacher_dir: Path, tmp_path: Path) -> None:
    work = prepare_workload(DATA, str(teacher_dir))
    student = StudentArgs(num_layers=2, hidden_ratio=0.5, heads_ratio=0.5, calibration_size=16)
    cache = RecordingCache()
    layered = DistillArgs(hidden_weight=1.0, attention_weight=1.0)
    model, metrics = distill_student(work, teacher_dir, student, ARGS, layered, seed=0, logits=cache)
    assert cache.calls == []  # the layer terms need the teacher's hidden states: no cached logits read
    assert metrics["steps"] == 3 and 0 <= metrics["accuracy"] <= 1 and torch.isfinite(torch.tensor(metrics["val_loss"]))
    assert model.config.hidden_size == 192  # narrower than the teacher's 384: the map was a learned 192 -> 384
    assert model.config._attn_implementation == "sdpa"  # eager attention only while training
    save_model(model, work, tmp_path / "student")
    saved = load_file(str(tmp_path / "student" / "model.safetensors"))
    assert saved.keys() == model.state_dict().keys() and not any("project" in key for key in saved)
    _, plain = distill_student(work, teacher_dir, student, ARGS, DistillArgs(), seed=0, logits=cache)
    assert [name for name, _ in cache.calls] == ["train"]  # without layer terms the cache serves the teacher
    assert plain["val_loss"] != metrics["val_loss"]  # same seed: only the layer terms differ


def test_a_student_of_another_architecture_learns_from_cached_logits_on_its_own_tokens(
    teacher_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    work = prepare_workload(DATA, str(teacher_dir))
    other = tiny_distilbert(list(work.task.train().texts), tmp_path / "distilbert")
    student = StudentArgs(model=other, num_layers=1)  # the other model's layers are cut too
    own = student_workload(work, student)
    assert own.train.labels == work.train.labels and own.train.input_ids != work.train.input_ids
    cache = RecordingCache()
    seen: list[tuple[int, ...]] = []

    def record(module: torch.nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        ids, mask = kwargs["input_ids"], kwargs["attention_mask"]
        seen.extend(tuple(row[m.bool()].tolist()) for row, m in zip(ids, mask, strict=True))

    fit = objectives.tasks._classification._fit

    def spied(model: torch.nn.Module, *args: Any, **kwargs: Any) -> dict[str, Any]:
        model.register_forward_pre_hook(record, with_kwargs=True)  # every forward: training, validation, cost
        return fit(model, *args, **kwargs)

    monkeypatch.setattr(objectives.tasks._classification, "_fit", spied)
    model, metrics = distill_student(work, teacher_dir, student, ARGS, DistillArgs(alpha=0.7), seed=0, logits=cache)
    assert model.config.model_type == "distilbert" and model.config.num_hidden_layers == 1
    assert metrics["steps"] == 3 and 0 <= metrics["accuracy"] <= 1
    assert metrics["params"] == sum(p.numel() for p in model.parameters())  # cost measured on the student
    ((name, data),) = cache.calls
    assert name == "train" and data is work.train  # the teacher's logits come from the teacher's tokens
    mine = {tuple(ids) for ids in own.train.input_ids + own.validation.input_ids}
    assert seen and set(seen) <= mine  # every input the student saw was tokenised by its own tokenizer
    save_model(model, work, tmp_path / "saved")  # with the study's workload, as hpo train calls it
    assert load_tokenizer(str(tmp_path / "saved")).get_vocab() == own.tokenizer.get_vocab()
    assert heldout_metrics(model, work)["params"] == metrics["params"]
    _, tuned = finetune_student(work, "minilm-l6", student, ARGS, seed=0)  # from the other model, on its tokens
    assert tuned["params"] == metrics["params"] and tuned["steps"] == 3
    # each timed on its own tokens: the student on its tokenizer's, the teacher (or MiniLM, the base) on its own
    assert metrics["speedup"] > 1 and tuned["speedup"] > 1
    with pytest.raises(ConfigError, match=r"distill\.hidden_weight"):
        distill_student(work, teacher_dir, student, ARGS, DistillArgs(hidden_weight=1.0), seed=0)


@pytest.mark.parametrize("task", ["_classification", "_causal_lm"])
@pytest.mark.parametrize("key", ["hidden_weight", "attention_weight"])
def test_a_student_model_of_its_own_takes_no_layer_terms(task: str, key: str) -> None:
    import importlib

    distill = importlib.import_module(f"objectives.tasks.{task}").distill_student
    with pytest.raises(ConfigError) as error:  # refused before any model or data is touched
        distill(None, Path("no-teacher"), StudentArgs(model="other"), ARGS, DistillArgs(**{key: 1.0}), seed=0)
    assert error.value.key == f"distill.{key}" and "student.model of its own" in str(error.value)


def test_layer_distillation_trains_a_causal_lm_student_from_the_live_teacher(tiny_lm: str, tmp_path: Path) -> None:
    from objectives.tasks import _causal_lm as lm
    from objectives.training import report_steps

    work = lm.prepare_workload(
        DataArgs(name=write_corpus(tmp_path / "corpus.txt"), block_size=16, max_train_rows=16, max_val_rows=4), tiny_lm
    )
    args = TrainArgs(max_steps=2, batch_size=4, eval_every=2, eval_batch_size=4, lr=1e-3)
    layered = DistillArgs(hidden_weight=1.0, attention_weight=1.0)

    def run(student: StudentArgs, distill: DistillArgs) -> tuple[Any, dict[str, Any], list[float], list]:
        """The trained student, its metrics, its logged training losses and the cache's calls."""
        cache, losses = RecordingCache(), []
        with report_steps(lambda step, total, loss, score: losses.append(loss) if loss is not None else None):
            model, metrics = lm.distill_student(work, Path(tiny_lm), student, args, distill, seed=0, logits=cache)
        return model, metrics, losses, cache.calls

    runs = {
        "plain": run(StudentArgs(num_layers=2), DistillArgs()),
        "layered": run(StudentArgs(num_layers=2), layered),
        # a scratch student narrower than the teacher, with fewer heads: through the map, heads averaged
        "scratch": run(StudentArgs(num_layers=2, init="scratch", hidden_size=16, num_attention_heads=2), layered),
    }
    for name in ("layered", "scratch"):
        model, metrics, losses, calls = runs[name]
        assert calls == []  # the layer terms need the teacher's hidden states: no cached logits read
        assert metrics["steps"] == 2 and math.isfinite(metrics["perplexity"]) and math.isfinite(losses[-1])
        assert model.config._attn_implementation == "sdpa"  # eager attention only while training
    assert [name for name, _ in runs["plain"][3]] == ["train"]  # without layer terms the cache serves the teacher
    assert runs["scratch"][0].config.hidden_size == 16
    # same seed, student and batches: the layer terms add to the training loss
    assert runs["layered"][2][-1] > runs["plain"][2][-1]
    assert runs["layered"][1]["perplexity"] != runs["plain"][1]["perplexity"]
    assert runs["layered"][1]["params"] == runs["plain"][1]["params"]  # the student saves no map or extra weights


@pytest.mark.parametrize("only", [True, False])
def test_transfer_only_distils_on_the_transfer_files_alone(teacher_dir: Path, tmp_path: Path, only: bool) -> None:
    from objectives.data import Rows, encode

    texts = [f"an unlabelled review of film number {i}" for i in range(20)]
    extra = tmp_path / "unlabelled.jsonl"
    extra.write_text("".join(json.dumps({"text": t, "source": "web"}) + "\n" for t in texts))
    work = prepare_workload(DATA, str(teacher_dir))
    cache = RecordingCache()
    distill = DistillArgs(approach="sequential", transfer_files=[str(extra)], transfer_only=only)
    _, metrics = distill_student(work, teacher_dir, StudentArgs(num_layers=1), ARGS, distill, seed=0, logits=cache)
    assert metrics["steps"] == ARGS.max_steps
    ((name, data),) = cache.calls  # the KD stage: the teacher's logits over its data, nothing else
    expected = ([] if only else list(work.task.train().texts)) + texts
    assert name == "transfer" and len(data) == (20 if only else DATA.max_train_rows + 20)
    assert data.input_ids == encode(work.tokenizer, Rows(expected, [0] * len(expected), []), DATA.max_length).input_ids
