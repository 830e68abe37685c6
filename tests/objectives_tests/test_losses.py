import math

import pytest
import torch

from objectives._losses import LOSSES, get_loss, kd_loss


def _softmax(xs: list[float]) -> list[float]:
    exps = [math.exp(x) for x in xs]
    return [e / sum(exps) for e in exps]


def test_kd_loss_matches_hand_computation() -> None:
    zs, zt, y, t, alpha = [1.0, -0.5, 0.2], [2.0, 0.1, -1.0], 0, 3.0, 0.3
    p = _softmax([z / t for z in zs])
    q = _softmax([z / t for z in zt])
    kl = sum(qi * math.log(qi / pi) for qi, pi in zip(q, p, strict=True))
    ce = -math.log(_softmax(zs)[y])
    expected = alpha * t * t * kl + (1 - alpha) * ce
    got = kd_loss(torch.tensor([zs]), torch.tensor([y]), torch.tensor([zt]), temperature=t, alpha=alpha)
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_alpha_zero_is_cross_entropy_and_alpha_one_is_scaled_kl() -> None:
    gen = torch.Generator().manual_seed(0)
    zs, zt = torch.randn(8, 4, generator=gen), torch.randn(8, 4, generator=gen)
    y = torch.randint(0, 4, (8,), generator=gen)
    ce = torch.nn.functional.cross_entropy(zs, y)
    assert kd_loss(zs, y, zt, temperature=5.0, alpha=0.0).item() == pytest.approx(ce.item(), rel=1e-6)
    t = 4.0
    kl = torch.nn.functional.kl_div(
        torch.log_softmax(zs / t, -1), torch.softmax(zt / t, -1), reduction="batchmean"
    ).item()
    assert kd_loss(zs, y, zt, temperature=t, alpha=1.0).item() == pytest.approx(t * t * kl, rel=1e-5)


def test_kd_term_scales_with_t_squared_and_vanishes_for_equal_logits() -> None:
    z = torch.randn(4, 3)
    y = torch.zeros(4, dtype=torch.long)
    assert kd_loss(z, y, z.clone(), temperature=2.0, alpha=1.0).item() == pytest.approx(0.0, abs=1e-6)


def test_gradient_is_finite_and_flows_only_to_student() -> None:
    zs = torch.randn(16, 2, requires_grad=True)
    zt = torch.randn(16, 2) * 50  # very confident teacher
    loss = kd_loss(zs, torch.randint(0, 2, (16,)), zt, temperature=0.5, alpha=0.7)
    loss.backward()
    assert torch.isfinite(zs.grad).all()
    assert zs.grad.abs().sum() > 0


def test_registry_binds_options_and_lists_names_on_a_miss() -> None:
    z = torch.randn(2, 2)
    y = torch.tensor([0, 1])
    assert get_loss("kd", temperature=1.0, alpha=0.0)(z, y, z).item() == pytest.approx(
        get_loss("ce")(z, y, None).item()
    )
    with pytest.raises(KeyError, match="valid: \\['ce', 'kd'\\]"):
        get_loss("mse")
    assert set(LOSSES) == {"ce", "kd"}


def test_balanced_class_weights_are_inverse_frequency_and_weigh_only_the_label_term() -> None:
    from objectives._losses import balanced_weights, cross_entropy_loss

    weights = balanced_weights([0, 0, 0, 1], 3)  # N = 4, C = 3: w = 4 / (3 * n_c); class 2 has no rows
    assert torch.allclose(weights, torch.tensor([4 / 9, 4 / 3, 0.0]))
    assert torch.allclose(balanced_weights([0, 1, 2, 0, 1, 2], 3), torch.ones(3))
    torch.manual_seed(0)
    logits, labels = torch.randn(4, 3), torch.tensor([0, 0, 0, 1])
    per_row = -torch.log_softmax(logits, -1)[torch.arange(4), labels]
    w = weights[labels]
    assert torch.allclose(cross_entropy_loss(logits, labels, weight=weights), (w * per_row).sum() / w.sum())
    teacher = torch.randn(4, 3)
    unweighted = kd_loss(logits, labels, teacher, temperature=2.0, alpha=1.0)
    assert torch.allclose(kd_loss(logits, labels, teacher, temperature=2.0, alpha=1.0, weight=weights), unweighted)
    mixed = kd_loss(logits, labels, teacher, temperature=2.0, alpha=0.5, weight=weights)
    assert torch.allclose(mixed, 0.5 * unweighted + 0.5 * (w * per_row).sum() / w.sum())
