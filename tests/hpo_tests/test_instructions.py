"""Causal-LM studies on prompt-completion and chat data: the keys and metrics each data format takes or refuses, and
``hpo validate``'s look at the examples."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from hpo import config_from_dict
from hpo._cli import main
from objectives import ConfigError
from tests.objectives_tests.data_tests.test_examples import pairs_file

PAIRS = {"task": "causal-lm", "data": {"name": "rt-snippets", "format": "prompt-completion"}}


def test_generation_metrics_are_objectives_constraints_and_pruning_metrics_of_the_instruction_formats() -> None:
    config = config_from_dict(
        {
            "name": "sft",
            **PAIRS,
            "directions": {"exact_match": "maximize", "latency_ms": "minimize"},
            "constraints": {"rouge_l": ">= 0.5"},
            "pruning_metric": "rouge_l",
            "train": {"group_by_length": True},
            "data": {**PAIRS["data"], "max_length": 96},
        }
    )
    assert config.pruning == ("rouge_l", "maximize")
    searched = config_from_dict(
        {
            "name": "gkd",
            **PAIRS,
            "search_space": {
                "distill.on_policy": {"type": "float", "low": 0.0, "high": 1.0},
                "distill.gen_temperature": {"type": "float", "low": 0.5, "high": 1.5},
            },
        }
    )
    assert set(searched.search_space) == {"distill.on_policy", "distill.gen_temperature"}
    assert "exact_match" in config.task_spec.metrics and config.task_spec.unit == "examples"


@pytest.mark.parametrize(
    ("raw", "key", "line"),
    [
        (
            {"data": {"format": "chat"}},
            "data.format",
            "does nothing in a classification study: it is for task: causal-lm; a classifier reads texts and labels",
        ),
        (
            {"task": "causal-lm", "directions": {"exact_match": "maximize"}},
            "directions.exact_match",
            "is scored only with data.format prompt-completion or chat; set data.format or remove it",
        ),
        ({"task": "causal-lm", "constraints": {"rouge_l": ">= 0.5"}}, "constraints.rouge_l", "unknown metric"),
        ({"task": "causal-lm", "pruning_metric": "rouge_l"}, "pruning_metric", "perplexity, token_accuracy"),
        (
            {"task": "causal-lm", "data": {"max_new_tokens": 4}},
            "data.max_new_tokens",
            "it reads prompt-completion or chat data; set data.format or remove it",
        ),
        (
            {**PAIRS, "data": {**PAIRS["data"], "block_size": 64}},
            "data.block_size",
            "its examples are padded one per sequence, not packed; cut them with data.max_length",
        ),
        (
            {**PAIRS, "data": {**PAIRS["data"], "messages_column": "turns"}},
            "data.messages_column",
            "it is not read with data.format prompt-completion",
        ),
        ({**PAIRS, "distill": {"transfer_files": ["README.md"]}}, "distill.transfer_files", "it adds raw text"),
        ({"task": "causal-lm", "data": {"format": "instruct"}}, "data.format", "text, prompt-completion, chat"),
        (
            {"task": "causal-lm", "distill": {"on_policy": 0.5}},
            "distill.on_policy",
            "it reads prompt-completion or chat data; set data.format or remove it",
        ),
        ({**PAIRS, "distill": {"on_policy": 0.5, "approach": "sequential"}}, "distill.on_policy", "integrated"),
        ({**PAIRS, "distill": {"on_policy": 1.5}}, "distill.on_policy", "must be in [0, 1]"),
        ({**PAIRS, "distill": {"gen_temperature": 0}}, "distill.gen_temperature", "must be > 0"),
    ],
)
def test_a_key_or_metric_the_data_format_has_no_use_for_is_refused_naming_it(raw: dict, key: str, line: str) -> None:
    with pytest.raises(ConfigError) as error:
        config_from_dict({"name": "sft", **raw})
    assert error.value.key == key and line in str(error.value), str(error.value)
    assert "\n" not in str(error.value)


def test_validate_shows_rows_mean_prompt_and_completion_tokens_and_truncations(
    tiny_lm: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = {
        "name": "sft",
        "task": "causal-lm",
        "n_trials": 1,
        "data": {"name": pairs_file(tmp_path / "pairs.jsonl"), "format": "prompt-completion", "max_length": 8},
        "teacher": {"model": tiny_lm},
        "student": {"num_layers": 2},
    }
    path = tmp_path / "sft.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["validate", str(path)]) == 0
    out = capsys.readouterr().out
    assert "30 prompt-completion rows" in out
    assert "prompt tokens (mean)" in out and "completion tokens (mean)" in out and "truncated" in out
    train = next(line for line in out.splitlines() if line.lstrip().startswith("train"))
    cells = train.replace("|", " ").split()
    assert cells[1] == cells[2] == cells[-1]  # every training example was cut at 8 tokens, and counted
    assert float(cells[3]) + float(cells[4]) == pytest.approx(8.0)


@pytest.mark.slow  # a study, an export and a full training in subprocesses
def test_an_instruction_study_searches_on_policy_then_exports_and_trains_a_generating_model(
    tiny_lm: str, tmp_path: Path
) -> None:
    import json

    import optuna
    from transformers import pipeline

    from tests.hpo_tests.execution_tests.test_run import hpo

    config = {
        "name": "sft",
        "task": "causal-lm",
        "directions": {"exact_match": "maximize", "latency_ms": "minimize"},
        "n_trials": 2,
        "sampler": {"name": "grid"},
        "pruner": {"name": "none"},
        "data": {
            "name": pairs_file(tmp_path / "pairs.jsonl", rows=60),
            "format": "prompt-completion",
            "max_length": 32,
            "max_new_tokens": 6,
            "generation_rows": 4,
            "max_eval_rows": 6,
        },
        "teacher": {"model": tiny_lm, "train": {"max_steps": 4, "batch_size": 4, "eval_every": 4}},
        "student": {"num_layers": 2},
        "train": {"max_steps": 4, "batch_size": 4, "eval_every": 2, "lr": 1e-3},
        "search_space": {"distill.on_policy": {"type": "categorical", "choices": [0.0, 1.0]}},
    }
    path = tmp_path / "sft.yaml"
    path.write_text(yaml.safe_dump(config))
    url = f"sqlite:///{tmp_path}/sft.db"
    run = hpo("run", str(path), "--storage", url, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    study = optuna.load_study(study_name="sft", storage=url)
    trials = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert sorted(t.params["distill.on_policy"] for t in trials) == [0.0, 1.0]
    for attrs in [study.user_attrs["teacher"], *(t.user_attrs for t in trials)]:
        assert 0 <= attrs["exact_match"] <= 1 and 0 <= attrs["rouge_l"] <= 1
    job = tmp_path / "job.yaml"
    exported = hpo(
        "export", "--storage", url, "--study", "sft", "--objective", "exact_match", "--out", str(job), cwd=tmp_path
    )
    assert exported.returncode == 0, exported.stderr
    assert "block_size" not in yaml.safe_load(job.read_text())["data"]
    out = tmp_path / "student"
    trained = hpo("train", str(job), "--out", str(out), cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr[-3000:]
    rows = json.loads((out / "metrics.json").read_text())["test"]
    for row in rows.values():
        assert {"exact_match", "rouge_l", "perplexity"} <= set(row)
    generate = pipeline("text-generation", model=str(out))
    text = generate("The species is found in", max_new_tokens=4, do_sample=False)[0]["generated_text"]
    assert text.startswith("The species is found in")
