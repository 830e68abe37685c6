"""Width pruning of causal LMs (Llama-style, grouped-query attention) on tiny decoders built from configs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from objectives import ConfigError, Importance, StudentArgs
from objectives.students import count_parameters, decoder_importance, decoder_layers, prune_decoder
from tests.conftest import tiny_decoder
from tests.objectives_tests.students_tests.test_decoders import assert_decodes_with_its_cache
from tests.objectives_tests.students_tests.test_pruning import assert_beats_random_pruning

VOCAB, H, FFN, HEADS, KV, HEAD_DIM, LAYERS = 128, 32, 64, 4, 2, 8, 4
FAMILIES = ("llama", "qwen2")


def uneven_llama(family: str = "llama") -> torch.nn.Module:
    """The tiny GQA Llama (4 query heads reading 2 key/value heads; or the Qwen2 of the same shape, with q/k/v
    biases and sliding-window layers) with units of unequal scale, as in a trained model: one log-normal gain per
    hidden channel shared by every RMSNorm, one per key/value head on its value projection, one per FFN neuron on
    its up projection."""
    model = tiny_decoder(family)
    g = torch.Generator().manual_seed(1)
    channel = torch.exp(torch.randn(H, generator=g))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.mul_(channel)
        for layer in decoder_layers(model):
            layer.self_attn.v_proj.weight.mul_(
                torch.exp(torch.randn(KV, generator=g)).repeat_interleave(HEAD_DIM)[:, None]
            )
            layer.mlp.up_proj.weight.mul_(torch.exp(torch.randn(FFN, generator=g))[:, None])
    return model


def batches() -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(2)
    return [{"input_ids": torch.randint(3, VOCAB, (4, 16), generator=g)} for _ in range(2)]


def logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model.eval()(**b).logits for b in batches()])


def pruned(teacher: torch.nn.Module, importance: Importance, args: StudentArgs, keep: list[int] | None = None):
    keep = list(range(LAYERS)) if keep is None else keep
    return prune_decoder(teacher, keep, importance, args)


@pytest.mark.parametrize("family", FAMILIES)
def test_ratios_of_one_reproduce_the_teacher_exactly(family: str) -> None:
    teacher = uneven_llama(family)
    student = pruned(teacher, decoder_importance(teacher, batches()), StudentArgs())
    assert torch.equal(logits(student), logits(teacher))
    assert count_parameters(student) == count_parameters(teacher)


def test_heads_are_pruned_in_whole_key_value_groups() -> None:
    teacher = uneven_llama()
    importance = decoder_importance(teacher, batches())
    assert importance.heads.shape == (LAYERS, HEADS) and importance.ffn.shape == (LAYERS, FFN)
    # The two best single heads (0 and 3) sit in different groups; group {0, 1} scores 5.0 against 4.9 for
    # {2, 3}: the student keeps group 0 whole, query heads 0 and 1 with key/value head 0, not heads 0 and 3.
    importance.heads[:] = torch.tensor([5.0, 0.0, 0.0, 4.9])
    student = pruned(teacher, importance, StudentArgs(heads_ratio=0.5))
    assert (student.config.num_attention_heads, student.config.num_key_value_heads) == (2, 1)
    assert student.config.head_dim == HEAD_DIM
    for ours, theirs in zip(decoder_layers(student), decoder_layers(teacher), strict=True):
        q, k, v, o = (getattr(ours.self_attn, f"{n}_proj").weight for n in "qkvo")
        t = theirs.self_attn
        assert torch.equal(q, t.q_proj.weight[: 2 * HEAD_DIM])  # query heads 0 and 1
        assert torch.equal(k, t.k_proj.weight[:HEAD_DIM]) and torch.equal(v, t.v_proj.weight[:HEAD_DIM])
        assert torch.equal(o, t.o_proj.weight[:, : 2 * HEAD_DIM])
    # the other group when it scores higher
    importance.heads[:] = torch.tensor([5.0, 0.0, 0.0, 5.1])
    student = pruned(teacher, importance, StudentArgs(heads_ratio=0.5))
    k = decoder_layers(student)[0].self_attn.k_proj.weight
    assert torch.equal(k, decoder_layers(teacher)[0].self_attn.k_proj.weight[HEAD_DIM:])


def half_params(layers: int) -> int:
    h, f, q, kv = H // 2, FFN // 2, HEADS // 2 * HEAD_DIM, KV // 2 * HEAD_DIM
    layer = h * q + 2 * h * kv + q * h + 3 * h * f + 2 * h  # q, k, v, o; gate, up, down; two RMSNorms
    return VOCAB * h + layers * layer + h  # tied embeddings counted once; the final norm


def test_half_widths_have_the_expected_shapes_and_beat_a_random_pruning() -> None:
    teacher = uneven_llama()
    importance = decoder_importance(teacher, batches())
    half = StudentArgs(num_layers=2, hidden_ratio=0.5, ffn_ratio=0.5, heads_ratio=0.5)
    student = pruned(teacher, importance, half, keep=[0, 3])
    c = student.config
    assert (c.num_hidden_layers, c.hidden_size, c.intermediate_size) == (2, 16, 32)
    assert student.model.embed_tokens.weight.shape == (VOCAB, 16)
    assert student.lm_head.weight is student.model.embed_tokens.weight  # still tied
    assert count_parameters(student) == half_params(2)
    # the student's layer 1 comes from teacher layer 3: its FFN neurons are those layer 3 ranks highest
    down = decoder_layers(student)[1].mlp.down_proj.weight
    best = torch.sort(torch.topk(importance.ffn[3], 32).indices).values
    hidden = torch.sort(torch.topk(importance.hidden, 16).indices).values
    assert torch.equal(down, decoder_layers(teacher)[3].mlp.down_proj.weight[hidden][:, best])

    # all layers kept, widths halved: importance-chosen units (key/value groups for heads) against random ones
    target = logits(teacher)

    def error(scores: Importance, args: StudentArgs) -> float:
        return float((logits(pruned(teacher, scores, args)) - target).pow(2).mean())

    assert_beats_random_pruning(importance, error)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_pruned_decoder_saves_loads_and_generates_with_a_cache(family: str, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    teacher = uneven_llama(family)
    args = StudentArgs(hidden_ratio=0.75, ffn_ratio=0.25, heads_ratio=0.5)
    student = pruned(teacher, decoder_importance(teacher, batches()), args, keep=[1, 2])
    student.save_pretrained(tmp_path)
    again = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert (again.config.hidden_size, again.config.intermediate_size, again.config.head_dim) == (24, 16, HEAD_DIM)
    assert torch.equal(logits(again), logits(student))
    ids = batches()[0]["input_ids"][:1, :5]
    cached = student.generate(ids, max_new_tokens=4, do_sample=False, use_cache=True)
    assert torch.equal(cached, student.generate(ids, max_new_tokens=4, do_sample=False, use_cache=False))
    assert_decodes_with_its_cache(student, ids)
    assert_decodes_with_its_cache(again, ids)


def test_width_pruning_another_family_is_one_error_naming_the_ratio() -> None:
    model = tiny_decoder("gpt2")
    with pytest.raises(ConfigError) as error:
        pruned(model, decoder_importance(model, batches()), StudentArgs(ffn_ratio=0.5))
    assert error.value.key == "student.ffn_ratio" and "needs Llama-style layers" in str(error.value)
    assert "'gpt2'" in str(error.value)
