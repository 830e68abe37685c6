"""Every shipped example validates; bad configs fail with one line that names the key."""

import dataclasses
from pathlib import Path

import pytest
import yaml

from hpo import apply_params, config_from_dict, dump_config, load_config
from hpo._cli import main
from hpo.study import TrainJob, dump_job, load_job
from hpo.study._config import build
from objectives import ConfigError, DataArgs

EXAMPLES = sorted((Path(__file__).parents[3] / "examples").glob("*.yaml"))


def test_examples_exist() -> None:
    assert len(EXAMPLES) >= 2


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_validates_and_round_trips(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(path)]) == 0
    assert "valid" in capsys.readouterr().out
    config = load_config(path)
    assert config_from_dict(yaml.safe_load(dump_config(config))) == config


BASE = {"name": "t", "search_space": {"train.lr": {"type": "float", "low": 1e-5, "high": 1e-3, "log": True}}}

BAD = [
    ({"nme": "x"}, "nme: unknown key; did you mean 'name'?"),
    ({"name": ""}, "name: is required"),
    ({"train": {"max_minutes": 0}}, "train.max_minutes: must be > 0 minutes or null"),
    ({"teacher": {"train": {"max_minutes": 5}}}, "teacher.train.max_minutes: limits trials, not the teacher"),
    ({"train": {"lr": -1}}, "train.lr: must be > 0, got -1.0"),
    ({"train": {"lr": "fast"}}, "train.lr: expected a number, got 'fast'"),
    ({"train": {"batch_size": 8.5}}, "train.batch_size: expected a whole number, got 8.5"),
    ({"train": {"max_stepz": 5}}, "train.max_stepz: unknown key; did you mean 'max_steps'?"),
    ({"train": {"precision": "fp8"}}, "train.precision: must be one of auto, fp32, bf16, fp16, got 'fp8'"),
    ({"distill": {"alpha": 1.5}}, "distill.alpha: must be in [0, 1], got 1.5"),
    ({"distill": {"temperature": 0}}, "distill.temperature: must be > 0"),
    ({"distill": {"cache_top_k": 64}}, "distill.cache_top_k: is gone: the causal-LM logit cache is exact now"),
    ({"distill": {"hidden_weight": -1}}, "distill.hidden_weight: must be >= 0, got -1.0"),
    ({"distill": {"attention_weight": -0.5}}, "distill.attention_weight: must be >= 0, got -0.5"),
    ({"distill": {"transfer_only": True}}, "distill.transfer_only: distils on the transfer_files alone, and none"),
    ({"distill": {"transfer_files": ["no-such.txt"]}}, "distill.transfer_files[0]: 'no-such.txt' does not exist"),
    ({"student": {"model": " "}}, "student.model: must name a model (registry name, directory or hub id) or be null"),
    ({"student": {"model": "distilbert-base-uncased", "hidden_ratio": 0.5}}, "student.hidden_ratio: prunes the"),
    ({"student": {"model": "distilbert-base-uncased", "layer_selection": "importance"}}, "student.layer_selection:"),
    (
        {"student": {"model": "distilbert-base-uncased"}, "distill": {"hidden_weight": 1.0}},
        "distill.hidden_weight: matches the student's layers with the teacher's layers they were cut from",
    ),
    (
        {
            "student": {"model": "distilbert-base-uncased"},
            "search_space": {"distill.attention_weight": {"type": "float", "low": 0.0, "high": 1.0}},
        },
        "search_space.distill.attention_weight: value 1.0 is invalid: distill.attention_weight: matches",
    ),
    ({"data": {"test_fraction": 1.0}}, "data.test_fraction: must be in [0, 1), got 1.0"),
    ({"data": {"val_fraction": 0.5, "test_fraction": 0.5}}, "data.val_fraction: val_fraction + test_fraction"),
    ({"student": {"hidden_size": 128}}, "student.hidden_size: changes the width, so needs init: scratch"),
    ({"student": {"layers": [0, 0]}}, "student.layers: indices must be unique"),
    ({"directions": {"acc": "maximize"}}, "directions.acc: unknown metric; valid: accuracy, f1"),
    ({"directions": {"accuracy": "up"}}, "directions.accuracy: must be maximize or minimize, got 'up'"),
    ({"objective": "prune"}, "objective: must be one of finetune, distill, synthetic, got 'prune'"),
    ({"n_trials": 0}, "n_trials: must be >= 1 or null, got 0"),
    ({"device": "tpu"}, "device: must be auto, cpu, cuda or cuda:N"),
    (
        {"search_space": {"train.lrr": {"low": 1, "high": 2}}},
        "search_space.train.lrr: train has no field 'lrr'; did you mean 'lr'?",
    ),
    (
        {"search_space": {"data.max_length": {"low": 1, "high": 2}}},
        "search_space.data.max_length: must be a dotted path into train, distill, student",
    ),
    (
        {"search_space": {"distill.alpha": {"low": 0.5, "high": 1.5}}},
        "search_space.distill.alpha: value 1.5 is invalid: distill.alpha: must be in [0, 1]",
    ),
    (
        {"search_space": {"train.lr": {"type": "float", "low": 0, "high": 1, "log": True}}},
        "search_space.train.lr.low: a log range needs low > 0",
    ),
    (
        {"search_space": {"train.batch_size": {"type": "categorical"}}},
        "search_space.train.batch_size.choices: a categorical parameter needs",
    ),
    (
        {"search_space": {"train.batch_size": {"type": "categorical", "choices": [16, [1]]}}},
        "search_space.train.batch_size.choices[1]: expected one of bool, int, float, str, got [1]",
    ),
    (
        {"search_space": {"student.num_layers": {"type": "int", "low": 1.5, "high": 3}}},
        "search_space.student.num_layers.low: an int range needs whole numbers",
    ),
    (
        {"search_space": {"train.lr": {"type": "float", "low": 0.1}}},
        "search_space.train.lr.high: a float range needs both low and high",
    ),
    (
        {"search_space": {"train.lr": {"type": "normal", "low": 0.1, "high": 1}}},
        "search_space.train.lr.type: must be one of float, int, categorical",
    ),
    (
        {"search_space": {"train.lr": {"type": "float", "low": 0.1, "high": 1, "lg": True}}},
        "search_space.train.lr.lg: unknown key; did you mean 'log'?",
    ),
    (
        {"sampler": {"name": "bayes"}},
        "sampler.name: unknown sampler 'bayes'; valid: grid, random, tpe, gp, nsga2, cmaes, qmc",
    ),
    (
        {"sampler": {"name": "tpe", "options": {"n_startup": 3}}},
        "sampler.options.n_startup: is not an option of TPESampler; valid:",
    ),
    ({"sampler": {"name": "tpe", "options": {"seed": 3}}}, "sampler.options.seed: is set by distill-hpo"),
    (
        {"sampler": {"name": "grid"}, "search_space": {"train.lr": {"type": "float", "low": 0.1, "high": 1}}},
        "search_space.train.lr.step: a float range needs a step",
    ),
    (
        {"pruner": {"name": "asha"}},
        "pruner.name: unknown pruner 'asha'; valid: none, median, percentile, sha, hyperband, patient, threshold, pareto",
    ),
    ({"pruner": {"name": "threshold"}}, "pruner.options: threshold needs lower and/or upper"),
    (
        {"pruner": {"name": "median", "options": {"warmup": 3}}},
        "pruner.options.warmup: is not an option of MedianPruner",
    ),
    ({"pruner": {"name": "patient", "options": {"wrapped": "nope"}}}, "pruner.options.wrapped: unknown pruner 'nope'"),
    (
        {"directions": {"accuracy": "maximize", "latency_ms": "minimize"}, "pruner": {"name": "median"}},
        "pruner.name: median cannot prune a multi-objective study",
    ),
    (
        {
            "directions": {"accuracy": "maximize", "latency_ms": "minimize"},
            "sampler": {"name": "cmaes"},
            "pruner": {"name": "none"},
        },
        "sampler.name: cmaes is single-objective",
    ),
]


@pytest.mark.parametrize(("extra", "message"), BAD, ids=[m.split(":")[0] for _, m in BAD])
def test_bad_config_is_one_line_naming_the_key(
    extra: dict, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({**BASE, **extra}))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith("hpo: error: ")
    assert message in err, err


_NO_CLASSES = "does nothing in a causal-lm study: a language model predicts the next token and has no labels or classes"
_NO_TEACHER = "does nothing in a finetune study: its students learn from labels, without a teacher"
_WEIGHTS = {"type": "categorical", "choices": ["none", "balanced"]}

UNUSED = [
    ({"task": "causal-lm", "data": {"label_column": "topic"}}, f"data.label_column: {_NO_CLASSES}; remove it"),
    ({"task": "causal-lm", "data": {"label_names": ["a", "b"]}}, f"data.label_names: {_NO_CLASSES}; remove it"),
    (
        {"task": "causal-lm", "data": {"max_length": 32}},
        "data.max_length: does nothing in a causal-lm study: its text is packed into data.block_size-token blocks, "
        "not truncated; set data.block_size",
    ),
    ({"task": "causal-lm", "train": {"class_weights": "balanced"}}, f"train.class_weights: {_NO_CLASSES}; remove it"),
    (
        {"task": "causal-lm", "teacher": {"train": {"class_weights": "balanced"}}},
        f"teacher.train.class_weights: {_NO_CLASSES}; remove it",
    ),
    (
        {"task": "causal-lm", "train": {"group_by_length": False}},
        "train.group_by_length: does nothing in a causal-lm study: its packed blocks all have one length; remove it",
    ),
    (
        {"task": "causal-lm", "search_space": {"train.class_weights": _WEIGHTS}},
        f"search_space.train.class_weights: {_NO_CLASSES}; remove it",
    ),
    (
        {"data": {"block_size": 32}},
        "data.block_size: does nothing in a classification study: a classifier truncates each text at "
        "data.max_length; set that instead",
    ),
    (
        {"objective": "finetune", "distill": {"temperature": 4}},
        f"distill.temperature: {_NO_TEACHER}; remove it or use objective: distill",
    ),
    (
        {"objective": "finetune", "search_space": {"distill.alpha": {"type": "float", "low": 0.1, "high": 0.9}}},
        f"search_space.distill.alpha: {_NO_TEACHER}; remove it or use objective: distill",
    ),
]


@pytest.mark.parametrize(("extra", "line"), UNUSED, ids=[m.split(":")[0] for _, m in UNUSED])
def test_a_key_the_task_or_objective_has_no_use_for_is_refused_in_one_line(
    extra: dict, line: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "unused.yaml"
    path.write_text(yaml.safe_dump({**BASE, **extra}))
    assert main(["validate", "--no-data", str(path)]) == 2
    assert capsys.readouterr().err == f"hpo: error: {line}\n"


def test_a_key_it_has_no_use_for_is_accepted_at_its_default() -> None:
    config = config_from_dict(
        {**BASE, "task": "causal-lm", "data": {"max_length": 64}, "train": {"class_weights": "none"}}
    )
    assert config.data.max_length == 64
    config_from_dict({**BASE, "objective": "finetune", "distill": {"temperature": 2.0}, "data": {"block_size": 128}})


def test_a_job_refuses_them_too_and_is_written_without_them(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump({"name": "lm", "task": "causal-lm", "data": {"label_names": ["a", "b"]}}))
    with pytest.raises(ConfigError) as refused:
        load_job(path)
    assert str(refused.value) == f"data.label_names: {_NO_CLASSES}; remove it"

    lm = TrainJob(name="lm", task="causal-lm", objective="finetune", data=DataArgs(name="wikitext-2"))
    written = yaml.safe_load(dump_job(lm))
    assert set(written["data"]) == {f.name for f in dataclasses.fields(DataArgs)} - {
        "label_column",
        "label_names",
        "max_length",
        *("prompt_column", "completion_column", "messages_column", "max_new_tokens", "generation_rows"),
    }
    assert not {"class_weights", "group_by_length"} & (set(written["train"]) | set(written["teacher"]["train"]))
    assert "distill" not in written  # a finetune job has no teacher to learn from
    path.write_text(dump_job(lm))
    assert load_job(path) == lm
    classifier = yaml.safe_load(dump_job(TrainJob(name="c")))
    assert "block_size" not in classifier["data"] and "label_names" in classifier["data"]


def test_the_wilcoxon_pruner_is_refused_with_its_reason_and_the_alternatives(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "w.yaml"
    path.write_text(yaml.safe_dump({**BASE, "pruner": {"name": "wilcoxon"}}))
    assert main(["validate", "--no-data", str(path)]) == 2
    assert capsys.readouterr().err == (
        "hpo: error: pruner.name: wilcoxon is not offered: Optuna's WilcoxonPruner takes each step for an evaluation "
        "instance (a validation example or fold) and pairs it with the best trial's score on that instance, while a "
        "trial here reports one validation score per training step; use none, median, percentile, sha, hyperband, "
        "patient, threshold\n"
    )
    path.write_text(yaml.safe_dump({**BASE, "pruner": {"name": "patient", "options": {"wrapped": "wilcoxon"}}}))
    assert main(["validate", "--no-data", str(path)]) == 2
    assert capsys.readouterr().err.startswith("hpo: error: pruner.options.wrapped: unknown pruner 'wilcoxon'")


def test_yaml_syntax_error_and_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("name: [unclosed\n")
    assert main(["validate", str(path)]) == 2
    assert "is not valid YAML at line" in capsys.readouterr().err
    assert main(["validate", str(tmp_path / "none.yaml")]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_yaml_exponent_without_dot_reads_as_a_number() -> None:
    config = config_from_dict(yaml.safe_load("name: t\ntrain: {lr: 5e-5}\n"))
    assert config.train.lr == 5e-5


def test_apply_params_sets_dotted_paths_and_revalidates() -> None:
    config = config_from_dict(BASE)
    trial = apply_params(config, {"train.lr": 3e-4, "distill.temperature": 4.0, "student.num_layers": 2})
    assert (trial.train.lr, trial.distill.temperature, trial.student.num_layers) == (3e-4, 4.0, 2)
    assert config.train.lr == 5e-5  # the base config is untouched
    with pytest.raises(ConfigError, match=r"distill\.alpha: must be in"):
        apply_params(config, {"distill.alpha": 2.0})


@pytest.mark.parametrize(
    ("overrides", "key", "fix"),
    [
        ({"artifacts_dir": "nosuch://bucket/x"}, "artifacts_dir", "unknown storage protocol 'nosuch'"),
        ({"artifacts_options": {"endpoint_url": "http://x"}}, "artifacts_options", "remove them for a folder"),
        (
            {"artifacts_dir": "s3://b/x", "artifacts_options": {"client_kwargs": {"aws_secret_access_key": "s"}}},
            "artifacts_options.client_kwargs.aws_secret_access_key",
            "AWS_SECRET_ACCESS_KEY",
        ),
        ({"artifacts_dir": "s3://b/x", "artifacts_options": {"key": "AKIA"}}, "artifacts_options.key", "~/.aws"),
    ],
)
def test_the_artifact_store_and_its_options_are_checked(overrides: dict, key: str, fix: str) -> None:
    """An object-store URL of a protocol fsspec knows; options only for it, and never credentials (they would be
    stored in the study's database)."""
    with pytest.raises(ConfigError) as refused:
        config_from_dict({"name": "s", **overrides})
    assert refused.value.key == key and fix in str(refused.value)
    s3 = config_from_dict({"name": "s", "artifacts_dir": "s3://b/x", "artifacts_options": {"endpoint_url": "http://h"}})
    assert s3.artifacts_options == {"endpoint_url": "http://h"}


def test_a_job_names_its_teacher_in_a_store_whole() -> None:
    """``hpo export`` names the study's teacher by store and entry; a job with half of that is refused."""
    job = {"name": "j", "source": {"study": "s"}}
    with pytest.raises(ConfigError, match="give both, or neither"):
        build(TrainJob, {**job, "teacher_entry": "teacher-1"})
    with pytest.raises(ConfigError, match="set it or remove them"):
        build(TrainJob, {**job, "artifacts_options": {"endpoint_url": "http://h"}})
    with pytest.raises(ConfigError, match=r"source\.study: is required"):
        build(TrainJob, {"name": "j", "artifacts_dir": "/store", "teacher_entry": "teacher-1"})
    assert (
        build(TrainJob, {**job, "artifacts_dir": "/store", "teacher_entry": "teacher-1"}).teacher_entry == "teacher-1"
    )
