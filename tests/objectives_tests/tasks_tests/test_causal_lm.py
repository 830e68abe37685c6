"""The causal-LM task on the tiny local Llama: the calibration sample of importance ranking, the transfer set."""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from objectives import DataArgs, DistillArgs, StudentArgs, TrainArgs
from objectives.students import calibration_batches, decoder_importance, load_causal_lm
from objectives.students._pruning import CALIBRATION_SEED
from objectives.tasks import _causal_lm as lm
from tests.conftest import TINY_TEXT, write_corpus


@pytest.fixture(scope="module")
def hundred_blocks(tiny_lm: str, tmp_path_factory: pytest.TempPathFactory) -> lm.Workload:
    """A workload whose training split is 100 blocks of 16 tokens (a count that is not a multiple of 8)."""
    corpus = write_corpus(tmp_path_factory.mktemp("corpus") / "corpus.txt", documents=300)
    work = lm.prepare_workload(DataArgs(name=corpus, block_size=16, max_train_rows=100, max_val_rows=8), tiny_lm)
    assert len(work.train) == 100
    return work


@pytest.mark.parametrize("ratios", [{}, {"ffn_ratio": 0.5, "heads_ratio": 0.5}])
def test_importance_ranking_on_a_split_smaller_than_the_calibration_size_reads_every_block_once(
    hundred_blocks: lm.Workload, tiny_lm: str, ratios: dict
) -> None:
    work = hundred_blocks
    student = StudentArgs(num_layers=2, layer_selection="importance", calibration_size=256, **ratios)
    model = lm.initial_student(work, Path(tiny_lm), student, TrainArgs(), seed=0)
    assert model.config.num_hidden_layers == 2

    batches = calibration_batches(work.train, 256, batch_size=8)
    assert [len(b["input_ids"]) for b in batches] == [8] * 12 + [4]
    read = sorted(map(tuple, torch.cat([b["input_ids"] for b in batches]).tolist()))
    assert read == sorted(map(tuple, work.train.batch(range(100))["input_ids"].tolist()))  # each block once


def test_the_calibration_sample_is_drawn_with_the_seed_not_the_first_blocks(
    hundred_blocks: lm.Workload, tiny_lm: str
) -> None:
    work = hundred_blocks
    base = load_causal_lm(tiny_lm)
    ranked = lm.lm_importance(base, work.train, 10)
    drawn = random.Random(CALIBRATION_SEED).sample(range(100), 10)
    on_drawn = decoder_importance(base, [work.train.batch(drawn)])
    on_first = decoder_importance(base, [work.train.batch(range(10))])
    for key in ("influence", "hidden", "ffn"):
        assert torch.allclose(getattr(ranked, key), getattr(on_drawn, key), atol=1e-6)
    assert not torch.allclose(ranked.hidden, on_first.hidden, atol=1e-6)
    (sample,) = calibration_batches(work.train, 10, batch_size=16)
    assert torch.equal(sample["input_ids"], work.train.batch(drawn)["input_ids"])  # every trial: the same blocks


def test_the_transfer_set_is_the_capped_training_split_then_the_transfer_files(
    hundred_blocks: lm.Workload, tmp_path: Path
) -> None:
    work = hundred_blocks
    sequential = DistillArgs(approach="sequential")
    assert lm.transfer_blocks(work, sequential) is work.train  # data.max_train_rows = 100 blocks, as trials train on
    extra = tmp_path / "extra.txt"
    extra.write_text("\n".join(TINY_TEXT * 4) + "\n")
    alone = replace(sequential, transfer_files=[str(extra)], transfer_only=True)
    tokens = sum(len(work.tokenizer(t, add_special_tokens=False)["input_ids"]) + 1 for t in TINY_TEXT * 4)
    only = lm.transfer_blocks(work, alone)
    assert len(only) == tokens // 16 > 0  # the file's texts alone, packed
    both = lm.transfer_blocks(work, replace(alone, transfer_only=False))
    assert len(both) == 100 + len(only)
    assert torch.equal(both.batch(range(100))["input_ids"], work.train.batch(range(100))["input_ids"])
    assert torch.equal(both.batch(range(100, len(both)))["input_ids"], only.batch(range(len(only)))["input_ids"])


def test_max_eval_rows_caps_the_validation_and_test_blocks_and_a_pass_logs_its_progress(
    tiny_lm: str, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from objectives.evaluation import _metrics

    corpus = write_corpus(tmp_path / "corpus.txt", documents=300)
    whole = lm.prepare_workload(DataArgs(name=corpus, block_size=16), tiny_lm)
    assert len(whole.validation) > 6 and len(whole.test()) > 6
    work = lm.prepare_workload(DataArgs(name=corpus, block_size=16, max_eval_rows=3), tiny_lm)
    assert (len(work.validation), len(work.test())) == (3, 3)
    assert lm.evaluation_rows(work.corpus.args, tiny_lm) == {"validation": 3, "test": 3}
    # The trials' own cap still applies where it is the smaller.
    trials = lm.prepare_workload(DataArgs(name=corpus, block_size=16, max_val_rows=2, max_eval_rows=3), tiny_lm)
    assert (len(trials.validation), len(trials.test())) == (2, 3)

    monkeypatch.setattr(_metrics, "EVAL_LOG_SECONDS", 0.0)  # a line per batch, as a long pass logs every 10 s
    model = load_causal_lm(tiny_lm)
    with caplog.at_level("INFO", logger=_metrics.__name__):
        metrics = lm.heldout_metrics(model, work)
    assert metrics["tokens"] == 3 * 15  # 3 test blocks of 16 tokens, 15 predicted in each
    lines = [r.getMessage() for r in caplog.records if r.name == _metrics.__name__]
    assert lines[0].startswith("evaluating: 3/3 blocks (48 of 48 tokens)")  # test batches are 16 blocks

    seen: list[tuple[int, int]] = []
    caplog.clear()
    with caplog.at_level("INFO", logger=_metrics.__name__), _metrics.report_evaluation(lambda *a: seen.append(a)):
        _metrics.lm_evaluate(model, whole.validation, 4)
    assert seen[-1] == (len(whole.validation), len(whole.validation)) and seen[0] == (4, len(whole.validation))
    assert not caplog.records  # a callback (a terminal's bar) replaces the log lines
