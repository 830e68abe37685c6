"""Causal-LM distillation on prompt-completion data with the tiny Llama: prompt tokens carry no CE and no KD (live or
cached teacher), generation metrics against references, a whole distillation run on the cached teacher."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from objectives import DataArgs, DistillArgs, StudentArgs, TrainArgs
from objectives.data import IGNORE
from objectives.evaluation import completion_evaluate, completions, exact_match, rouge_l
from objectives.students import load_causal_lm
from objectives.tasks import _causal_lm as lm
from objectives.training import HeadInputs, OnPolicy, get_loss, teacher_logits
from objectives.training._logits import cached_rows
from tests.objectives_tests.data_tests.test_examples import pairs_file


@pytest.fixture(scope="module")
def pairs(tiny_lm: str, tmp_path_factory: pytest.TempPathFactory) -> lm.Workload:
    path = pairs_file(tmp_path_factory.mktemp("pairs") / "pairs.jsonl", rows=60)
    args = DataArgs(name=path, format="prompt-completion", max_length=32, generation_rows=4, max_new_tokens=6)
    return lm.prepare_workload(args, tiny_lm)


def _loss(kind: str, student: torch.Tensor, labels: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    options = {"alpha": 0.5, "temperature": 2.0, "divergence": "forward_kl"} if kind == "lm_kd" else {}
    return get_loss(kind, **options)(student, labels, teacher)


@pytest.mark.parametrize("kind", ["lm_ce", "lm_kd"])
def test_prompt_tokens_carry_no_loss_and_completion_tokens_do(pairs: lm.Workload, tiny_lm: str, kind: str) -> None:
    batch = pairs.train.batch(range(4))
    labels = batch["labels"]
    model, teacher = load_causal_lm(tiny_lm), load_causal_lm(tiny_lm)
    torch.manual_seed(1)
    for p in teacher.parameters():
        p.data.add_(0.3 * torch.randn_like(p))
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    student_logits = model(**inputs).logits.detach().requires_grad_(True)
    with torch.no_grad():
        teacher_out = teacher(**inputs).logits
    loss = _loss(kind, student_logits, labels, teacher_out)
    loss.backward()
    # position t predicts token t + 1: only positions whose next token is a completion token get a gradient
    predicts_completion = torch.zeros_like(labels, dtype=torch.bool)
    predicts_completion[:, :-1] = labels[:, 1:] != IGNORE
    grad = student_logits.grad.abs().sum(-1)
    assert (grad[~predicts_completion] == 0).all() and (grad[predicts_completion] > 0).all()

    prompt_positions = ~predicts_completion
    changed = teacher_out.clone()
    changed[prompt_positions] = torch.randn_like(changed[prompt_positions])
    other_student = student_logits.detach().clone()
    other_student[prompt_positions] += 5 * torch.randn_like(other_student[prompt_positions])
    same = _loss(kind, other_student, labels, changed)
    assert torch.allclose(same, loss.detach(), atol=1e-6)  # prompt positions' logits and teacher: no effect
    completion = student_logits.detach().clone()
    completion[predicts_completion] += torch.randn_like(completion[predicts_completion])
    assert not torch.allclose(_loss(kind, completion, labels, teacher_out), loss.detach(), atol=1e-4)


def test_the_cached_teacher_gives_the_live_teachers_logits_on_a_batch_padded_less_than_the_cache(
    pairs: lm.Workload, tiny_lm: str
) -> None:
    teacher = load_causal_lm(tiny_lm).eval()
    cache = teacher_logits(teacher, pairs.train, 8)
    assert isinstance(cache, HeadInputs) and cache.states.shape[1] == pairs.train.width
    shortest = sorted(range(len(pairs.train)), key=lambda i: len(pairs.train.input_ids[i]))[:4]
    batch = pairs.train.batch(shortest)  # as grouping by length makes it: padded to its own longest
    assert batch["input_ids"].shape[1] < pairs.train.width
    cached = cached_rows(cache.head_to("cpu"), batch["index"], torch.device("cpu"), batch["input_ids"].shape[1])
    with torch.no_grad():
        live = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    real = batch["attention_mask"] == 1
    assert torch.allclose(cached[real], live[real], atol=0.05)


def test_completions_batched_and_left_padded_are_those_of_each_prompt_alone(pairs: lm.Workload, tiny_lm: str) -> None:
    model = load_causal_lm(tiny_lm)
    prompts = [pairs.validation.prompt(i) for i in range(4)]
    options = {"pad_token_id": pairs.train.pad_token_id, "eos_token_id": -1, "max_new_tokens": 5}
    together = completions(model, prompts, batch_size=4, **options)
    alone = [completions(model, [p], batch_size=1, **options)[0] for p in prompts]
    assert together == alone and all(len(c) == 5 for c in together)


def test_exact_match_and_rouge_l_score_generations_against_references(pairs: lm.Workload, tiny_lm: str) -> None:
    assert exact_match(["positive", " a  b "], [" positive", "a b"]) == 1.0
    assert exact_match(["positive"], ["negative"]) == 0.0
    assert rouge_l(["the cat sat"], ["the cat"]) == pytest.approx(0.8)  # P 2/3, R 1
    model = load_causal_lm(tiny_lm)
    examples = pairs.validation
    scored = completion_evaluate(model, examples, 8)
    assert scored.exact_match < 1.0  # a random model does not write the references
    sample = examples.generation_sample()
    assert len(sample) == 4 and len(scored.samples) == 4
    # References set to what the model generates: every generation matches exactly
    generated = {i: text for i, (_, text) in zip(sample, scored.samples, strict=True)}
    own = type(examples)(
        **{**examples.__dict__, "references": [generated.get(i, r) for i, r in enumerate(examples.references)]}
    )
    again = completion_evaluate(model, own, 8)
    assert again.exact_match == 1.0 and again.rouge_l == pytest.approx(1.0)
    assert (again.perplexity, again.token_accuracy) == (scored.perplexity, scored.token_accuracy)
    assert set(again.scores()) == {"perplexity", "token_accuracy", "exact_match", "rouge_l", "val_loss"}


def test_a_distillation_run_on_the_cached_teacher_reports_the_generation_metrics(
    pairs: lm.Workload, tiny_lm: str
) -> None:
    def logits(name: str, data: object, teacher: torch.nn.Module) -> HeadInputs:
        return teacher_logits(teacher, data, 8)

    reports = []
    args = TrainArgs(max_steps=4, batch_size=8, eval_every=2, eval_batch_size=8, lr=1e-3)
    model, metrics = lm.distill_student(
        pairs,
        Path(tiny_lm),
        StudentArgs(num_layers=2),
        args,
        DistillArgs(alpha=0.7, temperature=2.0),
        seed=0,
        report=lambda step, scores, final: reports.append((step, scores)),
        logits=logits,
    )
    assert [step for step, _ in reports] == [2, 4]
    for key in ("perplexity", "token_accuracy", "exact_match", "rouge_l", "latency_ms"):
        assert key in metrics and metrics[key] == metrics[key]
    assert set(reports[-1][1]) == {"perplexity", "token_accuracy", "exact_match", "rouge_l", "val_loss"}
    held = lm.heldout_metrics(model, pairs)
    assert "exact_match" in held and len(held["samples"]) <= 3 and held["samples"][0][0]


def test_on_policy_batches_are_the_students_own_sampled_completions_of_the_prompts(
    pairs: lm.Workload, tiny_lm: str
) -> None:
    student = load_causal_lm(tiny_lm)
    calls = []
    generate = student.generate
    student.generate = lambda **kw: calls.append(kw["input_ids"].shape) or generate(**kw)
    data = OnPolicy(pairs.train, student, fraction=1.0, temperature=1.5, max_new_tokens=4)
    torch.manual_seed(0)
    batches = data.train_batches(4, seed=0)
    batch = next(batches)
    assert data.on_policy and len(calls) == 1 and calls[0][0] == 4
    eos = pairs.tokenizer.eos_token_id
    for row, i in enumerate(batch["index"].tolist()):
        prompt = pairs.train.prompt(i)
        n = int(batch["attention_mask"][row].sum())
        ids, labels = batch["input_ids"][row, :n].tolist(), batch["labels"][row].tolist()
        assert ids[: len(prompt)] == prompt  # the example's prompt, then the student's tokens
        completion = ids[len(prompt) :]
        assert 1 <= len(completion) <= 5 and (len(completion) == 4 or completion[-1] == eos)
        assert labels[: len(prompt)] == [IGNORE] * len(prompt) and labels[len(prompt) : n] == completion
        assert all(y == IGNORE for y in labels[n:])
    differs = [b["input_ids"].tolist() != pairs.train.batch(b["index"].tolist())["input_ids"].tolist() for b in [batch]]
    assert differs == [True]

    half = OnPolicy(pairs.train, student, fraction=0.5, temperature=1.0, max_new_tokens=2)
    plain = pairs.train.train_batches(4, seed=3)
    drawn = []
    for mixed, reference in zip(half.train_batches(4, seed=3), plain, strict=False):
        drawn.append(half.on_policy)
        if not half.on_policy:
            assert torch.equal(mixed["input_ids"], reference["input_ids"])  # off-policy: the references
        if len(drawn) == 20:
            break
    assert 5 <= sum(drawn) <= 15 and half.generated == sum(drawn)
    chosen = half.loss(lambda *a: torch.tensor(0.0), lambda *a: torch.tensor(1.0))
    half.on_policy = True
    assert chosen(None, None) == 1.0  # the divergence alone on the student's tokens
    half.on_policy = False
    assert chosen(None, None) == 0.0


def test_an_on_policy_run_scores_the_students_samples_with_the_live_teacher(pairs: lm.Workload, tiny_lm: str) -> None:
    teacher = lm.load_teacher(Path(tiny_lm), pairs)
    seen = []
    hook = teacher.register_forward_hook(lambda _m, _a, kw, out: seen.append(kw["input_ids"].shape), with_kwargs=True)
    cached = []
    try:
        _, metrics = lm.distill_student(
            pairs,
            Path(tiny_lm),
            StudentArgs(num_layers=2),
            TrainArgs(max_steps=3, batch_size=4, eval_every=3, eval_batch_size=8, lr=1e-3),
            DistillArgs(on_policy=1.0, gen_temperature=1.0, loss="jsd"),
            seed=0,
            logits=lambda *a: cached.append(a) or teacher_logits(a[2], a[1], 8),
        )
    finally:
        hook.remove()
    assert cached == []  # new tokens cannot come from the cache
    assert len([s for s in seen if s[0] == 4]) >= 3  # one live teacher pass per on-policy training batch
    assert metrics["steps"] == 3 and metrics["exact_match"] == metrics["exact_match"]


def test_a_half_on_policy_run_reads_the_cache_for_its_reference_batches(
    pairs: lm.Workload, tiny_lm: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    teacher = lm.load_teacher(Path(tiny_lm), pairs)
    cache = teacher_logits(teacher, pairs.train, 8)  # before the hook: its forwards are not the run's
    live, read, drawn = [], [], []
    original = OnPolicy.student_batch
    monkeypatch.setattr(OnPolicy, "student_batch", lambda self, batch: drawn.append(1) or original(self, batch))

    # a student cut from the teacher copies its hooks, the cost compares it with the teacher at batch 1: count the
    # teacher's own forwards on training batches of 4
    def forward(module: torch.nn.Module, _args: tuple, kwargs: dict, _out: object) -> None:
        if module is teacher and kwargs["input_ids"].shape[0] == 4:
            live.append(1)

    hook = teacher.register_forward_hook(forward, with_kwargs=True)
    try:
        lm.distill_student(
            pairs,
            Path(tiny_lm),
            StudentArgs(num_layers=2),
            TrainArgs(max_steps=12, batch_size=4, eval_every=12, eval_batch_size=8, lr=1e-3),
            DistillArgs(on_policy=0.5, gen_temperature=1.0),
            seed=0,
            logits=lambda name, data, _t: read.append(name) or cache,
        )
    finally:
        hook.remove()
    assert read == ["train"] and 2 <= len(drawn) <= 10  # some batches of each kind
    assert len(live) == len(drawn)  # the teacher ran on the student's batches only; the references read the cache
