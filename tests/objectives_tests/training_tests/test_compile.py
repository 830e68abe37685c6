"""``train.compile`` on tiny BERT students: one compile per architecture per process, its time kept out of
``train_seconds``, one warning at Dynamo's recompile limit. Compilations are counted with torch's own counting
backend (``torch._dynamo.testing.CompileCounter``: Dynamo traces and guards as with inductor, then runs the captured
graph as it is), which needs no C compiler and keeps the test fast; the slow test in ``test_train.py`` runs
inductor."""

from __future__ import annotations

import logging
import time

import pytest
import torch
from torch._dynamo.testing import CompileCounter
from transformers import AutoModelForSequenceClassification, BertConfig

from objectives import TrainArgs
from objectives.data import Encoded
from objectives.training import Stage, _compile, evaluate, fit, get_loss


def student(layers: int, seed: int) -> torch.nn.Module:
    config = BertConfig(
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=64,
        vocab_size=200,
        max_position_embeddings=64,
    )
    torch.manual_seed(seed)
    return AutoModelForSequenceClassification.from_config(config)


def texts(n: int, seed: int) -> Encoded:
    g = torch.Generator().manual_seed(seed)
    ids = [[1, *torch.randint(5, 200, (int(k),), generator=g).tolist(), 2] for k in torch.randint(4, 30, (n,))]
    return Encoded(ids, [i % 2 for i in range(n)], 0)


def test_an_architecture_compiles_once_per_process_and_compiling_is_not_training_time(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    counter = CompileCounter()
    monkeypatch.setattr(_compile, "BACKEND", counter)
    monkeypatch.setattr(_compile, "_COMPILED", {})
    monkeypatch.setattr(_compile, "_WARNED", [])
    torch._dynamo.reset()
    train_data, val_data = texts(48, 0), texts(16, 1)
    args = TrainArgs(max_steps=4, batch_size=8, eval_every=4, compile=True)

    def run(layers: int, seed: int) -> tuple[dict[str, float], float]:
        start = time.perf_counter()
        _, metrics = fit(
            student(layers, seed),
            [Stage(train_data, args, get_loss("ce"))],
            val_data,
            device=torch.device("cpu"),
            evaluate=evaluate,
            cost=lambda model: {},
            seed=0,
        )
        return metrics, time.perf_counter() - start

    caplog.set_level(logging.WARNING, logger=_compile.__name__)

    def warnings() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == _compile.__name__]

    with torch._dynamo.config.patch(recompile_limit=2):
        first, wall = run(2, seed=0)
        assert counter.frame_count == 1 and first["compile_seconds"] > 0
        # the compile is the first step's extra time, left out of train_seconds (and so of step_seconds)
        assert first["train_seconds"] < first["compile_seconds"]
        assert first["train_seconds"] + first["compile_seconds"] <= wall

        second, _ = run(2, seed=1)  # another student of the same architecture, a later trial: no compile
        assert counter.frame_count == 1 and second["compile_seconds"] == 0.0
        assert warnings() == []

        third, _ = run(3, seed=2)  # a new architecture compiles, and fills the limit (2): one warning
        assert counter.frame_count == 2 and third["compile_seconds"] > 0
        assert len(warnings()) == 1 and "recompile limit" in warnings()[0]

        fourth, _ = run(1, seed=3)  # past the limit Dynamo runs it eager: nothing compiled, no second warning
        assert counter.frame_count == 2 and fourth["compile_seconds"] == 0.0
        assert len(warnings()) == 1
    torch._dynamo.reset()
