"""Mixed precision on a GPU, shown without one: the choice by compute capability (faked), a step the fp16 scaler
skips leaving the LR schedule where it was (a real CPU GradScaler), and fp32 master weights from a checkpoint
saved in fp16; live and cached teacher targets in the same precision under autocast."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from objectives import load_classifier
from objectives.data import Encoded
from objectives.students._models import narrow_classifier
from objectives.training._logits import teacher_logits
from objectives.training._train import autocast_dtype, optimizer_step, teacher_targets
from tests.conftest import tiny_bert

CUDA = torch.device("cuda", 0)


@pytest.mark.parametrize(
    ("capability", "expected"),
    [((7, 0), torch.float16), ((7, 5), torch.float16), ((8, 0), torch.bfloat16), ((9, 0), torch.bfloat16)],
)
def test_auto_precision_is_chosen_by_compute_capability(
    monkeypatch: pytest.MonkeyPatch, capability: tuple[int, int], expected: torch.dtype
) -> None:
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    # A V100 / T4 says bf16 is supported (emulated): that must not choose it.
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert autocast_dtype("auto", CUDA) is expected
    # explicit choices are kept whatever the card
    assert autocast_dtype("bf16", CUDA) is torch.bfloat16
    assert autocast_dtype("fp16", CUDA) is torch.float16
    assert autocast_dtype("fp32", CUDA) is None


def test_no_autocast_on_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_gpu(device: object = None) -> tuple[int, int]:
        raise AssertionError("no GPU to ask")

    monkeypatch.setattr(torch.cuda, "get_device_capability", no_gpu)
    for precision in ("auto", "fp32", "bf16", "fp16"):
        assert autocast_dtype(precision, torch.device("cpu")) is None


def _setup() -> tuple[torch.nn.Linear, torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR, torch.amp.GradScaler]:
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (step + 1))
    return model, optimizer, schedule, torch.amp.GradScaler("cpu", init_scale=1024.0)


def test_a_step_the_scaler_skips_leaves_the_schedule_where_it_was() -> None:
    model, optimizer, schedule, scaler = _setup()
    before = copy.deepcopy(model.state_dict())
    scaler.scale(model(torch.tensor([[1.0, float("inf")]])).sum()).backward()  # inf gradients: the step is skipped
    assert not optimizer_step(optimizer, schedule, scaler, list(model.parameters()), max_grad_norm=1.0)
    assert scaler.get_scale() == 512.0 and schedule.last_epoch == 0 and optimizer.param_groups[0]["lr"] == 0.1
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())

    scaler.scale(model(torch.tensor([[1.0, 2.0]])).sum()).backward()  # finite: taken, the schedule moves on
    assert optimizer_step(optimizer, schedule, scaler, list(model.parameters()), max_grad_norm=None)
    assert schedule.last_epoch == 1 and optimizer.param_groups[0]["lr"] == pytest.approx(0.05)
    assert not torch.equal(before["weight"], model.weight.detach())


def test_without_a_scaler_every_step_is_taken() -> None:
    model, optimizer, schedule, _ = _setup()
    off = torch.amp.GradScaler("cpu", enabled=False)
    for _ in range(3):
        model(torch.tensor([[1.0, 2.0]])).sum().backward()
        assert optimizer_step(optimizer, schedule, off, list(model.parameters()), max_grad_norm=1.0)
    assert schedule.last_epoch == 3


def test_checkpoints_saved_in_half_precision_load_with_fp32_parameters(tmp_path: Path) -> None:
    plain = load_classifier(tiny_bert(), 2)
    plain.half().save_pretrained(tmp_path / "plain")
    config = copy.deepcopy(plain.config)  # a width-pruned student: head size kept, hidden size halved
    config.attention_head_size, config.hidden_size = 16, 32
    narrow_classifier(config).half().save_pretrained(tmp_path / "narrow")
    for name in ("plain", "narrow"):
        loaded = load_classifier(str(tmp_path / name), 2)
        assert {p.dtype for p in loaded.parameters()} == {torch.float32}, name


def test_live_and_cached_teacher_targets_are_the_same_fp32_numbers_under_autocast() -> None:
    """Under bf16 autocast (here the CPU's, as on a GPU) a live teacher would give bf16 logits while the cache holds
    fp32 ones: teacher_targets runs the live teacher outside autocast, so both give the same fp32 numbers."""
    teacher = load_classifier(tiny_bert(), 2)
    g = torch.Generator().manual_seed(0)
    texts = [[101, *torch.randint(1000, 5000, (int(n),), generator=g).tolist(), 102] for n in range(4, 36)]
    data = Encoded(texts, [i % 2 for i in range(len(texts))], 0)
    cache = teacher_logits(teacher, data, 8)
    cpu = torch.device("cpu")
    batch = next(data.train_batches(8, 0))
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with torch.no_grad():
            under_autocast = teacher(**inputs).logits  # what the live teacher gave before
        live = teacher_targets(teacher, inputs, {}, batch["index"], cpu).logits
        cached = teacher_targets(cache, inputs, {}, batch["index"], cpu)
    assert under_autocast.dtype == torch.bfloat16
    assert live.dtype == cached.dtype == torch.float32
    torch.testing.assert_close(live, cached)
    assert not torch.allclose(under_autocast.float(), cached)  # the difference the test would see otherwise
    assert teacher_targets(None, inputs, {}, batch["index"], cpu) is None
