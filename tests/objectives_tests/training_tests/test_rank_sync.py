"""Gradient accumulation on a model data-parallel across ranks: the gradients are averaged (an all-reduce) on the
last micro-batch of each optimiser step only. Counted by a DDP communication hook on a real ``replicate``-d model
in a one-rank gloo group in this process (the 2-rank agreement with one process is in the hpo execution tests)."""

import socket
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import torch.distributed as dist

from objectives import TrainArgs
from objectives.training._distributed import RankGroup
from objectives.training._train import train


class Linear(torch.nn.Module):
    """A 2-class linear classifier of 4 features (``input_ids`` as floats), shaped as the training loop expects."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.head = torch.nn.Linear(4, 2)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(logits=self.head(input_ids.float()))


class Rows:
    """Random 4-feature rows labelled by the sign of their first feature."""

    def train_batches(self, batch_size: int, seed: int, **options: Any) -> Iterator[dict[str, torch.Tensor]]:
        generator = torch.Generator().manual_seed(seed)
        while True:
            x = torch.randn(batch_size, 4, generator=generator)
            yield {
                "input_ids": x,
                "attention_mask": torch.ones(batch_size, 4),
                "labels": (x[:, 0] > 0).long(),
                "index": torch.arange(batch_size),
            }


@pytest.fixture
def one_rank_group() -> Iterator[None]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def all_reduces(accumulate: int, steps: int = 3) -> int:
    """How many gradient all-reduces ``steps`` optimiser steps of ``accumulate`` micro-batches each ran."""
    model = RankGroup(0, 1, "ddp").wrap(Linear())
    calls = []

    def hook(state: object, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:  # DDP checks them
        calls.append(bucket.index())
        future = torch.futures.Future()
        future.set_result(bucket.buffer())
        return future

    model.register_comm_hook(None, hook)
    args = TrainArgs(max_steps=steps, batch_size=8, grad_accum_steps=accumulate, eval_every=steps, warmup_ratio=0.0)
    scored = SimpleNamespace(loss=0.0, scores=dict)
    ce = lambda logits, labels, teacher: torch.nn.functional.cross_entropy(logits, labels)  # noqa: E731
    train(model, Rows(), None, args, loss_fn=ce, n_layers=0, evaluate=lambda *a: scored, seed=0)
    return len(calls)


def test_accumulated_micro_batches_all_reduce_once_per_step(one_rank_group: None) -> None:
    once = all_reduces(1)
    assert once >= 3  # one bucket or more a step
    assert all_reduces(4) == once  # not 4 times as many: the first three micro-batches of a step skip it
