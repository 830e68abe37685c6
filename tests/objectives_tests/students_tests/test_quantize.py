"""Post-training quantization (``student.quantize``) of real tiny classifiers and causal LMs on the CPU: smaller
saved weights, quality close to fp32, a cost key of its own, a trial that records the quantized model's metrics."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from objectives import ConfigError, DataArgs, StudentArgs, TrainArgs
from objectives._config import QUANTIZE_DEVICES
from objectives.evaluation import lm_evaluate
from objectives.students import (
    build_student,
    count_parameters,
    fake_quantized,
    load_classifier,
    quantization,
    quantize,
    quantized,
    saved_size_mb,
)
from objectives.students._quantize import QUANTIZERS
from objectives.tasks import _causal_lm as lm
from objectives.tasks import _classification as cls
from objectives.training._train import evaluate, report_steps
from tests.conftest import tiny_bert, tiny_decoder, write_corpus


def _linear_weight_mb(model: torch.nn.Module, skip: torch.nn.Module | None = None) -> float:
    """fp32 MiB of the weights of ``model``'s linear layers (but ``skip``)."""
    return (
        sum(m.weight.numel() * 4 for m in model.modules() if isinstance(m, torch.nn.Linear) and m is not skip) / 2**20
    )


def test_every_device_has_a_quantizer_for_each_setting_it_accepts() -> None:
    assert {d: {"none", *names} for d, names in QUANTIZERS.items()} == {d: set(v) for d, v in QUANTIZE_DEVICES.items()}


@pytest.mark.parametrize("family", ["bert", "llama"])
def test_int8_stores_linear_weights_in_a_quarter_and_keeps_the_outputs_and_parameter_count(family: str) -> None:
    if family == "bert":
        model = AutoModelForSequenceClassification.from_pretrained(tiny_bert(), num_labels=2).eval()
        inputs = {"input_ids": torch.randint(1000, 2000, (4, 12)), "attention_mask": torch.ones(4, 12, dtype=int)}
        skip = None
    else:
        # tied embeddings: the head shares the embedding's weight and stays fp32; wide enough that the weights,
        # not the per-row scales and per-tensor pickle records, are most of the bytes
        model = tiny_decoder("llama", hidden_size=256, intermediate_size=512)
        inputs = {"input_ids": torch.randint(0, 128, (4, 12))}
        skip = model.get_output_embeddings()
    linear_mb = _linear_weight_mb(model, skip)
    q = quantized(model, "int8")
    assert quantization(q) == "int8" and quantization(model) == "none" and q is not model
    assert count_parameters(q) == count_parameters(model)  # params stays the parameter count
    saved = saved_size_mb(model) - saved_size_mb(q)
    # int8 weights are a quarter of fp32; each output row adds an fp32 scale (and the tensor subclass some pickle)
    assert 0.70 * linear_mb < saved < 0.75 * linear_mb
    with torch.inference_mode():
        ref, out = model(**inputs).logits, q(**inputs).logits
    assert not torch.equal(ref, out)  # it did change the weights ...
    assert (out - ref).abs().max() < 0.02 * ref.abs().max()  # ... by under 2% of the largest logit
    if family == "llama":
        assert q.get_output_embeddings().weight is q.get_input_embeddings().weight  # still tied
        generated = q.generate(inputs["input_ids"][:1], max_new_tokens=4, do_sample=False, pad_token_id=0)
        assert generated.shape == (1, 16)


def test_int4_on_the_cpu_is_one_line_naming_the_key() -> None:
    with pytest.raises(ConfigError) as error:
        quantize(tiny_decoder("llama"), "int4")
    assert error.value.key == "student.quantize"
    assert "\n" not in str(error.value) and "valid on cpu: none, int8" in str(error.value)
    with pytest.raises(ConfigError, match="quantize: must be one of none, int8, int4, got 'int2'"):
        StudentArgs(quantize="int2")


@pytest.fixture(scope="module")
def bert_work() -> cls.Workload:
    return cls.prepare_workload(DataArgs(max_train_rows=64, max_val_rows=48, max_length=24), tiny_bert())


def test_the_cost_key_tells_int8_from_fp32_and_int8_saves_smaller(bert_work: cls.Workload) -> None:
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert(), num_labels=2).eval()
    store: dict[str, dict[str, float]] = {}
    fp32 = cls.measure_cost(model, bert_work, store)
    int8 = cls.measure_cost(quantized(model, "int8"), bert_work, store)
    assert len(store) == 2  # two keys: the int8 copy is not served fp32's cached numbers
    assert int8["params"] == fp32["params"]
    assert fp32["size_mb"] == pytest.approx(fp32["params"] * 4 / 2**20, rel=0.01)  # fp32: 4 bytes a parameter
    assert int8["size_mb"] < fp32["size_mb"] - 0.7 * _linear_weight_mb(model)


def test_a_classifier_trial_with_int8_records_the_quantized_model(bert_work: cls.Workload) -> None:
    args = TrainArgs(max_steps=4, batch_size=16, eval_every=4, lr=1e-3)
    runs = {}
    for choice in ("none", "int8"):
        student = StudentArgs(num_layers=2, quantize=choice)
        runs[choice] = cls.finetune_student(bert_work, tiny_bert(), student, args, seed=0)
    (fp32_model, fp32), (model, q) = runs["none"], runs["int8"]
    assert quantization(model) == "none"  # the trained model is handed back in fp32 (hpo train saves it)
    assert all(
        torch.equal(a, b) for a, b in zip(fp32_model.state_dict().values(), model.state_dict().values(), strict=True)
    )
    # the recorded validation scores are the int8 copy's, within a point of accuracy and 2% loss of fp32's
    scored = evaluate(quantized(model, "int8"), bert_work.validation, args.eval_batch_size)
    assert q["val_loss"] == scored.loss and q["accuracy"] == scored.accuracy
    assert q["val_loss"] != fp32["val_loss"] and q["val_loss"] == pytest.approx(fp32["val_loss"], rel=0.02)
    assert abs(q["accuracy"] - fp32["accuracy"]) <= 1 / len(bert_work.validation)
    assert q["size_mb"] < fp32["size_mb"] and q["params"] == fp32["params"]


def test_a_causal_lm_trial_with_int8_records_the_quantized_model(tiny_lm: str, tmp_path) -> None:
    corpus = write_corpus(tmp_path / "corpus.txt")
    work = lm.prepare_workload(DataArgs(name=corpus, block_size=16, max_train_rows=32, max_val_rows=8), tiny_lm)
    args = TrainArgs(max_steps=2, batch_size=8, eval_every=2, eval_batch_size=16, lr=1e-3)
    runs = {
        c: lm.finetune_student(work, tiny_lm, StudentArgs(num_layers=2, quantize=c), args, 0) for c in ("none", "int8")
    }
    (_, fp32), (model, q) = runs["none"], runs["int8"]
    scored = lm_evaluate(quantized(model, "int8"), work.validation, args.eval_batch_size)
    assert q["perplexity"] == scored.perplexity and q["val_loss"] == scored.loss
    assert q["perplexity"] == pytest.approx(fp32["perplexity"], rel=0.02)
    assert q["size_mb"] < fp32["size_mb"] and q["params"] == fp32["params"] and q["latency_ms"] > 0


def test_qat_fake_quantizes_the_last_steps_then_hands_back_plain_layers_that_quantize(bert_work: cls.Workload) -> None:
    """``train.qat_fraction: 0.5`` of 8 steps: steps 1-4 train plain linear layers, steps 5-8 torchao's
    FakeQuantizedLinear over the same weights (every linear layer: 6 a BERT layer, the pooler, the classifier);
    afterwards the model has plain layers again, its recorded scores are its int8 copy's, and the training differed
    from post-training quantization alone."""
    runs = {}
    for fraction in (0.0, 0.5):
        model = build_student(load_classifier(tiny_bert(), 2), StudentArgs(num_layers=2))
        linears = sum(isinstance(m, torch.nn.Linear) for m in model.modules())
        seen: dict[int, int] = {}
        args = TrainArgs(max_steps=8, batch_size=16, eval_every=4, lr=1e-3, qat_fraction=fraction)
        with report_steps(lambda step, *_, seen=seen, model=model: seen.__setitem__(step, fake_quantized(model))):
            _, metrics = cls.finetune_student(
                bert_work, tiny_bert(), StudentArgs(num_layers=2, quantize="int8"), args, seed=0, init=model
            )
        runs[fraction] = model, metrics, seen
    model, metrics, seen = runs[0.5]
    assert seen == {1: 0, 2: 0, 3: 0, 4: 0, 5: linears, 6: linears, 7: linears, 8: linears} and linears == 14
    assert fake_quantized(model) == 0 and all(
        type(m) is torch.nn.Linear for m in model.modules() if isinstance(m, torch.nn.Linear)
    )
    final = quantized(model, "int8")
    assert quantization(final) == "int8" and type(final.classifier.weight) is not torch.nn.Parameter
    scored = evaluate(final, bert_work.validation, 128)
    assert metrics["val_loss"] == scored.loss and metrics["accuracy"] == scored.accuracy
    assert set(runs[0.0][2].values()) == {0}  # qat_fraction 0: never fake-quantized
    plain = runs[0.0][0].state_dict()
    assert not all(torch.equal(plain[k], v) for k, v in model.state_dict().items())
