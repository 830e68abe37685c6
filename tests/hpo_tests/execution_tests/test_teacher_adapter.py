"""Teacher correction (``teacher.adapter: lora``): the study's teacher is adapted once, and the logit cache every
trial reads is the adapted teacher's."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import torch

from hpo import config_from_dict
from hpo.execution import LogitCache, ensure_teacher
from storage import ArtifactDir, Leases
from tests.conftest import write_corpus
from tests.hpo_tests.test_causal_lm import lm_config


def test_the_teacher_is_adapted_once_per_study_and_the_cache_is_the_adapted_teachers(
    tiny_lm: str, tmp_path: Path
) -> None:
    from objectives.tasks import _causal_lm as lm

    corpus = write_corpus(tmp_path / "corpus.txt")
    train = {"max_steps": 6, "batch_size": 4, "eval_every": 6, "lr": 3e-2, "warmup_ratio": 0.0}
    teacher = {"model": tiny_lm, "train": train, "adapter": "lora", "lora_r": 4}
    config = config_from_dict(lm_config("corrected", tiny_lm, corpus, teacher=teacher, student={"num_layers": 2}))
    work = lm.prepare_workload(config.data, tiny_lm)
    artifacts, leases = ArtifactDir(tmp_path / "artifacts", "corrected"), Leases(f"sqlite:///{tmp_path}/leases.db")
    study = optuna.create_study()
    path, metrics = ensure_teacher(config, work, artifacts, study, leases)
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    again, _ = ensure_teacher(config, work, artifacts, optuna.create_study(), leases)  # another worker's process
    assert again == path and (path / "model.safetensors").stat().st_mtime_ns == stamp  # adapted once
    assert metrics["trainable_params"] < 0.3 * metrics["params"]  # an adapter trained, not every weight

    cache = LogitCache(artifacts, path, leases, batch_size=4)
    cached = cache("train", work.train, lm.load_teacher(path, work))
    ids = work.train.batch(range(4))["input_ids"]
    rows = cached.logits(torch.arange(4))
    with torch.no_grad():
        adapted = lm.load_teacher(path, work)(ids).logits
        base = lm.load_teacher(Path(tiny_lm), work)(ids).logits
    assert torch.allclose(rows, adapted, atol=1e-2)  # the adapted teacher's, up to the fp16 states
    assert (rows - base).abs().max() > 10 * (rows - adapted).abs().max()  # not the base model's


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"device": "cpu", "student": {"adapter": "qlora"}}, "student.adapter"),
        (
            {
                "device": "cpu",
                "search_space": {"student.adapter": {"type": "categorical", "choices": ["lora", "qlora"]}},
            },
            "search_space.student.adapter",
        ),
        ({"search_space": {"student.lora_r": {"type": "int", "low": 8, "high": 8}}}, "search_space.student.lora_r"),
        ({"student": {"lora_r": 4}}, "student.lora_r"),
    ],
)
def test_a_study_refuses_qlora_on_a_cpu_and_lora_keys_without_an_adapter(
    tiny_lm: str, tmp_path: Path, overrides: dict, key: str
) -> None:
    from objectives import ConfigError

    raw = lm_config("refused", tiny_lm, write_corpus(tmp_path / "corpus.txt"), search_space={})
    raw.update({k: v for k, v in overrides.items() if k != "student"})
    raw["student"] = {"num_layers": 2, **overrides.get("student", {})}
    with pytest.raises(ConfigError) as error:
        config_from_dict(raw)
    assert error.value.key == key and "\n" not in str(error.value)
