"""Stored teacher logits: whole for classification, the LM head's inputs for a causal LM (exact at every T)."""

import datasets
import pytest
import torch

from objectives import DataArgs, load_classifier, prepare_workload, teacher_logits
from objectives._config import ConfigError
from objectives.data import Blocks
from objectives.training import HeadInputs, cached_rows, lm_head, lm_kd_loss, load_logits, read_logits
from tests.conftest import tiny_decoder

# fp16 keeps 11 significant bits of each hidden state (relative rounding 2^-11 = 4.9e-4): the logits below (std 5)
# come back within 5e-3, which moves the KD loss by under 1e-5 and its gradient by under 2e-4 (relative) at T = 2.
# The earlier top-k cache (flat tail) missed the same loss by 3.7e-4 with k = 64 and 1.5e-2 with k = 8.
LOSS_BOUND = 1e-4
GRAD_BOUND = 1e-3


def _blocks(n: int = 6, length: int = 12, vocab: int = 128, seed: int = 0) -> Blocks:
    ids = torch.randint(0, vocab, (n, length), generator=torch.Generator().manual_seed(seed)).int().numpy()
    return Blocks(datasets.Dataset.from_dict({"input_ids": ids}).with_format("numpy"), length, 0)


def _sharp_decoder(family: str = "llama", **overrides: object) -> torch.nn.Module:
    """A tiny decoder whose (tied) embedding is scaled up: logits spread over about 10 units, as a trained LM's do,
    not the near-uniform distribution of a fresh initialisation."""
    model = tiny_decoder(family, **overrides)
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(40)
    return model


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def test_a_decoders_cache_gives_the_live_teachers_kd_loss_and_gradient_at_t2(tmp_path) -> None:
    """Cached KD = live full-vocabulary KD at T = 2 for every divergence, up to the fp16 rounding of the states
    (:data:`LOSS_BOUND`, :data:`GRAD_BOUND`)."""
    teacher, data = _sharp_decoder(), _blocks()
    stored = teacher_logits(teacher, data, batch_size=4)  # batches of 4 and 2, then put back in example order
    assert isinstance(stored, HeadInputs) and stored.states.shape == (6, 12, 32) and stored.bias is None
    assert stored.states.dtype == torch.float16 and stored.weight.shape == (128, 32)
    torch.save(stored.state(), tmp_path / "logits.pt")
    cache = read_logits(tmp_path / "logits.pt").head_to("cpu")  # memory-mapped, as trials read it
    rows = torch.tensor([4, 1, 5])
    batch = data.batch(rows.tolist())
    with torch.no_grad():
        live = teacher(input_ids=batch["input_ids"]).logits
    cached = cached_rows(cache, rows, torch.device("cpu"))
    assert cached.shape == live.shape and cached.dtype == torch.float32
    assert live.std() > 3  # a spread-out teacher, where the tempered tail matters
    student = 3 * torch.randn(live.shape, generator=torch.Generator().manual_seed(1))
    for divergence in ("forward_kl", "reverse_kl", "jsd"):
        losses, grads = [], []
        for z_t in (live, cached):
            z_s = student.clone().requires_grad_()
            loss = lm_kd_loss(z_s, batch["labels"], z_t, temperature=2.0, alpha=1.0, divergence=divergence)
            loss.backward()
            losses.append(loss.detach())
            grads.append(z_s.grad)
        assert _rel(losses[1], losses[0]) < LOSS_BOUND, divergence
        assert _rel(grads[1], grads[0]) < GRAD_BOUND, divergence


def test_a_head_with_a_bias_is_stored_and_applied() -> None:
    teacher = _sharp_decoder("gpt2")
    teacher.lm_head.bias = torch.nn.Parameter(torch.randn(128))  # GPT-2's head has none; give it one
    data = _blocks(n=3, length=8)
    stored = load_logits(teacher_logits(teacher, data, batch_size=2).state())
    assert stored.bias is not None and torch.equal(stored.bias, teacher.lm_head.bias.detach())
    with torch.no_grad():
        live = teacher(input_ids=data.batch([0, 1, 2])["input_ids"]).logits
    assert _rel(stored.logits(torch.tensor([0, 1, 2])), live) < 1e-3


def test_a_head_that_is_not_linear_in_the_last_state_is_refused() -> None:
    # Gemma 2 soft-caps its logits (30 tanh(z / 30)): they are not the head applied to the last hidden state
    from transformers import AutoModelForCausalLM, Gemma2Config

    config = Gemma2Config(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        final_logit_softcapping=5.0,
    )
    torch.manual_seed(0)
    teacher = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        teacher.get_output_embeddings().weight.mul_(40)
    with pytest.raises(ConfigError, match=r"distill\.cache_teacher_logits"):
        teacher_logits(teacher, _blocks(n=2, length=8), batch_size=2)


def test_classification_logits_are_stored_whole() -> None:
    work = prepare_workload(DataArgs(max_train_rows=20, max_val_rows=8, max_length=16), "minilm-l6")
    teacher = load_classifier("minilm-l6", num_labels=3).eval()
    assert lm_head(teacher) is None
    full = teacher_logits(teacher, work.train, batch_size=8)
    assert isinstance(full, torch.Tensor) and full.shape == (20, 3) and full.dtype == torch.float32
    rows = torch.tensor([7, 2])
    assert torch.equal(cached_rows(full, rows, torch.device("cpu")), full[rows])
    assert load_logits(full) is full


def test_a_decoders_cache_build_copies_states_only_and_runs_the_head_once(monkeypatch) -> None:
    """No (B, L, V) logits reach the host: every copy to the CPU is a (B, L, d) fp16 batch of states; the LM head
    runs on the first batch only (checked against the logits), and the build's time split is filled in."""
    teacher, data = _sharp_decoder(), _blocks(n=6, length=12)
    head_outputs: list[tuple[int, ...]] = []
    teacher.get_output_embeddings().register_forward_hook(lambda m, a, out: head_outputs.append(tuple(out.shape)))
    copies: list[tuple[tuple[int, ...], torch.dtype]] = []
    real_cpu = torch.Tensor.cpu

    def spy(tensor: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        copies.append((tuple(tensor.shape), tensor.dtype))
        return real_cpu(tensor, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "cpu", spy)
    timings: dict[str, float] = {}
    stored = teacher_logits(teacher, data, batch_size=4, timings=timings)
    monkeypatch.undo()
    assert head_outputs == [(4, 12, 128), (2, 0, 128)]  # the second batch's head got an empty slice
    batches = [(shape, dtype) for shape, dtype in copies if len(shape) == 3]
    assert batches == [((4, 12, 32), torch.float16), ((2, 12, 32), torch.float16)]
    assert not any(shape[-1] == 128 and len(shape) == 3 for shape, _ in copies)  # never a batch of logits
    assert timings["batches"] == 2 and timings["bytes"] == 6 * 12 * 32 * 2
    assert timings["device"] > 0 and timings["host_copy"] >= 0
    with torch.no_grad():
        live = teacher(input_ids=data.batch([5])["input_ids"]).logits
    assert _rel(stored.logits(torch.tensor([5])), live) < 1e-3  # the truncated batches stored the right states
