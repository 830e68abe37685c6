"""Width-pruned students searched through the real runner: a BERT teacher (the tiny one), rt-snippets, SQLite."""

from __future__ import annotations

import uuid
from pathlib import Path

import optuna

from objectives import METRICS
from tests.conftest import tiny_config
from tests.hpo_tests.execution_tests.test_run import hpo, write


def bert_params(layers: int, hidden: int, ffn: int, heads: int, head_size: int, labels: int = 2) -> int:
    """Parameters of a BERT classifier of MiniLM-L6's vocabulary (30,522) and 512 positions at these widths."""
    inner = head_size * heads
    embeddings = (30_522 + 512 + 2) * hidden + 2 * hidden
    layer = 3 * (hidden * inner + inner) + (inner * hidden + hidden) + (ffn * hidden + ffn) + (hidden * ffn + hidden)
    return embeddings + layers * (layer + 4 * hidden) + (hidden * hidden + hidden) + (labels * hidden + labels)


def test_width_ratios_are_searched_and_each_width_is_measured_once(tmp_path: Path) -> None:
    name = f"widths-{uuid.uuid4().hex[:8]}"
    config = tiny_config(
        name,
        sampler={"name": "grid"},
        student={"num_layers": 2, "hidden_ratio": 0.5, "ffn_ratio": 0.5, "calibration_size": 32},
        search_space={"student.heads_ratio": {"type": "categorical", "choices": [0.5, 1.0]}},
    )
    url = f"sqlite:///{tmp_path}/study.db"
    run = hpo("run", str(write(tmp_path, config)), "--storage", url, cwd=tmp_path)
    assert run.returncode == 0, run.stderr

    study = optuna.load_study(study_name=name, storage=url)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert sorted(t.params["student.heads_ratio"] for t in complete) == [0.5, 1.0]
    for trial in complete:
        assert set(METRICS) <= set(trial.user_attrs)
        assert 0 <= trial.user_attrs["accuracy"] <= 1 and trial.user_attrs["latency_ms"] > 0
        heads = 2 if trial.params["student.heads_ratio"] == 0.5 else 4  # of the tiny teacher's 4 (width 64, ffn 128)
        assert trial.user_attrs["params"] == bert_params(2, hidden=32, ffn=64, heads=heads, head_size=16)
    # one cost measurement per width, kept in the study under distinct architecture keys
    costs = {k: v for k, v in study._storage.get_study_system_attrs(study._study_id).items() if k.startswith("cost:")}
    assert len(costs) == 2
    assert sorted(v["params"] for v in costs.values()) == sorted(t.user_attrs["params"] for t in complete)
