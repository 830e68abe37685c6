"""Causal-LM studies end to end: config defaults, a real study through `hpo run` with a tiny local Llama and a
local text corpus, then export -> train -> a `text-generation` pipeline on the trained directory."""

from __future__ import annotations

import json
import math
from pathlib import Path

import optuna
import pytest
import yaml

from hpo import config_from_dict
from objectives import TASKS, ConfigError
from tests.conftest import write_corpus
from tests.hpo_tests.execution_tests.test_run import hpo
from tests.objectives_tests.data_tests.test_corpus import word_tokenizer

LM_METRICS = TASKS["causal-lm"].metrics


def test_causal_lm_changes_the_defaults_a_config_does_not_set() -> None:
    config = config_from_dict({"name": "lm", "task": "causal-lm"})
    assert config.directions == {"perplexity": "minimize"}
    assert (config.data.name, config.teacher.model, config.teacher.train.max_steps) == ("wikitext-2", "smollm2-135m", 0)
    assert config.pruning == ("perplexity", "minimize")
    given = config_from_dict({"name": "lm", "task": "causal-lm", "directions": {"token_accuracy": "maximize"}})
    assert given.directions == {"token_accuracy": "maximize"}  # replaced, not merged with the default
    assert given.teacher.train.lr == config.teacher.train.lr  # a default section keeps its other defaults
    assert config_from_dict({"name": "c"}).directions == {"accuracy": "maximize"}


@pytest.mark.parametrize(
    ("raw", "key", "fragment"),
    [
        ({"task": "token-classification"}, "task", "valid: classification, causal-lm"),
        ({"directions": {"perplexity": "minimize"}}, "directions.perplexity", "unknown metric"),
        ({"task": "causal-lm", "directions": {"accuracy": "maximize"}}, "directions.accuracy", "perplexity"),
        ({"task": "causal-lm", "constraints": {"f1": ">= 0.5"}}, "constraints.f1", "valid: perplexity"),
        ({"task": "causal-lm", "pruning_metric": "f1"}, "pruning_metric", "perplexity, token_accuracy"),
        ({"task": "causal-lm", "objective": "synthetic"}, "objective", "task: classification"),
        ({"task": "causal-lm", "distill": {"loss": "kl"}}, "distill.loss", "forward_kl, reverse_kl, jsd"),
        ({"task": "causal-lm", "data": {"block_size": 4}}, "data.block_size", ">= 8"),
        ({"task": "causal-lm", "data": {"max_eval_rows": 0}}, "data.max_eval_rows", ">= 1 or null"),
        ({"data": {"max_eval_rows": 64}}, "data.max_eval_rows", "does nothing in a classification study"),
    ],
)
def test_a_config_wrong_for_its_task_is_one_line_naming_the_key(raw: dict, key: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as error:
        config_from_dict({"name": "lm", **raw})
    assert error.value.key == key and fragment in str(error.value)


def lm_config(name: str, model: str, corpus: str, **overrides: object) -> dict:
    """A causal-LM study of the tiny local Llama on a local corpus: two trials of a few steps, of a student with 2 of
    the 4 layers (chosen by importance) and pruned widths."""
    config = {
        "name": name,
        "task": "causal-lm",
        "objective": "distill",
        "directions": {"perplexity": "minimize", "latency_ms": "minimize"},
        "n_trials": 2,
        "seed": 0,
        "sampler": {"name": "grid"},
        "pruner": {"name": "none"},
        "data": {"name": corpus, "block_size": 16, "max_train_rows": 32, "max_val_rows": 8},
        "teacher": {"model": model, "train": {"max_steps": 4, "batch_size": 4, "eval_every": 4}},
        "student": {
            "num_layers": 2,
            "layer_selection": "importance",
            "calibration_size": 8,
            "hidden_ratio": 0.5,
            "ffn_ratio": 0.75,
            "heads_ratio": 0.5,
        },
        "train": {"max_steps": 4, "batch_size": 4, "eval_every": 2, "lr": 1e-3},
        "search_space": {"distill.loss": {"type": "categorical", "choices": ["forward_kl", "jsd"]}},
    }
    config.update(overrides)
    return config


@pytest.mark.slow  # a minute or more of real training and several processes; CI runs it
def test_an_lm_study_records_every_lm_metric_then_exports_and_trains_a_generating_model(
    tiny_lm: str, tmp_path: Path
) -> None:
    from transformers import AutoModelForCausalLM, pipeline

    corpus = write_corpus(tmp_path / "corpus.txt")
    path = tmp_path / "lm.yaml"
    config = lm_config("lm", tiny_lm, corpus)
    config["data"]["max_eval_rows"] = 6  # trials score on max_val_rows (8) capped at 6; the export keeps it
    path.write_text(yaml.safe_dump(config))
    url = f"sqlite:///{tmp_path}/lm.db"
    run = hpo("run", str(path), "--storage", url, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "perplexity" in run.stdout and "prefill_ms" in run.stdout  # the results table shows the LM metrics

    study = optuna.load_study(study_name="lm", storage=url)
    trials = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert sorted(t.params["distill.loss"] for t in trials) == ["forward_kl", "jsd"]
    teacher = study.user_attrs["teacher"]
    for attrs in [teacher, *(t.user_attrs for t in trials)]:
        assert set(LM_METRICS) <= set(attrs), set(LM_METRICS) - set(attrs)
        assert math.isclose(attrs["perplexity"], math.exp(attrs["val_loss"]), rel_tol=1e-6)
        assert 0 <= attrs["token_accuracy"] <= 1
        assert 0 < attrs["latency_ms"] <= attrs["latency_ms_p95"] and attrs["prefill_ms"] > 0
        assert attrs["throughput"] > 0 and attrs["gflops"] > 0
    for trial in trials:
        assert trial.user_attrs["teacher_logits"] == "cache"
        assert trial.user_attrs["params"] < teacher["params"]  # 2 of the teacher's 4 layers, narrower
        assert trial.user_attrs["speedup"] > 1  # per-token decoding, timed against the teacher in one process
        # The pruning curve is the study's quality metric: the last reported value is the final perplexity.
        curve = {int(k.rsplit("_", 1)[1]): v for k, v in trial.user_attrs.items() if k.startswith("val_step_")}
        assert curve[max(curve)] == pytest.approx(trial.user_attrs["perplexity"])

    status = hpo("status", "--storage", url, "--study", "lm", cwd=tmp_path)
    assert status.returncode == 0 and "perplexity" in status.stdout, status.stderr
    report = hpo("report", "--storage", url, "--study", "lm", "--out", str(tmp_path / "r.html"), cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    html = (tmp_path / "r.html").read_text()
    assert "perplexity" in html and "prefill (ms)" in html and "Each class" not in html

    job = tmp_path / "job.yaml"
    exported = hpo(
        "export", "--storage", url, "--study", "lm", "--objective", "perplexity", "--out", str(job), cwd=tmp_path
    )
    assert exported.returncode == 0, exported.stderr
    # The cost of the full job, from the trial's recorded step and evaluation times: 6 of its validation blocks.
    assert "estimated cost, from trial" in exported.stdout and "one validation pass 6 rows" in exported.stdout
    written = yaml.safe_load(job.read_text())
    assert written["task"] == "causal-lm" and written["data"]["max_eval_rows"] == 6
    assert written["source"]["metrics"]["eval_rows"] == 6 and written["source"]["metrics"]["step_seconds"] > 0
    assert not {"label_column", "label_names", "max_length"} & set(written["data"])  # only keys an LM job uses
    assert not {"class_weights", "group_by_length"} & (set(written["train"]) | set(written["teacher"]["train"]))
    out = tmp_path / "student"
    trained = hpo("train", str(job), "--out", str(out), cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    rows = metrics["test"]
    assert set(rows) == {"teacher", "distilled student", "student without teacher", "student from the pretrained base"}
    for row in rows.values():
        assert set(TASKS["causal-lm"].card_metrics) <= set(row)
        assert row["tokens"] == 6 * 15  # max_eval_rows test blocks of 16 tokens, 15 predicted in each
    card = (out / "README.md").read_text()
    assert "pipeline_tag: text-generation" in card and "the teacher's test perplexity" in card
    assert "Greedy continuations" in card and "ms per generated token" in card

    model = AutoModelForCausalLM.from_pretrained(out)  # width-pruned: one of the two key/value groups kept
    c = model.config
    assert (c.num_hidden_layers, c.hidden_size, c.intermediate_size, c.num_key_value_heads) == (2, 16, 48, 1)
    generate = pipeline("text-generation", model=str(out))
    text = generate("The river", max_new_tokens=5, do_sample=False)[0]["generated_text"]
    assert text.startswith("The river") and len(text) > len("The river")


def _gpt2_with_tokenizer_of(tokenizer_dir: str, out: Path, vocab_size: int) -> str:
    """A tiny GPT-2 saved at ``out`` with the tokenizer saved at ``tokenizer_dir``."""
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    torch.manual_seed(1)
    GPT2LMHeadModel(GPT2Config(vocab_size=vocab_size, n_layer=3, n_embd=32, n_head=4, n_positions=64)).save_pretrained(
        out
    )
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(out)
    return str(out)


def test_a_student_of_another_family_distils_when_it_shares_the_teachers_vocabulary(
    tiny_lm: str, tmp_path: Path
) -> None:
    from objectives import DataArgs, DistillArgs, StudentArgs, TrainArgs
    from objectives.tasks import _causal_lm as lm

    corpus = write_corpus(tmp_path / "corpus.txt")
    work = lm.prepare_workload(DataArgs(name=corpus, block_size=16, max_train_rows=16, max_val_rows=4), tiny_lm)
    gpt2 = _gpt2_with_tokenizer_of(tiny_lm, tmp_path / "gpt2", len(work.tokenizer))
    args = TrainArgs(max_steps=2, batch_size=4, eval_every=2, eval_batch_size=4)
    model, metrics = lm.distill_student(
        work, Path(tiny_lm), StudentArgs(model=gpt2, num_layers=2), args, DistillArgs(), seed=0
    )
    assert model.config.model_type == "gpt2" and model.config.n_layer == 2  # its own layers, cut
    assert math.isfinite(metrics["perplexity"]) and metrics["params"] > 0

    other = tmp_path / "other-tokenizer"
    word_tokenizer(["entirely", "different", "words", "here"]).save_pretrained(other)
    mismatched = _gpt2_with_tokenizer_of(str(other), tmp_path / "gpt2-other", 6)
    with pytest.raises(ConfigError) as error:
        lm.distill_student(work, Path(tiny_lm), StudentArgs(model=mismatched), args, DistillArgs(), seed=0)
    assert error.value.key == "student.model" and "another vocabulary" in str(error.value)


def test_a_sequential_lm_trial_distils_on_a_transfer_set_capped_like_the_training_split(
    tiny_lm: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from hpo.execution import run
    from objectives import DataArgs
    from objectives.tasks import _causal_lm as lm

    corpus = write_corpus(tmp_path / "corpus.txt", documents=300)
    raw = lm_config("sequential", tiny_lm, corpus, n_trials=1, sampler={"name": "random"}, search_space={})
    raw["distill"] = {"approach": "sequential", "transfer_ratio": 0.5}
    raw["artifacts_dir"] = str(tmp_path / "artifacts")
    cap = raw["data"]["max_train_rows"]
    whole = lm.prepare_workload(DataArgs(name=corpus, block_size=16), tiny_lm).train
    assert len(whole) > 10 * cap  # the uncapped training split, which the transfer set used to be

    url = f"sqlite:///{tmp_path}/lm.db"
    with caplog.at_level("INFO", logger="hpo"):
        run(config_from_dict(raw), url)
    (trial,) = optuna.load_study(study_name="sequential", storage=url).trials
    assert trial.state == optuna.trial.TrialState.COMPLETE, trial.user_attrs.get("fail_reason")
    assert trial.user_attrs["steps"] == 4  # 2 KD steps on the transfer set, then 2 on next-token CE
    assert f"teacher's logits on {cap} transfer examples" in caplog.text  # the cap of the split, not all of it
