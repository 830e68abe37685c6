"""Mixed precision on a GPU, shown without one: the choice by compute capability (faked), a step the fp16 scaler
skips leaving the LR schedule where it was (a real CPU GradScaler), and fp32 master weights from a checkpoint
saved in fp16."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from objectives import load_classifier
from objectives.students._models import narrow_classifier
from objectives.training._train import autocast_dtype, optimizer_step
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
