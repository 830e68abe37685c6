import pytest
import torch

from objectives import TrainArgs
from objectives.training import build_optimizer, layer_depth, param_groups


class _Encoder(torch.nn.Module):
    """Parameter names shaped like a BERT classifier's."""

    def __init__(self, n_layers: int) -> None:
        super().__init__()
        self.embeddings = torch.nn.Embedding(10, 4)
        self.layer = torch.nn.ModuleList(torch.nn.Linear(4, 4) for _ in range(n_layers))
        self.norm = torch.nn.LayerNorm(4)
        self.classifier = torch.nn.Linear(4, 2)


def test_layer_depths() -> None:
    assert layer_depth("bert.embeddings.word_embeddings.weight", 6) == 0
    assert layer_depth("bert.encoder.layer.0.attention.self.query.weight", 6) == 1
    assert layer_depth("bert.encoder.layer.5.output.dense.bias", 6) == 6
    assert layer_depth("classifier.weight", 6) == 7
    assert layer_depth("model.layers.11.mlp.up_proj.weight", 12) == 12


def test_layerwise_lr_decay_and_no_weight_decay_on_bias_and_norm() -> None:
    model = torch.nn.Module()
    model.encoder = _Encoder(3)
    args = TrainArgs(lr=1e-3, lr_decay=0.5, weight_decay=0.1)
    groups = param_groups(model.encoder, args, n_layers=3)
    lr_by_name = {n: g["lr"] for g in groups for n in g["names"]}
    wd_by_name = {n: g["weight_decay"] for g in groups for n in g["names"]}
    # lr_d = lr * decay^(L + 1 - d): head at lr, top layer at lr/2, embeddings at lr/16
    assert lr_by_name["classifier.weight"] == pytest.approx(1e-3)
    assert lr_by_name["layer.2.weight"] == pytest.approx(5e-4)
    assert lr_by_name["layer.0.weight"] == pytest.approx(1.25e-4)
    assert lr_by_name["embeddings.weight"] == pytest.approx(1e-3 * 0.5**4)
    assert wd_by_name["layer.1.weight"] == 0.1
    assert wd_by_name["layer.1.bias"] == 0.0
    assert wd_by_name["norm.weight"] == 0.0
    assert sum(len(g["params"]) for g in groups) == len(list(model.encoder.parameters()))


def test_warmup_then_linear_decay() -> None:
    model = _Encoder(1)
    args = TrainArgs(lr=1.0, max_steps=10, warmup_ratio=0.2)
    optimizer, schedule = build_optimizer(model, args, 1, torch.device("cpu"))
    head = next(g for g in optimizer.param_groups if g["lr"] > 0 and g["weight_decay"] > 0)
    lrs = []
    for _ in range(10):
        lrs.append(head["lr"])
        optimizer.step()
        schedule.step()
    assert lrs[0] == pytest.approx(0.5) and lrs[1] == pytest.approx(1.0)
    assert lrs[2] > lrs[5] > lrs[9] > 0
    assert head["lr"] == pytest.approx(0.0)


def test_adamw_is_fused_on_the_cpu_and_updates_as_the_per_tensor_loop_does(monkeypatch: pytest.MonkeyPatch) -> None:
    args = TrainArgs(lr=1e-2, max_steps=5, warmup_ratio=0.0, weight_decay=0.1, lr_decay=0.8)

    def trained() -> tuple[bool, list[torch.Tensor]]:
        torch.manual_seed(0)
        model = _Encoder(2)
        optimizer, schedule = build_optimizer(model, args, 2, torch.device("cpu"))
        for step in range(5):
            tokens = torch.arange(step, step + 6) % 10
            loss = model.classifier(model.norm(model.layer[1](model.layer[0](model.embeddings(tokens))))).square()
            loss.mean().backward()
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()
        return bool(optimizer.defaults["fused"]), [p.detach().clone() for p in model.parameters()]

    fused, fused_params = trained()  # the shipped FUSED_DEVICES
    monkeypatch.setattr("objectives.training._optim.FUSED_DEVICES", ())
    looped, looped_params = trained()
    assert fused and not looped
    torch.manual_seed(0)
    initial = list(_Encoder(2).parameters())
    assert all(not torch.equal(p, q) for p, q in zip(fused_params, initial, strict=True))  # every parameter moved
    for p, q in zip(fused_params, looped_params, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
