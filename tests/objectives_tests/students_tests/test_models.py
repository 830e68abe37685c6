"""Students built from the real bundled MiniLM teacher."""

from pathlib import Path

import pytest
import torch

from objectives import ConfigError, StudentArgs, build_student, load_classifier, resolve_model, student_layers
from objectives.students import load_tokenizer


@pytest.fixture(scope="module")
def teacher() -> torch.nn.Module:
    return load_classifier("minilm-l6", num_labels=2)


def test_layer_choice() -> None:
    assert student_layers(StudentArgs(num_layers=3), 6) == [0, 2, 5]
    assert student_layers(StudentArgs(num_layers=2), 6) == [0, 5]
    assert student_layers(StudentArgs(num_layers=1), 6) == [0]
    assert student_layers(StudentArgs(), 6) == [0, 1, 2, 3, 4, 5]
    assert student_layers(StudentArgs(layers=[4, 0, 2]), 6) == [0, 2, 4]
    with pytest.raises(ConfigError, match="num_layers: is 7 but the teacher has only 6"):
        student_layers(StudentArgs(num_layers=7), 6)
    with pytest.raises(ConfigError, match=r"layers: indices \[6\] do not exist"):
        student_layers(StudentArgs(layers=[0, 6]), 6)


def test_student_copies_exactly_the_chosen_teacher_layers(teacher: torch.nn.Module) -> None:
    student = build_student(teacher, StudentArgs(layers=[0, 2, 4]))
    assert student.config.num_hidden_layers == 3
    t, s = teacher.state_dict(), student.state_dict()
    for new, old in enumerate([0, 2, 4]):
        prefix_t, prefix_s = f"bert.encoder.layer.{old}.", f"bert.encoder.layer.{new}."
        keys = [k for k in t if k.startswith(prefix_t)]
        assert keys
        for key in keys:
            assert torch.equal(t[key], s[prefix_s + key[len(prefix_t) :]])
    for key in ("bert.embeddings.word_embeddings.weight", "classifier.weight", "bert.pooler.dense.weight"):
        assert torch.equal(t[key], s[key])
    assert 17_000_000 < sum(p.numel() for p in student.parameters()) < 18_000_000


def test_scratch_student_with_other_width_and_dropout(teacher: torch.nn.Module) -> None:
    student = build_student(
        teacher, StudentArgs(num_layers=2, init="scratch", hidden_size=128, num_attention_heads=4), dropout=0.25
    )
    assert student.config.hidden_size == 128
    assert student.config.hidden_dropout_prob == 0.25
    assert student.config.attention_probs_dropout_prob == 0.25
    assert not torch.equal(
        student.state_dict()["bert.encoder.layer.0.output.dense.bias"],
        teacher.state_dict()["bert.encoder.layer.0.output.dense.bias"][:128],
    )
    ids = torch.tensor([[101, 2023, 102]])
    assert student(input_ids=ids).logits.shape == (1, 2)


def test_local_directory_loads_like_a_hub_id(teacher: torch.nn.Module, tmp_path: Path) -> None:
    """The hub path (from_pretrained on a name) exercised on a saved local directory."""
    teacher.save_pretrained(tmp_path)
    load_tokenizer("minilm-l6").save_pretrained(tmp_path)
    assert resolve_model(str(tmp_path)) == str(tmp_path)
    again = load_classifier(str(tmp_path), num_labels=2)
    assert torch.equal(again.state_dict()["classifier.weight"], teacher.state_dict()["classifier.weight"])
    assert load_tokenizer(str(tmp_path))("a good film")["input_ids"][0] == 101


def test_unknown_model_name_is_passed_to_the_hub_and_fails_offline() -> None:
    assert resolve_model("some-org/some-model") == "some-org/some-model"
    with pytest.raises(OSError):
        load_classifier("some-org/some-model-that-does-not-exist", num_labels=2)
