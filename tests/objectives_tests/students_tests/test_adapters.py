"""LoRA adapters (``student.adapter``, ``teacher.adapter``) on the tiny Llama: only the adapter trains, the merged
export computes what base + adapter computed, the teacher is corrected before its logits are cached, and the keys
that would do nothing are refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from objectives import ConfigError, DataArgs, DistillArgs, StudentArgs, TeacherArgs, TrainArgs
from tests.conftest import write_corpus

LORA = {"adapter": "lora", "lora_r": 4, "lora_alpha": 8.0}

LORA_PER_LAYER = 4 * ((32 + 32) + (32 + 16) * 2 + (32 + 32) + (32 + 64) * 2 + (64 + 32))
"""Rank-4 A and B of q, k, v, o, gate, up and down in one layer of the 32-wide tiny Llama (k and v are 16 wide:
GQA; the MLP is 64 wide): the preset ``attention+mlp``."""


@pytest.fixture
def work(tiny_lm: str, tmp_path: Path):
    from objectives.tasks import _causal_lm as lm

    corpus = write_corpus(tmp_path / "corpus.txt")
    return lm.prepare_workload(DataArgs(name=corpus, block_size=16, max_train_rows=16, max_val_rows=4), tiny_lm)


ARGS = TrainArgs(max_steps=4, batch_size=4, eval_every=4, eval_batch_size=4, lr=1e-2, warmup_ratio=0.0)


def test_a_lora_trial_trains_only_the_adapter_and_records_its_parameters(tiny_lm: str, work) -> None:
    from objectives.tasks import _causal_lm as lm

    student = StudentArgs(num_layers=2, **LORA)
    start = lm.initial_student(work, Path(tiny_lm), student, ARGS, seed=0)
    before = {name: p.detach().clone() for name, p in start.named_parameters()}
    model, metrics = lm.distill_student(work, Path(tiny_lm), student, ARGS, DistillArgs(), seed=0, init=start)
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert changed and all(".lora_A." in name or ".lora_B." in name for name in changed)
    base = [name for name in before if "lora_" not in name]
    assert base and all(torch.equal(dict(model.named_parameters())[n], before[n]) for n in base)  # bit-identical
    assert metrics["trainable_params"] == 2 * LORA_PER_LAYER
    full, full_metrics = lm.finetune_student(work, tiny_lm, StudentArgs(num_layers=2), ARGS, seed=0)
    assert full_metrics["trainable_params"] == sum(p.numel() for p in full.parameters())
    assert metrics["params"] == full_metrics["params"]  # the cost is the merged model's: the same architecture


def test_the_merged_export_generates_what_base_and_adapter_generate(tiny_lm: str, work, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, pipeline

    from objectives.tasks import _causal_lm as lm

    student = StudentArgs(num_layers=2, **LORA)
    model, _ = lm.finetune_student(work, tiny_lm, student, ARGS, seed=0)
    lm.save_model(model, work, tmp_path / "merged")
    lm.save_model(model, work, tmp_path / "split", adapter_only=True)
    prompt = work.tokenizer(lm.PROMPTS[0], return_tensors="pt")["input_ids"]

    def greedy(m: torch.nn.Module) -> list[int]:
        m.eval()
        out = m.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=12, do_sample=False)
        return out[0].tolist()

    expected = greedy(model)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert not any("lora" in name for name, _ in loaded.named_parameters())
    assert greedy(loaded) == expected
    from peft import PeftModel

    split = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tmp_path / "split"), tmp_path / "split/adapter"
    )
    assert greedy(split) == expected
    with torch.no_grad():  # the adapter mattered: the base alone computes other logits
        logits = [m(prompt).logits for m in (loaded, AutoModelForCausalLM.from_pretrained(tmp_path / "split").eval())]
    assert not torch.allclose(logits[0], logits[1], atol=1e-4)
    generate = pipeline("text-generation", model=str(tmp_path / "merged"))
    text = generate(lm.PROMPTS[0], max_new_tokens=4, do_sample=False)[0]["generated_text"]
    assert text.startswith(lm.PROMPTS[0])


def test_teacher_correction_adapts_the_teacher_and_merges_it(tiny_lm: str, work, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    from objectives.tasks import _causal_lm as lm

    teacher = TeacherArgs(model=tiny_lm, train=ARGS, **LORA)
    metrics = lm.finetune_teacher(work, teacher, seed=0, out_dir=tmp_path / "teacher")
    adapted = AutoModelForCausalLM.from_pretrained(tmp_path / "teacher")
    base = AutoModelForCausalLM.from_pretrained(tiny_lm)
    assert not any("lora" in name for name, _ in adapted.named_parameters())
    differ = [n for n, p in adapted.state_dict().items() if not torch.equal(p, base.state_dict()[n])]
    assert differ and all(n.endswith(("proj.weight",)) for n in differ)  # only the adapted (merged) matrices
    assert metrics["trainable_params"] == 4 * LORA_PER_LAYER  # the adapter of all 4 layers trained


@pytest.mark.parametrize(
    ("build", "key", "fragment"),
    [
        (lambda: StudentArgs(lora_r=16), "lora_r", "student.adapter is none: set student.adapter: lora"),
        (lambda: StudentArgs(target_modules="all-linear"), "target_modules", "student.adapter is none"),
        (lambda: StudentArgs(adapter="lora", target_modules="mlp"), "target_modules", "attention+mlp, all-linear"),
        (lambda: TeacherArgs(lora_alpha=4.0), "lora_alpha", "teacher.adapter is none"),
        (lambda: TeacherArgs(adapter="lora", train=TrainArgs(max_steps=0)), "adapter", "teacher.train.max_steps"),
    ],
)
def test_lora_keys_that_would_do_nothing_are_refused(build, key: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as error:
        build()
    assert error.value.key == key and fragment in error.value.message


def test_qlora_on_a_cpu_is_one_line_naming_the_key(tiny_lm: str, work) -> None:
    from objectives.tasks import _causal_lm as lm

    with pytest.raises(ConfigError) as error:  # device: auto resolved to the CPU: refused when the trial starts
        lm.finetune_student(work, tiny_lm, StudentArgs(num_layers=2, adapter="qlora"), ARGS, seed=0)
    assert error.value.key == "student.adapter" and "needs a CUDA device" in str(error.value)
    assert "\n" not in str(error.value)


def test_a_classifier_student_adapts_its_encoder_and_trains_its_head(tmp_path: Path) -> None:
    from transformers import AutoModelForSequenceClassification

    from objectives import load_classifier, prepare_workload
    from objectives.tasks import _classification as classification
    from tests.conftest import tiny_bert

    load_classifier(tiny_bert(), num_labels=2).save_pretrained(tmp_path / "teacher")
    work = prepare_workload(DataArgs(max_train_rows=64, max_val_rows=16, max_length=32), tiny_bert())
    args = TrainArgs(max_steps=3, batch_size=8, eval_every=3, eval_batch_size=16, lr=1e-2)
    student = StudentArgs(num_layers=2, **LORA)
    start = classification.initial_student(work, tmp_path / "teacher", student, args, seed=0)
    before = {name: p.detach().clone() for name, p in start.named_parameters()}
    model, metrics = classification.distill_student(
        work, tmp_path / "teacher", student, args, DistillArgs(), seed=0, init=start
    )
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert {name.split(".")[-3] for name in changed} == {"lora_A", "lora_B", "modules_to_save"}
    assert any(".classifier.modules_to_save." in name for name in changed)  # the new head trains whole
    assert metrics["trainable_params"] == sum(p.numel() for p in model.parameters() if p.requires_grad)
    classification.save_model(model, work, tmp_path / "merged")
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged").eval()
    from objectives.data import collate

    batch = {k: v for k, v in collate(work.validation, list(range(8))).items() if k in ("input_ids", "attention_mask")}
    model.eval()
    with torch.no_grad():
        assert torch.allclose(loaded(**batch).logits, model(**batch).logits, atol=1e-5)


def test_a_classifier_teacher_is_corrected_through_an_adapter_and_saved_merged(tmp_path: Path) -> None:
    from transformers import AutoModelForSequenceClassification

    from objectives import prepare_workload
    from objectives.tasks import _classification as classification
    from tests.conftest import tiny_bert

    work = prepare_workload(DataArgs(max_train_rows=32, max_val_rows=8, max_length=16), tiny_bert())
    args = TrainArgs(max_steps=2, batch_size=8, eval_every=2, eval_batch_size=8, lr=1e-2)
    metrics = classification.finetune_teacher(work, TeacherArgs(model=tiny_bert(), train=args, **LORA), 0, tmp_path)
    saved = AutoModelForSequenceClassification.from_pretrained(tmp_path)
    assert not any("lora" in name or "modules_to_save" in name for name, _ in saved.named_parameters())
    assert saved.config.id2label == dict(enumerate(work.task.rows.label_names))
    assert metrics["trainable_params"] < sum(p.numel() for p in saved.parameters()) / 10  # adapter and head


@pytest.mark.slow  # the real SmolLM2-135M (20 s to load) on WikiText-2 blocks
def test_a_lora_smollm2_student_trains_only_its_adapter_and_exports_the_same_generations(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    from objectives.tasks import _causal_lm as lm

    work = lm.prepare_workload(
        DataArgs(name="wikitext-2", block_size=32, max_train_rows=16, max_val_rows=4), "smollm2-135m"
    )
    student = StudentArgs(num_layers=4, adapter="lora", lora_r=8, target_modules="all-linear")
    args = TrainArgs(max_steps=3, batch_size=4, eval_every=3, eval_batch_size=4, lr=5e-3, warmup_ratio=0.0)
    model, metrics = lm.finetune_student(work, "smollm2-135m", student, args, seed=0)
    frozen = [p for name, p in model.named_parameters() if "lora_" not in name]
    assert not any(p.requires_grad for p in frozen)
    # all-linear on 4 SmolLM2 layers (576 wide, 3 key/value heads of 64, 1,536-wide MLP), rank 8; not the tied head
    per_layer = 8 * ((576 + 576) * 2 + (576 + 192) * 2 + (576 + 1536) * 2 + (1536 + 576))
    assert metrics["trainable_params"] == 4 * per_layer
    lm.save_model(model, work, tmp_path)
    prompt = work.tokenizer(lm.PROMPTS[1], return_tensors="pt")["input_ids"]
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    model.eval()
    kwargs = {"attention_mask": torch.ones_like(prompt), "max_new_tokens": 16, "do_sample": False}
    assert loaded.generate(prompt, **kwargs).tolist() == model.generate(prompt, **kwargs).tolist()
