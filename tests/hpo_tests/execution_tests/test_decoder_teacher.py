"""A classification study whose teacher is a decoder (a Llama fine-tuned as a sequence classifier, as
``teacher.model: smollm2-135m`` is) and whose students are BERTs with their own tokenizer, learning from the
teacher's logits cached once per example."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import torch

from hpo import config_from_dict
from hpo.execution import run
from objectives import load_classifier, prepare_workload
from objectives.tasks._classification import student_workload
from tests.conftest import sentiment_csv, tiny_bert, tiny_config, tiny_llama_base


def test_a_llama_teacher_distils_into_bert_students_through_per_example_logits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # the study's artifacts go under ./hpo-artifacts
    csv = sentiment_csv(tmp_path / "reviews.csv", rows=120)
    base = tiny_llama_base(tmp_path / "llama", [line.rsplit(",", 1)[0] for line in Path(csv).read_text().splitlines()])
    config = config_from_dict(
        tiny_config(
            "llama-teacher",
            data={"name": csv, "max_length": 32},
            teacher={"model": base, "train": {"max_steps": 4, "batch_size": 16, "eval_every": 4, "lr": 1e-3}},
            student={"model": tiny_bert(), "num_layers": 1},
        )
    )
    url = f"sqlite:///{tmp_path}/study.db"
    run(config, url)

    study = optuna.load_study(study_name="llama-teacher", storage=url)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 2
    for trial in complete:
        assert trial.user_attrs["teacher_logits"] == "cache"
        assert 0 <= trial.user_attrs["accuracy"] <= 1 and trial.user_attrs["params"] > 0
    teacher = load_classifier(study.user_attrs["teacher"]["path"], 2).eval()
    assert type(teacher).__name__ == "LlamaForSequenceClassification"

    # The cache holds one row per training example: the teacher's logits on its own tokens of that example, read by
    # a student that tokenises the same examples, in the same order, its own way.
    (entry,) = (tmp_path / "hpo-artifacts" / "llama-teacher").glob("logits-train-*.pt")
    cached = torch.load(entry)
    work = prepare_workload(config.data, base)
    own = student_workload(work, config.student)
    assert cached.shape == (len(work.train), 2) and len(own.train) == len(work.train)
    assert own.train.labels == work.train.labels and own.train.input_ids != work.train.input_ids
    with torch.no_grad():
        for i in (0, len(work.train) // 2, len(work.train) - 1):
            alone = teacher(input_ids=torch.tensor([work.train.input_ids[i]])).logits[0]
            assert torch.allclose(cached[i].float(), alone, atol=1e-4), i
