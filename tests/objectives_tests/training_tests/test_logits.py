"""Stored teacher logits: exact for classification, top-k plus the remaining mass for large vocabularies."""

import pytest
import torch

from objectives import DataArgs, load_classifier, prepare_workload, teacher_logits
from objectives.training import TopKLogits, cat_logits, compress_logits, kd_loss, lm_kd_loss, load_logits, read_logits


def _logits(n: int = 6, vocab: int = 50, seed: int = 0) -> torch.Tensor:
    return 3 * torch.randn(n, vocab, generator=torch.Generator().manual_seed(seed))


def _buckets(probs: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """A full distribution folded by hand into (top-k indices, everything else)."""
    top = probs.gather(-1, indices)
    return torch.cat([top, 1 - top.sum(-1, keepdim=True)], dim=-1)


def test_classification_logits_are_stored_whole() -> None:
    z = _logits(vocab=2)
    assert compress_logits(z, 64) is z and load_logits(z) is z


def test_top_k_keeps_the_largest_and_the_exact_remaining_mass_at_t1() -> None:
    z = _logits()
    top = compress_logits(z, 5)
    assert isinstance(top, TopKLogits) and top.values.shape == (6, 5) and top.vocab == 50
    assert torch.equal(top.values, z.topk(5).values)
    expected = _buckets(z.softmax(-1), top.indices)
    assert torch.allclose(top.log_probs(1.0).exp(), expected, atol=1e-6)
    # the student's side is folded exactly at any temperature
    student = _logits(seed=1)
    folded = top.collapse((student / 3).log_softmax(-1)).exp()
    assert torch.allclose(folded, _buckets((student / 3).softmax(-1), top.indices), atol=1e-6)


def test_a_flat_tail_is_exact_at_every_temperature() -> None:
    z = torch.full((2, 40), -1.0)
    z[:, :4] = torch.tensor([5.0, 3.0, 2.0, 0.5])
    top = compress_logits(z, 4)
    for t in (0.5, 2.0, 8.0):
        expected = _buckets((z / t).softmax(-1), top.indices)
        assert torch.allclose(top.log_probs(t).exp(), expected, atol=1e-6)


def test_kd_loss_on_top_k_equals_the_full_loss_when_one_token_is_left_out() -> None:
    # with k = V - 1 the tail is a single token, so the k + 1 buckets are the whole distribution at any T
    z_t, z_s = _logits(), _logits(seed=1)
    y = torch.randint(0, 50, (6,), generator=torch.Generator().manual_seed(2))
    top = compress_logits(z_t, 49)
    for t, alpha in ((1.0, 0.5), (4.0, 0.9)):
        full = kd_loss(z_s, y, z_t, temperature=t, alpha=alpha)
        assert kd_loss(z_s, y, top, temperature=t, alpha=alpha).item() == pytest.approx(full.item(), rel=1e-5)
    # a small k folds the distributions: KL over coarser buckets is never above the full KL (data processing)
    small = compress_logits(z_t, 5)
    assert kd_loss(z_s, y, small, temperature=1.0, alpha=1.0) <= kd_loss(z_s, y, z_t, temperature=1.0, alpha=1.0)


def test_rows_concatenation_and_state_round_trip() -> None:
    z = _logits(n=10)
    top = compress_logits(z, 3)
    joined = cat_logits([compress_logits(z[:4], 3), compress_logits(z[4:], 3)])
    assert torch.equal(joined.values, top.values) and torch.equal(joined.rest, top.rest)
    rows = torch.tensor([7, 2])
    assert torch.equal(top[rows].indices, top.indices[rows])
    again = load_logits(top.state())
    assert torch.equal(again.indices.long(), top.indices) and again.vocab == 50 and len(again) == 10
    for t in (1.0, 2.0):  # values are stored as fp16 log-probabilities: the same distribution at every T
        assert torch.allclose(again.log_probs(t), top.log_probs(t), atol=2e-3)


def test_teacher_logits_compress_batch_by_batch_in_example_order() -> None:
    work = prepare_workload(DataArgs(max_train_rows=40, max_val_rows=8, max_length=24), "minilm-l6")
    teacher = load_classifier("minilm-l6", num_labels=300).eval()  # 300 outputs: a small "vocabulary"
    full = teacher_logits(teacher, work.train, batch_size=16)
    top = teacher_logits(teacher, work.train, batch_size=16, top_k=8)
    expected = load_logits(compress_logits(full, 8).state())  # kept compactly batch by batch, as the cache stores it
    assert torch.allclose(top.values.float(), expected.values.float(), atol=1e-3)
    assert torch.equal(top.indices, expected.indices)
    assert torch.allclose(top.rest.float(), expected.rest.float(), atol=1e-5)


def test_top_k_of_token_logits_keeps_the_leading_shape() -> None:
    z = 3 * torch.randn(3, 4, 50, generator=torch.Generator().manual_seed(5))  # (N, L, V)
    top = compress_logits(z, 6)
    assert top.values.shape == (3, 4, 6) and top.rest.shape == (3, 4) and len(top) == 3
    flat = compress_logits(z.reshape(12, 50), 6)
    assert torch.allclose(top.log_probs(2.0).reshape(12, 7), flat.log_probs(2.0))
    student = torch.randn(3, 4, 50).log_softmax(-1)
    assert torch.allclose(top.collapse(student).reshape(12, 7), flat.collapse(student.reshape(12, 50)))
    assert top[:, :-1].values.shape == (3, 3, 6) and top[torch.tensor([2])].rest.shape == (1, 4)


def test_a_stored_token_cache_is_compact_memory_mapped_and_gives_the_same_loss(tmp_path) -> None:
    gen = torch.Generator().manual_seed(6)
    teacher, student = 4 * torch.randn(4, 16, 300, generator=gen), 4 * torch.randn(4, 16, 300, generator=gen)
    ids = torch.randint(0, 300, (4, 16), generator=gen)
    top = compress_logits(teacher, 32)
    state = top.state()
    assert (state["values"].dtype, state["indices"].dtype, state["rest"].dtype) == (
        torch.float16,
        torch.int32,
        torch.float32,
    )
    tensors = sum(state[k].nbytes for k in ("values", "indices", "rest"))
    assert tensors / (4 * 16) == 32 * (2 + 4) + 4
    torch.save(state, tmp_path / "logits.pt")
    stored = read_logits(tmp_path / "logits.pt")
    assert isinstance(stored, TopKLogits) and stored.values.dtype == torch.float16
    for divergence in ("forward_kl", "reverse_kl", "jsd"):
        exact = lm_kd_loss(student, ids, top, temperature=2.0, alpha=0.9, divergence=divergence)
        again = lm_kd_loss(student, ids, stored, temperature=2.0, alpha=0.9, divergence=divergence)
        assert abs(again.item() - exact.item()) < 1e-3
    full = torch.randn(5, 2)
    torch.save(full, tmp_path / "full.pt")
    assert torch.equal(read_logits(tmp_path / "full.pt"), full)  # classification logits stay exact fp32
