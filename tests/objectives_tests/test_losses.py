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


def _tiny_bert(layers: int = 3, seed: int = 0) -> torch.nn.Module:
    """A tiny BERT classifier (eager attention, so it returns attention probabilities), in eval mode."""
    from transformers import AutoModelForSequenceClassification, BertConfig

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=60, hidden_size=32, num_hidden_layers=layers, num_attention_heads=4, intermediate_size=64
    )
    config._attn_implementation = "eager"
    return AutoModelForSequenceClassification.from_config(config).eval()


def _batch(pad_last: int = 2) -> dict[str, torch.Tensor]:
    ids = torch.randint(1, 60, (3, 7), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[0, -pad_last:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def _outputs(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> object:
    return model(**batch, output_hidden_states=True, output_attentions=True)


def test_hidden_state_loss_matches_the_formula_and_ignores_padding() -> None:
    from objectives._losses import hidden_state_loss

    gen = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 4, 3, generator=gen), torch.randn(2, 4, 3, generator=gen)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    real = mask.bool()
    expected = ((s - t) ** 2)[real].sum() / (real.sum() * 3)
    assert hidden_state_loss([s], [t], mask).item() == pytest.approx(expected.item(), rel=1e-6)
    s2 = s.clone()
    s2[1, 3] += 100.0  # a padded token
    assert hidden_state_loss([s2], [t], mask).item() == pytest.approx(expected.item(), rel=1e-6)


def test_layer_terms_vanish_for_the_teacher_as_its_own_student() -> None:
    from objectives import StudentArgs, build_student
    from objectives._losses import LayerDistillLoss, attention_loss, get_loss

    teacher = _tiny_bert()
    student = build_student(teacher, StudentArgs()).eval()  # every layer kept, weights copied
    student.config._attn_implementation = "eager"
    batch = _batch()
    with torch.no_grad():
        s, t = _outputs(student, batch), _outputs(teacher, batch)
    assert len(s.attentions) == 3 and s.attentions[0].shape == (3, 4, 7, 7)
    loss = LayerDistillLoss(
        get_loss("kd", temperature=2.0, alpha=1.0),
        [0, 1, 2],
        hidden_weight=1.0,
        attention_weight=1.0,
        student_width=32,
        teacher_width=32,
    )
    assert loss.project is None  # equal widths: the identity
    assert loss(s, torch.zeros(3, dtype=torch.long), t, batch["attention_mask"]).item() == pytest.approx(0, abs=1e-6)
    # a different model attends differently: the attention term is positive
    other = _outputs(_tiny_bert(seed=1), batch)
    assert attention_loss(other.attentions, t.attentions, batch["attention_mask"]).item() > 0


def test_attention_loss_averages_heads_when_the_student_has_fewer() -> None:
    from objectives._losses import attention_loss

    gen = torch.Generator().manual_seed(0)
    teacher = torch.randn(2, 4, 5, 5, generator=gen).softmax(-1)
    mask = torch.ones(2, 5, dtype=torch.long)
    student = teacher.mean(1, keepdim=True).expand(2, 2, 5, 5)  # 2 heads, whose mean equals the teacher's
    assert attention_loss([student], [teacher], mask).item() == pytest.approx(0, abs=1e-6)
    other = torch.randn(2, 4, 5, 5, generator=gen).softmax(-1)
    kl = (teacher * (teacher / other).log()).sum(-1).mean()  # KL over keys, mean over queries, heads, examples
    assert attention_loss([other], [teacher], mask).item() == pytest.approx(kl.item(), rel=1e-5)


def test_hidden_state_gradient_reaches_the_map_of_a_narrow_student() -> None:
    from objectives import Encoded, StudentArgs, build_student
    from objectives._losses import LayerDistillLoss, get_loss

    teacher = _tiny_bert()
    ids = torch.randint(1, 60, (16, 6), generator=torch.Generator().manual_seed(2)).tolist()
    calibration = Encoded(ids, [0] * 16, 0)
    student = build_student(teacher, StudentArgs(layers=[0, 2], hidden_ratio=0.5), calibration=calibration)
    assert student.config.hidden_size == 16
    loss = LayerDistillLoss(
        get_loss("kd", temperature=2.0, alpha=0.5),
        [0, 2],
        hidden_weight=1.0,
        attention_weight=0.0,
        student_width=16,
        teacher_width=32,
    )
    assert loss.model_outputs == {"output_hidden_states": True, "output_attentions": False}
    batch = _batch()
    with torch.no_grad():
        t = teacher(**batch, output_hidden_states=True)
    s = student(**batch, output_hidden_states=True)
    value = loss(s, torch.zeros(3, dtype=torch.long), t, batch["attention_mask"])
    value.backward()
    assert loss.project is not None and loss.project.weight.grad.abs().sum() > 0
    assert student.bert.encoder.layer[0].output.dense.weight.grad.abs().sum() > 0
