"""A LoRA study end to end: r and alpha searched, trials record their trainable parameters, and ``hpo train``
writes the merged student (or, with ``--adapter-only``, its weights before training and the adapter alone)."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
import torch
import yaml

from tests.conftest import write_corpus
from tests.hpo_tests.test_causal_lm import lm_config
from tests.hpo_tests.test_export import hpo


@pytest.mark.slow  # a study, an export and two full trainings in subprocesses: a minute or more
def test_a_lora_study_searches_rank_and_alpha_and_trains_a_merged_student(tiny_lm: str, tmp_path: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, pipeline

    space = {
        "student.lora_r": {"type": "categorical", "choices": [2, 8]},
        "student.lora_alpha": {"type": "float", "low": 4, "high": 16, "step": 12},
    }
    raw = lm_config("lora", tiny_lm, write_corpus(tmp_path / "corpus.txt"), search_space=space, n_trials=4)
    raw["student"] = {"num_layers": 2, "adapter": "lora", "target_modules": "attention"}
    (tmp_path / "lora.yaml").write_text(yaml.safe_dump(raw))
    url = f"sqlite:///{tmp_path}/lora.db"
    run = hpo("run", str(tmp_path / "lora.yaml"), "--storage", url, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    trials = optuna.load_study(study_name="lora", storage=url).get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(trials) == 4
    for trial in trials:  # rank r on q, k, v, o of 2 layers: r * ((32 + 32) + 2 * (32 + 16) + (32 + 32)) each
        assert trial.user_attrs["trainable_params"] == 2 * trial.params["student.lora_r"] * 224
    job = tmp_path / "job.yaml"
    exported = hpo(
        "export", "--storage", url, "--study", "lora", "--objective", "perplexity", "--out", str(job), cwd=tmp_path
    )
    assert exported.returncode == 0, exported.stderr
    assert yaml.safe_load(job.read_text())["student"]["adapter"] == "lora"

    merged, split = tmp_path / "merged", tmp_path / "split"
    assert hpo("train", str(job), "--out", str(merged), cwd=tmp_path).returncode == 0
    assert hpo("train", str(job), "--out", str(split), "--adapter-only", cwd=tmp_path).returncode == 0
    model = AutoModelForCausalLM.from_pretrained(merged).eval()
    assert not any("lora" in name for name, _ in model.named_parameters())
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(split), split / "adapter").eval()
    ids = torch.tensor([[2, 3, 4, 5, 6, 7]])
    with torch.no_grad():  # the same job, seed and data: the merged model computes what base + adapter compute
        assert torch.allclose(model(ids).logits, adapted(ids).logits, atol=1e-4)
    text = pipeline("text-generation", model=str(merged))("The river", max_new_tokens=4, do_sample=False)
    assert text[0]["generated_text"].startswith("The river")
    assert json.loads((merged / "metrics.json").read_text())["student"] == "distilled student"

    plain = tmp_path / "plain.yaml"
    written = yaml.safe_load(job.read_text())
    written["student"] = {"num_layers": 2}
    plain.write_text(yaml.safe_dump(written))
    refused = hpo("train", str(plain), "--out", str(tmp_path / "x"), "--adapter-only", cwd=tmp_path)
    assert (
        refused.returncode != 0 and "--adapter-only" in refused.stderr and "student.adapter is none" in refused.stderr
    )
