import math

import pytest
import torch

from objectives import ConfigError
from objectives.training import LOSSES, get_loss, kd_loss


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
    with pytest.raises(KeyError, match="valid: \\['ce', 'kd', 'lm_ce', 'lm_kd'\\]"):
        get_loss("mse")
    assert set(LOSSES) == {"ce", "kd", "lm_ce", "lm_kd"}


def test_balanced_class_weights_are_inverse_frequency_and_weigh_only_the_label_term() -> None:
    from objectives.training import balanced_weights, cross_entropy_loss

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


def _lm(batch: int = 2, length: int = 5, vocab: int = 7, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random (B, L, V) logits and (B, L) token ids."""
    gen = torch.Generator().manual_seed(seed)
    return 2 * torch.randn(batch, length, vocab, generator=gen), torch.randint(0, vocab, (batch, length), generator=gen)


def test_lm_cross_entropy_predicts_the_next_token_by_hand() -> None:
    from objectives.training import lm_ce_loss

    z = torch.tensor([[[1.0, 0.0, -1.0], [0.5, 0.2, 0.1], [3.0, -3.0, 0.0]]])  # (1, 3, 3)
    y = torch.tensor([[2, 1, 0]])
    # position 0 predicts y[1] = 1, position 1 predicts y[2] = 0; the last position predicts nothing
    nll = [-math.log(_softmax([1.0, 0.0, -1.0])[1]), -math.log(_softmax([0.5, 0.2, 0.1])[0])]
    assert lm_ce_loss(z, y).item() == pytest.approx(sum(nll) / 2, rel=1e-6)
    assert lm_ce_loss(z, torch.tensor([[2, 1, -100]])).item() == pytest.approx(nll[0], rel=1e-6)
    # the same as transformers' shift-and-flatten convention on a larger batch
    z, y = _lm()
    y[0, 3] = -100
    expected = torch.nn.functional.cross_entropy(z[:, :-1].reshape(-1, 7), y[:, 1:].reshape(-1), ignore_index=-100)
    assert lm_ce_loss(z, y).item() == pytest.approx(expected.item(), rel=1e-6)


def test_lm_divergences_by_hand() -> None:
    from objectives.training import lm_kd_loss

    zs, zt = [1.0, -0.5, 0.2], [2.0, 0.1, -1.0]
    p, q = _softmax(zs), _softmax(zt)
    student = torch.tensor([[zs, [0.0, 0.0, 0.0]]])  # (1, 2, 3): the last position is dropped
    teacher = torch.tensor([[zt, [5.0, -5.0, 0.0]]])
    y = torch.tensor([[0, 2]])

    def kd(divergence: str, **options: float) -> float:
        return lm_kd_loss(student, y, teacher, temperature=1.0, alpha=1.0, divergence=divergence, **options).item()

    forward = sum(qi * math.log(qi / pi) for qi, pi in zip(q, p, strict=True))
    reverse = sum(pi * math.log(pi / qi) for qi, pi in zip(q, p, strict=True))
    assert kd("forward_kl") == pytest.approx(forward, rel=1e-5)
    assert kd("reverse_kl") == pytest.approx(reverse, rel=1e-5) and abs(forward - reverse) > 1e-3
    beta = 0.3  # TRL's generalised JSD: beta weighs the teacher in the mixture
    m = [beta * qi + (1 - beta) * pi for qi, pi in zip(q, p, strict=True)]
    jsd = beta * sum(qi * math.log(qi / mi) for qi, mi in zip(q, m, strict=True)) + (1 - beta) * sum(
        pi * math.log(pi / mi) for pi, mi in zip(p, m, strict=True)
    )
    assert kd("jsd", jsd_beta=beta) == pytest.approx(jsd, rel=1e-5)
    # TRL's end points: beta 0 is the forward KL, beta 1 the reverse KL
    assert kd("jsd", jsd_beta=0.0) == pytest.approx(forward, rel=1e-5)
    assert kd("jsd", jsd_beta=1.0) == pytest.approx(reverse, rel=1e-5)


def test_lm_divergences_vanish_for_equal_logits_and_jsd_is_bounded_and_symmetric() -> None:
    from objectives.training import lm_kd_loss

    z, y = _lm()
    for divergence in ("forward_kl", "reverse_kl", "jsd"):
        got = lm_kd_loss(z, y, z.clone(), temperature=2.0, alpha=1.0, divergence=divergence)
        assert got.item() == pytest.approx(0.0, abs=1e-6)
    zs, zt = 10 * _lm(seed=1)[0], 10 * _lm(seed=2)[0]  # confident and different: jsd near its bound

    def jsd(a: torch.Tensor, b: torch.Tensor, beta: float = 0.5) -> float:
        return lm_kd_loss(a, y, b, temperature=1.0, alpha=1.0, divergence="jsd", jsd_beta=beta).item()

    # disjoint confident distributions reach the bound H(beta): log 2 at beta 0.5
    assert 0.9 * math.log(2) < jsd(zs, zt) <= math.log(2) and jsd(zs, zt) == pytest.approx(jsd(zt, zs), rel=1e-5)
    h = -(0.2 * math.log(0.2) + 0.8 * math.log(0.8))
    assert 0.9 * h < jsd(zs, zt, 0.2) <= h
    mild_s, mild_t = _lm(seed=1)[0], _lm(seed=2)[0]
    assert jsd(mild_s, mild_t) == pytest.approx(jsd(mild_t, mild_s), rel=1e-5)
    assert jsd(mild_s, mild_t, 0.2) != pytest.approx(jsd(mild_t, mild_s, 0.2), rel=1e-3)
    with pytest.raises(ConfigError, match="divergence: must be one of forward_kl, reverse_kl, jsd"):
        lm_kd_loss(zs, y, zt, temperature=1.0, alpha=1.0, divergence="kl")


def test_lm_kd_counts_only_predicted_tokens_and_mixes_in_cross_entropy() -> None:
    from objectives.training import lm_ce_loss, lm_kd_loss

    zs, y = _lm()
    zt = _lm(seed=3)[0]
    y[1, 2] = -100  # position 1 of row 1 predicts nothing
    base = lm_kd_loss(zs, y, zt, temperature=2.0, alpha=0.6)
    changed_s, changed_t = zs.clone(), zt.clone()
    changed_s[1, 1] += 5 * torch.randn(7)
    changed_t[1, 1] -= 3
    changed_s[:, -1] += 4  # the last position predicts nothing either
    assert lm_kd_loss(changed_s, y, changed_t, temperature=2.0, alpha=0.6).item() == pytest.approx(base.item())
    assert lm_kd_loss(zs, y, zt, temperature=2.0, alpha=0.0).item() == pytest.approx(lm_ce_loss(zs, y).item())
    # the KD term is the mean over the 7 predicted tokens (2 rows * 4 positions - 1), times T^2
    log_p, log_q = (zs[:, :-1] / 2).log_softmax(-1), (zt[:, :-1] / 2).log_softmax(-1)
    per_token = (log_q.exp() * (log_q - log_p)).sum(-1)
    per_token[1, 1] = 0
    assert lm_kd_loss(zs, y, zt, temperature=2.0, alpha=1.0).item() == pytest.approx(4 * per_token.sum().item() / 7)


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
    from objectives.training import hidden_state_loss

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
    from objectives.training import LayerDistillLoss, attention_loss, get_loss

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
    from objectives.training import attention_loss

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
    from objectives.training import LayerDistillLoss, get_loss

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


def test_classification_kd_takes_every_divergence_and_forward_kl_is_hintons() -> None:
    torch.manual_seed(0)
    student, teacher, labels = torch.randn(5, 4), torch.randn(5, 4), torch.tensor([0, 1, 2, 3, 0])
    t = 2.0
    log_p, log_q = (student / t).log_softmax(-1), (teacher / t).log_softmax(-1)
    hinton = torch.nn.functional.kl_div(log_p, log_q, reduction="batchmean", log_target=True)
    reverse = (log_p.exp() * (log_p - log_q)).sum(-1).mean()
    ce = torch.nn.functional.cross_entropy(student, labels)
    for divergence, kd in (("forward_kl", hinton), ("reverse_kl", reverse)):
        loss = kd_loss(student, labels, teacher, temperature=t, alpha=0.5, divergence=divergence)
        assert loss.item() == pytest.approx((0.5 * t * t * kd + 0.5 * ce).item(), rel=1e-5)
    jsd = kd_loss(student, labels, teacher, temperature=t, alpha=1.0, divergence="jsd") / (t * t)
    assert 0 < jsd.item() < math.log(2) and jsd.item() < min(hinton.item(), reverse.item())


def _lm_layer_terms(keep: list[int], *, final_norm: bool = True) -> tuple[float, float]:
    """(hidden, attention) terms of :class:`LayerDistillLoss` between a tiny Llama (random final norm) and the
    student of its layers ``keep``, on one batch: the loss less its logit term."""
    from objectives import cut_decoder
    from objectives.students import final_norm as norm_of
    from objectives.training import LayerDistillLoss
    from tests.conftest import tiny_decoder
    from tests.objectives_tests.students_tests.test_decoders import _ids, scrambled_final_norm

    teacher = scrambled_final_norm(tiny_decoder("llama", initializer_range=0.3))  # attention far from uniform
    student = cut_decoder(teacher, keep).eval()
    ids = _ids()
    mask = torch.ones_like(ids)
    with torch.no_grad():
        t, s = (
            m.set_attn_implementation("eager")
            or m(ids, attention_mask=mask, output_hidden_states=True, output_attentions=True)
            for m in (teacher, student)
        )
    logits = get_loss("lm_kd", temperature=2.0, alpha=0.5)
    norms = (norm_of(student), norm_of(teacher)) if final_norm else None
    terms = []
    for hidden, attention in ((1.0, 0.0), (0.0, 1.0)):
        loss = LayerDistillLoss(
            logits,
            keep,
            hidden_weight=hidden,
            attention_weight=attention,
            student_width=32,
            teacher_width=32,
            final_norms=norms,
        )
        assert list(loss.parameters()) == []  # the norms are the models', not the loss's
        terms.append((loss(s, ids, t, mask) - logits(s.logits, ids, t.logits)).item())
    return terms[0], terms[1]


def test_lm_layer_terms_vanish_for_identical_layers_and_grow_once_the_student_differs() -> None:
    assert _lm_layer_terms([0, 1, 2, 3]) == pytest.approx((0, 0), abs=1e-6)  # every layer kept
    # the first two layers: the same states and attentions as the teacher's first two
    assert _lm_layer_terms([0, 1]) == pytest.approx((0, 0), abs=1e-6)
    hidden, attention = _lm_layer_terms([0, 2])  # layer 2 now reads layer 0's output
    assert hidden > 0.1 and attention > 0.1


def test_lm_hidden_states_are_compared_after_the_final_norm() -> None:
    # The student of the first two layers ends with its (normed) last state, the teacher's layer 1 output is raw:
    # compared as returned they differ although the residual streams are equal.
    hidden, _ = _lm_layer_terms([0, 1], final_norm=False)
    assert hidden > 1
    assert _lm_layer_terms([0, 1])[0] == pytest.approx(0, abs=1e-6)
