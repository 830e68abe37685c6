"""``student.quantize`` in a study and a full training: refused where the device cannot run it, and ``hpo train``'s
directory loads and runs quantized, scoring what its model card says."""

from __future__ import annotations

import uuid
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from hpo._training import quantized_name, train_job
from hpo.study import TrainJob
from hpo.study._config import config_from_dict
from objectives import ConfigError, DataArgs, DistillArgs, StudentArgs, TeacherArgs, TrainArgs
from objectives.students import quantize
from tests.conftest import sentiment_csv, tiny_bert, tiny_config, write_corpus
from tests.hpo_tests.execution_tests.test_run import hpo, write


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"student": {"num_layers": 2, "quantize": "int4"}}, "student.quantize"),
        (
            {"search_space": {"student.quantize": {"type": "categorical", "choices": ["none", "int8", "int4"]}}},
            "search_space.student.quantize",
        ),
    ],
)
def test_int4_on_a_cpu_study_is_one_line_naming_the_key(overrides: dict, key: str) -> None:
    with pytest.raises(ConfigError) as error:
        config_from_dict(tiny_config("q", device="cpu", **overrides))
    assert error.value.key == key and "int4 does not run on cpu" in str(error.value) and "\n" not in str(error.value)
    config_from_dict(tiny_config("q", device="cuda", **overrides))  # CUDA runs it
    config_from_dict(tiny_config("q", device="auto", **overrides))  # decided when a trial starts, on its device
    searched = {"student.quantize": {"type": "categorical", "choices": ["none", "int8"]}}
    config_from_dict(tiny_config("q", device="cpu", search_space=searched))
    with pytest.raises(ConfigError, match=r"student\.quantize: int4 does not run on cpu"):
        TrainJob(name="j", device="cpu", student=StudentArgs(quantize="int4"))


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"train": {"qat_fraction": 0.25}}, "train.qat_fraction"),
        (
            {"search_space": {"train.qat_fraction": {"type": "float", "low": 0.0, "high": 0.5}}},
            "search_space.train.qat_fraction",
        ),
        ({"student": {"num_layers": 2, "quantize": "int8"}, "train": {"qat_fraction": 1.0}}, "train.qat_fraction"),
        (
            {"student": {"num_layers": 2, "quantize": "int8"}, "teacher": {"train": {"qat_fraction": 0.5}}},
            "teacher.train.qat_fraction",
        ),
    ],
)
def test_qat_fraction_without_quantization_or_out_of_range_is_one_line_naming_the_key(
    overrides: dict, key: str
) -> None:
    with pytest.raises(ConfigError) as error:
        config_from_dict(tiny_config("q", device="cpu", **overrides))
    assert error.value.key == key and "\n" not in str(error.value)


def test_qat_fraction_is_accepted_where_a_trial_quantizes() -> None:
    config = config_from_dict(
        tiny_config("q", device="cpu", student={"num_layers": 2, "quantize": "int8"}, train={"qat_fraction": 0.25})
    )
    assert config.train.qat_fraction == 0.25
    searched = {
        "student.quantize": {"type": "categorical", "choices": ["none", "int8"]},
        "train.qat_fraction": {"type": "float", "low": 0.0, "high": 0.5},
    }
    config_from_dict(tiny_config("q", device="cpu", search_space=searched))
    with pytest.raises(ConfigError, match=r"train\.qat_fraction: fake-quantizes"):
        TrainJob(name="j", device="cpu", train=TrainArgs(qat_fraction=0.5))


@pytest.mark.parametrize("task", ["classification", "causal-lm"])
def test_hpo_train_with_int8_writes_fp32_and_int8_rows_and_a_directory_that_runs_quantized(
    task: str, tmp_path: Path, tiny_lm: str
) -> None:
    if task == "classification":
        data, model = DataArgs(name=sentiment_csv(tmp_path / "reviews.csv"), max_length=24), tiny_bert()
    else:
        data = DataArgs(name=write_corpus(tmp_path / "corpus.txt"), block_size=16, max_train_rows=32, max_val_rows=8)
        model = tiny_lm
    steps = TrainArgs(max_steps=2, batch_size=8, eval_every=2, eval_batch_size=16, lr=1e-3)
    job = TrainJob(
        name="int8",
        task=task,
        objective="finetune",
        device="cpu",
        data=data,
        teacher=TeacherArgs(model=model, train=TrainArgs(max_steps=0)),
        student=StudentArgs(num_layers=2, quantize="int8"),
        train=steps,
        distill=DistillArgs(),
    )
    out = tmp_path / "out"
    result = train_job(job, out, threads=1)
    student = result["student"]
    fp32, int8 = result["test"][student], result["test"][quantized_name(student, "int8")]
    assert int8["size_mb"] < fp32["size_mb"] and int8["params"] == fp32["params"]
    quality = job.task_spec.quality
    assert int8[quality] == pytest.approx(fp32[quality], rel=0.05, abs=0.05)
    card = (out / "README.md").read_text()
    rows = [line.split("  ")[0] for line in card.splitlines()]
    assert student in rows and f"{student}, int8" in rows
    assert "quantize(model, 'int8')" in card
    # The directory holds the fp32 weights; quantized on load as the card says, it scores the card's int8 row.
    impl = job.task_spec.implementation()
    work = impl.prepare_workload(job.data, job.teacher.model, "cpu")
    if task == "classification":
        loaded = AutoModelForSequenceClassification.from_pretrained(out)
    else:
        loaded = AutoModelForCausalLM.from_pretrained(out)
    again = impl.heldout_metrics(quantize(loaded, "int8"), work)
    assert again[quality] == int8[quality] and again["size_mb"] == int8["size_mb"]


@pytest.mark.slow  # hpo run in a subprocess: a teacher and two trials (30 s of CPU, minutes on a loaded machine)
def test_a_study_searching_quantize_records_int8_costs_under_their_own_key(tmp_path: Path) -> None:
    name = f"quant-{uuid.uuid4().hex[:8]}"
    config = tiny_config(
        name,
        device="cpu",
        sampler={"name": "grid"},
        search_space={"student.quantize": {"type": "categorical", "choices": ["none", "int8"]}},
    )
    url = f"sqlite:///{tmp_path}/study.db"
    run = hpo("run", str(write(tmp_path, config)), "--storage", url, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    study = optuna.load_study(study_name=name, storage=url)
    trials = {t.params["student.quantize"]: t.user_attrs for t in study.trials if t.state == TrialState.COMPLETE}
    assert set(trials) == {"none", "int8"}
    assert trials["int8"]["params"] == trials["none"]["params"]
    assert trials["int8"]["size_mb"] < trials["none"]["size_mb"]
    costs = [k for k in study._storage.get_study_system_attrs(study._study_id) if k.startswith("cost:")]
    assert len(costs) == 2  # the same architecture, measured once in fp32 and once in int8
