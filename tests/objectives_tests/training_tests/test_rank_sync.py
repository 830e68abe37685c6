"""Training across ranks, in this process: gradient accumulation averages the gradients (an all-reduce) on the last
micro-batch of each optimiser step only (counted by a DDP communication hook on a real ``replicate``-d model in a
one-rank gloo group), and validation sharded by rows merges into the whole set's scores (each rank's part scored
here in turn). The 2-rank agreement with one process is in the hpo execution tests."""

import socket
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import torch.distributed as dist

from objectives import TrainArgs
from objectives.training._distributed import EvalShard, RankGroup, even_batch, merge_scores
from objectives.training._train import train
from tests.conftest import tiny_bert


class Linear(torch.nn.Module):
    """A 2-class linear classifier of 4 features (``input_ids`` as floats), shaped as the training loop expects."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.head = torch.nn.Linear(4, 2)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(logits=self.head(input_ids.float()))


class Features:
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
    train(model, Features(), None, args, loss_fn=ce, n_layers=0, evaluate=lambda *a: scored, seed=0)
    return len(calls)


def test_accumulated_micro_batches_all_reduce_once_per_step(one_rank_group: None) -> None:
    once = all_reduces(1)
    assert once >= 3  # one bucket or more a step
    assert all_reduces(4) == once  # not 4 times as many: the first three micro-batches of a step skip it


@pytest.mark.parametrize("world", [2, 3])
def test_ranks_scoring_their_slices_merge_into_the_whole_validation_scores(world: int) -> None:
    """Each "rank" scores its slices (:class:`EvalShard`) of a tiny BERT's 21-example validation set in batches of
    4 (the last batch of 1 row: ranks but the first skip it); the merged scores are the whole set's."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from objectives.data import Rows, encode
    from objectives.training._train import evaluate

    texts = [f"{'fine witty' if i % 3 else 'dull bland'} film number {'very ' * (i % 5)}{i}" for i in range(21)]
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert())
    data = encode(tokenizer, Rows(texts, [int(i % 3 > 0) for i in range(21)], ["negative", "positive"]), 32)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert(), num_labels=2).eval()
    whole = evaluate(model, data, 4)
    shards = [EvalShard(data, rank, world) for rank in range(world)]
    merged = merge_scores([evaluate(model, shard, 4) for shard in shards], shards[0].sizes)
    assert shards[0].sizes[-1] == [1] + [0] * (world - 1)
    assert sum(len(evaluate(model, shard, 4).labels) for shard in shards) == 21  # every example once
    assert (merged.preds, merged.labels) == (whole.preds, whole.labels)  # in the data's batch order
    assert merged.loss == pytest.approx(whole.loss, abs=1e-6)
    assert (merged.accuracy, merged.f1, merged.top_share) == (whole.accuracy, whole.f1, whole.top_share)


def test_ranks_scoring_their_slices_of_token_blocks_merge_into_the_whole_perplexity() -> None:
    import datasets

    from objectives import Blocks
    from objectives.evaluation import lm_evaluate
    from tests.conftest import tiny_decoder

    ids = torch.randint(0, 64, (7, 8), generator=torch.Generator().manual_seed(0))
    blocks = Blocks(datasets.Dataset.from_dict({"input_ids": ids.int().tolist()}).with_format("numpy"), 8, 0)
    model = tiny_decoder("llama", vocab_size=64, num_hidden_layers=2)
    whole = lm_evaluate(model, blocks, 3)
    shards = [EvalShard(blocks, rank, 2) for rank in range(2)]
    merged = merge_scores([lm_evaluate(model, shard, 3) for shard in shards], shards[0].sizes)
    assert merged.tokens == whole.tokens == 7 * 7
    assert merged.loss == pytest.approx(whole.loss, abs=1e-6)
    assert merged.perplexity == pytest.approx(whole.perplexity, rel=1e-6)
    assert merged.token_accuracy == whole.token_accuracy


def test_the_validation_batch_size_gives_every_rank_rows_of_every_batch() -> None:
    assert even_batch(20, 4, 2) == 4  # 5 x 4: kept
    assert even_batch(21, 4, 2) == 3  # 5 x 4 + 1 would leave rank 1 without a row of the last batch: 7 x 3
    assert even_batch(22, 4, 3) == 6  # 4 (5 x 4 + 2) and 3 (7 x 3 + 1) leave a rank out: 3 x 6 + 4
    assert even_batch(2, 4, 3) == 0  # fewer examples than ranks: scored whole on every rank
    for rows in range(3, 40):
        for batch in range(1, 9):
            size = even_batch(rows, batch, 3)
            assert size >= 3 and (rows % size == 0 or rows % size >= 3), (rows, batch, size)


def test_every_stage_reads_one_sharded_copy_of_the_live_teacher(one_rank_group: None) -> None:
    """``teacher.strategy: fsdp``: the live teacher of every stage, an on-policy run's too (``Teachers.live``), is one
    FSDP2-sharded copy (DTensor weights) computing the teacher's outputs; the teacher itself is left whole (students
    are cut from it) and cached logits as they are."""
    from torch.distributed.tensor import DTensor

    from objectives.training import Stage, Teachers
    from objectives.training._distributed import teacher_parameters
    from tests.conftest import tiny_decoder

    teacher = tiny_decoder("llama").eval().requires_grad_(False)
    cached = torch.zeros(3, 2)
    args = TrainArgs(max_steps=1, batch_size=2)
    stages = [
        Stage(Features(), args, None, teacher),
        Stage(Features(), args, None, Teachers(teacher, cached, None)),  # type: ignore[arg-type]
        Stage(Features(), args, None, None),
    ]
    _, prepared = RankGroup(0, 1, "ddp", "fsdp").prepare(Linear(), stages)
    sharded = prepared[0].teacher
    assert sharded is not teacher and prepared[1].teacher.live is sharded
    assert prepared[1].teacher.cached is cached and prepared[2].teacher is None
    assert all(isinstance(p, DTensor) for p in sharded.parameters())
    assert not any(isinstance(p, DTensor) for p in teacher.parameters())
    assert teacher_parameters(prepared) == sum(p.numel() for p in teacher.parameters())  # one rank holds it all
    ids = torch.randint(0, 100, (2, 6), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(sharded(input_ids=ids).logits, teacher(input_ids=ids).logits)
    _, kept = RankGroup(0, 1, "ddp").prepare(Linear(), stages)  # teacher.strategy: replicate
    assert kept[0].teacher is teacher and kept[1].teacher.live is teacher
