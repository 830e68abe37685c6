"""Width pruning and importance-based layer choice on tiny BERT classifiers built from configs (no download)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification, BertConfig

from objectives import ConfigError, Importance, StudentArgs, build_student, load_classifier, measure_importance
from objectives.data import Encoded
from objectives.students import (
    calibration_batches,
    count_parameters,
    kept_layers,
    prune_widths,
    renumbered_state,
    student_layers,
)
from objectives.students._pruning import calibrate_head, prune_state

H, FFN, HEADS, LAYERS, VOCAB, POSITIONS, LABELS = 64, 128, 4, 4, 120, 64, 3


def tiny_bert(seed: int = 0) -> torch.nn.Module:
    config = BertConfig(
        hidden_size=H,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=FFN,
        vocab_size=VOCAB,
        max_position_embeddings=POSITIONS,
        num_labels=LABELS,
    )
    torch.manual_seed(seed)
    return AutoModelForSequenceClassification.from_config(config).eval()


def uneven_bert() -> torch.nn.Module:
    """A tiny BERT whose units differ in scale, as in a trained model (a fresh one is nearly uniform): some hidden
    channels carry more (one log-normal gain per channel, shared by every LayerNorm, as trained transformers have
    outlier channels), and value projections per head and FFN neurons are scaled by log-normal factors."""
    model = tiny_bert()
    g = torch.Generator().manual_seed(1)
    channel = torch.exp(torch.randn(H, generator=g))
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.mul_(channel)
        for layer in model.bert.encoder.layer:
            heads = torch.exp(torch.randn(HEADS, generator=g)).repeat_interleave(H // HEADS)
            layer.attention.self.value.weight.mul_(heads[:, None])
            layer.intermediate.dense.weight.mul_(torch.exp(torch.randn(FFN, generator=g))[:, None])
    return model


def calibration(n: int = 64) -> Encoded:
    g = torch.Generator().manual_seed(2)
    lengths = torch.randint(4, 24, (n,), generator=g)
    ids = [[1, *torch.randint(5, VOCAB, (int(k),), generator=g).tolist(), 2] for k in lengths]
    return Encoded(ids, [0] * n, 0)


def logits(model: torch.nn.Module, batches: list[dict[str, torch.Tensor]]) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model.eval()(**b).logits for b in batches])


def pruned(teacher: torch.nn.Module, importance: Importance, args: StudentArgs) -> torch.nn.Module:
    keep = list(range(LAYERS))
    state, layer_of = renumbered_state(teacher, keep)
    return prune_widths(teacher.config, copy.deepcopy(teacher.config), keep, importance, args, state, layer_of)


def test_ratios_of_one_reproduce_the_teacher_exactly() -> None:
    teacher, data = uneven_bert(), calibration()
    batches = calibration_batches(data, 64)
    importance = measure_importance(teacher, batches)
    student = pruned(teacher, importance, StudentArgs(hidden_ratio=1.0, ffn_ratio=1.0, heads_ratio=1.0))
    assert torch.equal(logits(student, batches), logits(teacher, batches))
    assert count_parameters(student) == count_parameters(teacher)
    # through build_student too (nothing narrowed: the plain layer copy)
    assert torch.equal(
        logits(build_student(teacher, StudentArgs(), calibration=data), batches), logits(teacher, batches)
    )


def half_params(layers: int) -> int:
    h, f = H // 2, FFN // 2
    embeddings = (VOCAB + POSITIONS + 2) * h + 2 * h
    layer = 4 * (h * h + h) + 2 * h + (f * h + f) + (h * f + h) + 2 * h
    return embeddings + layers * layer + (h * h + h) + (LABELS * h + LABELS)


def test_half_widths_have_the_expected_shapes_and_beat_a_random_pruning() -> None:
    teacher, data = uneven_bert(), calibration()
    batches = calibration_batches(data, 64)
    args = StudentArgs(num_layers=2, hidden_ratio=0.5, ffn_ratio=0.5, heads_ratio=0.5)
    student = build_student(teacher, args, calibration=data)
    c = student.config
    assert (c.num_hidden_layers, c.hidden_size, c.intermediate_size, c.num_attention_heads) == (2, 32, 64, 2)
    layer = student.bert.encoder.layer[0]
    assert layer.attention.self.query.weight.shape == (32, 32)  # 2 heads of the teacher's 16 dims, 32 channels
    assert layer.intermediate.dense.weight.shape == (64, 32)
    assert student.classifier.weight.shape == (LABELS, 32)
    assert count_parameters(student) == half_params(2)

    # all layers kept, widths halved: importance-chosen units against random ones of the same shape
    importance = measure_importance(teacher, batches)
    target = logits(teacher, batches)

    def error(scores: Importance, args: StudentArgs) -> float:
        return float((logits(pruned(teacher, scores, args), batches) - target).pow(2).mean())

    assert_beats_random_pruning(importance, error)


def assert_beats_random_pruning(importance: Importance, error: Callable[[Importance, StudentArgs], float]) -> None:
    """Pruning by ``importance`` against 5 random scores of the same shape (``error``: how far the pruned model's
    logits are from the teacher's): FFN neurons alone and heads alone beat every random draw; all widths at 0.5
    beat a random draw on average (one draw can come closer)."""
    scores = {k: v for k, v in vars(importance).items() if k != "logits"}  # the logits are not a ranking
    randoms = [
        Importance(
            **{k: torch.rand(v.shape, generator=torch.Generator().manual_seed(s)) for k, v in scores.items()},
            logits=importance.logits,
        )
        for s in range(5)
    ]
    for args in (StudentArgs(ffn_ratio=0.5), StudentArgs(heads_ratio=0.5)):
        ours = error(importance, args)
        assert all(ours < error(r, args) for r in randoms), args
    half = StudentArgs(hidden_ratio=0.5, ffn_ratio=0.5, heads_ratio=0.5)
    assert error(importance, half) < sum(error(r, half) for r in randoms) / len(randoms)


def test_indices_follow_the_device_of_the_tensors_they_slice(monkeypatch: pytest.MonkeyPatch) -> None:
    """A teacher on a GPU is sliced on the GPU with the kept-unit indices (computed on the CPU) moved there: CUDA's
    ``index_select`` refuses a CPU index on a CUDA tensor. No GPU here: the teacher sits on the meta device and
    ``index_select`` is wrapped to refuse an index on another device, as CUDA does (the meta kernel accepts it)."""
    real = torch.Tensor.index_select

    def strict(self: torch.Tensor, dim: int, index: torch.Tensor) -> torch.Tensor:
        if index.device != self.device:
            raise RuntimeError(f"index on {index.device}, tensor on {self.device}")
        return real(self, dim, index)

    monkeypatch.setattr(torch.Tensor, "index_select", strict)
    teacher = tiny_bert().to("meta")
    state, layer_of = renumbered_state(teacher, [0, 2])
    half = {"attention": torch.arange(H // 2), "ffn": torch.arange(FFN // 2)}
    units = {kind: {layer: index for layer in (0, 1)} for kind, index in half.items()}
    out = prune_state(state, layer_of, torch.arange(0, H, 2), units)
    assert {t.device.type for t in out.values()} == {"meta"}
    assert out["bert.encoder.layer.1.intermediate.dense.weight"].shape == (FFN // 2, H // 2)
    assert out["bert.encoder.layer.1.attention.self.query.weight"].shape == (H // 2, H // 2)


def test_students_are_cut_from_the_teachers_tensors_without_copying_them_and_share_none() -> None:
    """Building a student copies no teacher tensor on the teacher's device (on a GPU: every trial): the renumbered
    state holds the teacher's own storage, of the kept layers only, and the students loaded from it own theirs."""
    teacher = uneven_bert()
    own = {t.untyped_storage().data_ptr() for t in teacher.state_dict().values()}
    state, _ = renumbered_state(teacher, [1, 3])
    assert {t.untyped_storage().data_ptr() for t in state.values()} <= own
    assert "bert.encoder.layer.1.output.dense.weight" in state and not any(".layer.2." in k for k in state)
    assert sum(t.numel() for t in state.values()) < count_parameters(teacher)
    for args in (StudentArgs(layers=[1, 3]), StudentArgs(layers=[1, 3], hidden_ratio=0.5, ffn_ratio=0.5)):
        student = build_student(teacher, args, calibration=calibration())
        assert not {p.untyped_storage().data_ptr() for p in student.parameters()} & own, args


def test_head_count_independent_of_hidden_width_saves_and_loads(tmp_path: Path) -> None:
    teacher, data = uneven_bert(), calibration()
    args = StudentArgs(num_layers=3, hidden_ratio=0.5, ffn_ratio=0.3, heads_ratio=0.75)
    student = build_student(teacher, args, calibration=data).eval()
    c = student.config
    assert (c.hidden_size, c.intermediate_size, c.num_attention_heads, c.attention_head_size) == (32, 40, 3, 16)
    assert student.bert.encoder.layer[0].attention.self.query.weight.shape == (48, 32)
    assert student.bert.encoder.layer[0].attention.output.dense.weight.shape == (32, 48)
    student.save_pretrained(tmp_path)
    again = load_classifier(str(tmp_path), LABELS)
    batches = calibration_batches(data, 16)
    assert torch.equal(logits(again, batches), logits(student, batches))


def test_importance_selection_drops_an_identity_layer() -> None:
    teacher, data = tiny_bert(), calibration()
    with torch.no_grad():  # layer 2 adds nothing to its input: its output is LayerNorm(LayerNorm(x)) = x
        layer = teacher.bert.encoder.layer[2]
        for dense in (layer.attention.output.dense, layer.output.dense):
            dense.weight.zero_()
            dense.bias.zero_()
    influence = measure_importance(teacher, calibration_batches(data, 64)).influence
    assert influence[2] < 1e-4 < float(influence[[0, 1, 3]].min())
    args = StudentArgs(num_layers=3, layer_selection="importance")
    assert student_layers(args, LAYERS, influence) == [0, 1, 3]
    student = build_student(teacher, args, calibration=data)
    assert torch.equal(
        student.state_dict()["bert.encoder.layer.2.intermediate.dense.weight"],
        teacher.state_dict()["bert.encoder.layer.3.intermediate.dense.weight"],
    )
    assert student_layers(StudentArgs(num_layers=3), LAYERS) == [0, 2, 3]  # even spacing would keep it


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"hidden_ratio": 0.0}, "hidden_ratio: must be in (0, 1], got 0.0"),
        ({"ffn_ratio": 1.5}, "ffn_ratio: must be in (0, 1], got 1.5"),
        ({"heads_ratio": 0.5, "init": "scratch"}, "heads_ratio: prunes the teacher's weights, so needs init: teacher"),
        ({"layer_selection": "random"}, "layer_selection: must be 'even' or 'importance', got 'random'"),
        ({"layer_selection": "importance", "layers": [0, 1]}, "layer_selection: importance ranks the teacher's"),
        ({"calibration_size": 0}, "calibration_size: must be >= 1, got 0"),
    ],
)
def test_bad_pruning_settings_name_the_key(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        StudentArgs(**kwargs)
    assert str(error.value).startswith(message)


def test_pruning_needs_calibration_data() -> None:
    with pytest.raises(ConfigError, match="calibration_size: width ratios and layer_selection: importance need"):
        build_student(tiny_bert(), StudentArgs(hidden_ratio=0.5))


def test_another_architecture_is_refused_naming_the_key() -> None:
    from transformers import DistilBertConfig

    config = DistilBertConfig(vocab_size=VOCAB, dim=32, n_layers=2, n_heads=2, hidden_dim=64, num_labels=2)
    model = AutoModelForSequenceClassification.from_config(config)
    with pytest.raises(ConfigError, match=r"hidden_ratio: needs a BERT-style encoder .* the teacher is 'distilbert'"):
        build_student(model, StudentArgs(hidden_ratio=0.5), calibration=calibration())


def _spread(x: torch.Tensor) -> float:
    """Standard deviation over examples of logits centred per class."""
    return float((x - x.mean(0)).std())


def test_a_narrow_students_shrunk_head_is_rescaled_to_the_teachers_logits() -> None:
    """Pruning a trained MiniLM shrank its logits' spread to 1-4% of the teacher's (``calibrate_head``); a tiny
    random BERT has no trained head to shrink, so a student of it (FFN neurons pruned, logits close to the
    teacher's) has its head shrunk so by hand, and calibration brings it back: the least-squares scale (residual
    orthogonal to the student's centred logits), the teacher's mean logits, closer logits than before. A student
    whose logits do not follow the teacher's keeps its weights (the scale is at least 1: it only undoes a
    shrinkage). ``build_student`` calibrates every narrowed student unless told not to."""
    teacher, data = uneven_bert(), calibration()
    batches = calibration_batches(data, 64)
    target = logits(teacher, batches)
    args = StudentArgs(ffn_ratio=0.75, calibration_size=64)
    student = build_student(teacher, args, calibration=data, calibrate=False)
    with torch.no_grad():
        student.classifier.weight.mul_(0.02)
    shrunk = logits(student, batches)
    assert _spread(shrunk) < 0.1 * _spread(target)
    scale = calibrate_head(student, batches, measure_importance(teacher, batches).logits)
    after = logits(student, batches)
    assert scale > 10
    centred = after - after.mean(0)
    residual = (target - target.mean(0)) - centred
    assert abs(float((residual * centred).sum())) < 1e-3 * float((centred * centred).sum())
    assert torch.allclose(after.mean(0), target.mean(0), atol=1e-4)
    assert (after - target).pow(2).mean() < 0.1 * (shrunk - target).pow(2).mean()

    unrelated = StudentArgs(num_layers=2, hidden_ratio=0.25, ffn_ratio=0.25, heads_ratio=0.25, calibration_size=64)
    other = build_student(teacher, unrelated, calibration=data, calibrate=False)
    weight = other.classifier.weight.detach().clone()
    assert calibrate_head(other, batches, target) == 1.0 and torch.equal(other.classifier.weight, weight)
    assert torch.equal(logits(build_student(teacher, unrelated, calibration=data), batches), logits(other, batches))


def test_a_one_layer_classifier_student_keeps_the_teachers_last_layer() -> None:
    """The [CLS] token after a BERT's first layer hardly depends on the input, so a one-layer classifier student
    keeps the last layer (causal LMs keep :func:`student_layers`' first)."""
    teacher = uneven_bert()
    assert kept_layers(teacher, StudentArgs(num_layers=1)) == [LAYERS - 1]
    assert student_layers(StudentArgs(num_layers=1), LAYERS) == [0]
    student = build_student(teacher, StudentArgs(num_layers=1))
    assert torch.equal(
        student.state_dict()["bert.encoder.layer.0.output.dense.weight"],
        teacher.state_dict()[f"bert.encoder.layer.{LAYERS - 1}.output.dense.weight"],
    )


@pytest.mark.slow
def test_narrow_minilm_students_of_a_fine_tuned_teacher_leave_the_majority_class(tmp_path: Path) -> None:
    """The real case: MiniLM-L6 fine-tuned briefly on the movie snippets, a narrow student (2 layers, hidden 0.375,
    FFN 0.25, heads 0.25) and a one-layer one distilled 40 steps at lr 1e-4. Sliced as before, the narrow student's
    logits spread a few % of the teacher's; calibrated, it starts near the teacher's scale, and both students end
    predicting both classes, above the majority share."""
    from objectives import DataArgs, DistillArgs, TeacherArgs, TrainArgs, distill_student, finetune_teacher
    from objectives.tasks._classification import prepare_workload
    from objectives.training._train import evaluate

    work = prepare_workload(DataArgs(max_train_rows=1200, max_val_rows=200, max_length=48), "minilm-l6")
    teacher_args = TeacherArgs(train=TrainArgs(lr=5e-5, max_steps=60, eval_every=60))
    finetune_teacher(work, teacher_args, 0, tmp_path / "teacher")
    teacher = load_classifier(str(tmp_path / "teacher"), 2).eval()
    batches = calibration_batches(work.validation, 128)
    target = logits(teacher, batches)
    narrow = StudentArgs(num_layers=2, hidden_ratio=0.375, ffn_ratio=0.25, heads_ratio=0.25)
    sliced = build_student(teacher, narrow, calibration=work.train, calibrate=False)
    fixed = build_student(teacher, narrow, calibration=work.train)
    assert _spread(logits(sliced, batches)) < 0.1 * _spread(target)
    assert _spread(logits(fixed, batches)) > 0.3 * _spread(target)
    labels = work.validation.labels
    majority = max(labels.count(c) for c in set(labels)) / len(labels)
    args = TrainArgs(lr=1e-4, max_steps=40, eval_every=40)
    for student in (narrow, StudentArgs(num_layers=1)):
        model, _ = distill_student(work, tmp_path / "teacher", student, args, DistillArgs(), seed=0)
        scored = evaluate(model, work.validation, 128)
        assert scored.top_share < 0.9 and scored.accuracy > majority + 0.05, (student, scored.accuracy)
