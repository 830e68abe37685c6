import time
from collections.abc import Callable, Iterator

import pytest
import torch

from objectives.evaluation import PeakMemory, _metrics, accuracy, gflops, latency_ms, macro_f1, size_mb, throughput
from tests.conftest import tiny_decoder


def test_accuracy_and_macro_f1_by_hand() -> None:
    preds = [0, 0, 1, 1, 1, 0]
    labels = [0, 1, 1, 1, 0, 0]
    assert accuracy(preds, labels) == pytest.approx(4 / 6)
    # class 0: tp 2, fp 1, fn 1 -> 4/6; class 1: tp 2, fp 1, fn 1 -> 4/6
    assert macro_f1(preds, labels) == pytest.approx(4 / 6)
    # imbalanced: always predicting the majority gives high accuracy, low macro-F1
    assert accuracy([0] * 10, [0] * 9 + [1]) == 0.9
    assert macro_f1([0] * 10, [0] * 9 + [1]) == pytest.approx((2 * 9 / (18 + 1)) / 2)


def test_macro_f1_averages_over_the_labels_present_in_gold_or_predictions() -> None:
    # A 3-class task whose validation subset has no class 2 and nothing predicts it: scikit-learn averages over
    # {0, 1} only. class 0: tp 2, fp 1, fn 0 -> 4/5; class 1: tp 1, fp 0, fn 1 -> 2/3; mean 11/15 (not 11/22).
    assert macro_f1([0, 0, 1, 0], [0, 0, 1, 1]) == pytest.approx((4 / 5 + 2 / 3) / 2)
    # A label only predicted (absent from gold) counts, with F1 0: class 0 tp 1, fn 1 -> 2/3; class 2 fp 1 -> 0.
    assert macro_f1([0, 2], [0, 0]) == pytest.approx((2 / 3 + 0) / 2)
    # All correct on one class present: 1.0, not 1/3 of a 3-class task.
    assert macro_f1([1, 1, 1], [1, 1, 1]) == 1.0


def test_size_is_fp32_bytes_in_mib() -> None:
    assert size_mb(2**18) == 1.0


class _Tiny(torch.nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(100, width)
        self.lin = torch.nn.Linear(width, 2)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.lin(self.emb(input_ids)).mean(1)


def test_cost_metrics_are_plausible_and_flops_scale_with_width() -> None:
    one = {"input_ids": torch.randint(0, 100, (1, 16))}
    batch = {"input_ids": torch.randint(0, 100, (32, 16))}
    p50, p95 = latency_ms(_Tiny(64), one, min_repeats=10, max_repeats=50)
    assert 0 < p50 <= p95
    assert throughput(_Tiny(64), batch, repeats=2) > 0
    # a Linear(width, 2) over 16 tokens: 2 * 16 * width * 2 FLOPs
    assert gflops(_Tiny(64), one) == pytest.approx(2 * 16 * 64 * 2 / 1e9)
    assert gflops(_Tiny(128), one) == pytest.approx(2 * gflops(_Tiny(64), one))


def test_attention_flops_count_the_same_with_the_cpu_fused_kernel_as_with_eager_attention() -> None:
    from tests.conftest import tiny_decoder

    one = {"input_ids": torch.randint(0, 100, (1, 16))}
    fused, eager = tiny_decoder("llama"), tiny_decoder("llama")  # GQA: 4 query heads read 2 key/value heads
    eager.set_attn_implementation("eager")
    assert fused.config._attn_implementation == "sdpa"
    # Q K^T and (softmax) V per layer: 2 products of 2 * heads * L * L * head_dim FLOPs (4 layers, 4 heads of 8)
    attention = 4 * 2 * 2 * 4 * 16 * 16 * 8 / 1e9
    assert gflops(fused, one) == pytest.approx(gflops(eager, one))
    assert gflops(fused, one) > attention  # the projections and MLPs besides: attention was counted, not 0


def test_the_hardware_of_a_gpu_cost_names_the_device_in_full(monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    from objectives.evaluation import cost_hardware

    card = {"name": "NVIDIA A100-SXM4-80GB", "major": 8, "minor": 0, "total_memory": 80 * 2**30}
    cards = {
        0: SimpleNamespace(**card, multi_processor_count=108),
        1: SimpleNamespace(**card, multi_processor_count=42),
    }
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: cards[device.index])
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    whole = cost_hardware(torch.device("cuda:0"))
    assert whole == "NVIDIA A100-SXM4-80GB, 81920 MiB, sm_80, 108 SMs, CUDA 12.8"
    assert cost_hardware(torch.device("cuda:1")) != whole  # a MIG slice of the same card: another key


def test_peak_memory_sees_a_short_lived_allocation_in_reused_heap() -> None:
    # ~400 MiB of small blocks freed before: without trimming, the heap would serve the block with no RSS growth
    small = [torch.ones(1000) for _ in range(100_000)]
    del small
    # allocated and freed in well under a millisecond: only the kernel's high-water mark can see it
    with PeakMemory(torch.device("cpu")) as memory:
        block = torch.ones(64 * 2**20 // 4)  # 64 MiB
        del block
    assert 48 <= memory.peak_mb < 1024


def test_peak_memory_samples_where_the_peak_cannot_be_reset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_metrics, "_reset_rss_peak", lambda: False)
    with PeakMemory(torch.device("cpu"), interval=0.005) as memory:
        block = torch.ones(64 * 2**20 // 4)
        time.sleep(0.2)  # forty sampling intervals
        del block
    assert memory._thread is not None
    assert 48 <= memory.peak_mb < 1024


def test_peak_memory_is_growth_over_the_start_on_a_gpu_as_on_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    # A GPU process holding 3 GiB (teacher, base model, cache) whose block peaks at 3.5 GiB allocated: 512 MiB.
    allocated = {"now": 3 * 2**30, "peak": 5 * 2**30}  # the peak of an earlier block, before the reset
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device: allocated.update(peak=allocated["now"]))
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device: allocated["now"])
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device: allocated["peak"])
    with PeakMemory(torch.device("cuda:0")) as gpu:
        allocated.update(peak=allocated["now"] + 2**29)
    assert gpu.peak_mb == 512
    held = torch.ones(256 * 2**20 // 4)  # the same on the CPU: 256 MiB held at entry are not counted
    with PeakMemory(torch.device("cpu")) as cpu:
        block = torch.ones(64 * 2**20 // 4)
        del block
    assert 48 <= cpu.peak_mb < 200 and held.sum() > 0


def test_per_class_scores_by_hand_and_a_class_never_predicted() -> None:
    from objectives.evaluation import never_predicted, per_class

    labels = [0, 0, 0, 1, 1, 2]
    preds = [0, 0, 1, 1, 0, 0]  # class 2 (one row) is never predicted
    scores = per_class(preds, labels, ["a", "b", "c"])
    assert scores["a"] == {"precision": 2 / 4, "recall": 2 / 3, "f1": 4 / 7, "support": 3.0, "predicted": 4.0}
    assert scores["b"] == {"precision": 1 / 2, "recall": 1 / 2, "f1": 1 / 2, "support": 2.0, "predicted": 2.0}
    assert scores["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1.0, "predicted": 0.0}
    assert never_predicted(scores) == ["c"]
    assert never_predicted(per_class([0, 1], [0, 1], ["a", "b", "absent"])) == []  # no rows: not flagged
    beyond = per_class([7, 1], [0, 1], ["a", "b"])  # output 7 of a model wider than the data's classes
    assert beyond["a"]["recall"] == 0.0 and beyond["a"]["predicted"] == 0.0 and beyond["b"]["precision"] == 1.0


class _Bigram(torch.nn.Module):
    """A causal LM whose next-token logits depend on the current token only: a fixed (V, V) table."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = torch.nn.Parameter(table)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> object:
        from types import SimpleNamespace

        return SimpleNamespace(logits=self.table[input_ids])


class _Batches:
    def __init__(self, *batches: dict[str, torch.Tensor]) -> None:
        self.batches = batches

    def __len__(self) -> int:
        return sum(len(batch["input_ids"]) for batch in self.batches)

    def eval_batches(self, batch_size: int):
        yield from self.batches


def test_lm_evaluation_is_token_weighted_over_the_split() -> None:
    import math

    from objectives.evaluation import lm_evaluate

    table = torch.tensor([[4.0, 0.0, -1.0], [0.0, 3.0, 0.0], [-2.0, 0.5, 2.0]])
    log_p = table.log_softmax(-1)
    one = torch.tensor([[0, 0, 0, 0, 1]])  # 4 predicted tokens, mostly the likely ones
    two = torch.tensor([[1, 0, 2], [2, 1, 0]])  # 2 + 1 unlikely ones: the second row's last token is padding
    batches = _Batches(
        {"input_ids": one, "attention_mask": torch.ones_like(one), "labels": one.clone()},
        {"input_ids": two, "attention_mask": torch.tensor([[1, 1, 1], [1, 1, 0]]), "labels": two.clone()},
    )
    pairs = [(0, 0), (0, 0), (0, 0), (0, 1), (1, 0), (0, 2), (2, 1)]
    nll = [-log_p[a, b].item() for a, b in pairs]
    result = lm_evaluate(_Bigram(table), batches, batch_size=2)
    assert result.tokens == 7
    assert result.loss == pytest.approx(sum(nll) / 7, rel=1e-6)
    assert result.perplexity == pytest.approx(math.exp(sum(nll) / 7), rel=1e-6)
    per_batch = (math.exp(sum(nll[:4]) / 4) + math.exp(sum(nll[4:]) / 3)) / 2
    assert result.perplexity != pytest.approx(per_batch, rel=1e-3)
    assert result.token_accuracy == pytest.approx(3 / 7)  # the argmax of row c is c: the three (0, 0) pairs
    assert result.scores() == {
        "perplexity": result.perplexity,
        "token_accuracy": result.token_accuracy,
        "val_loss": result.loss,
    }


def _tiny_llama() -> torch.nn.Module:
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
    )
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).eval()


def test_lm_evaluation_of_packed_blocks() -> None:
    import datasets

    from objectives import Blocks
    from objectives.evaluation import lm_evaluate

    ids = torch.randint(0, 64, (5, 8), generator=torch.Generator().manual_seed(0))
    blocks = Blocks(datasets.Dataset.from_dict({"input_ids": ids.int().tolist()}).with_format("numpy"), 8, 0)
    model = _tiny_llama()
    result = lm_evaluate(model, blocks, batch_size=2)
    assert result.tokens == 5 * 7 and not model.training
    with torch.no_grad():
        logits = model(ids).logits
    expected = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 64), ids[:, 1:].reshape(-1))
    assert result.loss == pytest.approx(expected.item(), rel=1e-5)


def test_generation_costs_report_every_cost() -> None:
    from objectives.evaluation import generation_costs

    prompt = torch.randint(0, 64, (1, 12), generator=torch.Generator().manual_seed(0))
    costs = generation_costs(
        _tiny_llama(),
        prompt,
        new_tokens=4,
        prefill_tokens=32,
        batch=2,
        rounds=3,
        prefill_repeats=2,
        throughput_repeats=1,
    )
    assert set(costs) == {"latency_ms", "latency_ms_p95", "prefill_ms", "throughput", "gflops"}
    assert all(value > 0 for value in costs.values())
    assert costs["latency_ms"] <= costs["latency_ms_p95"]


def test_interleaved_speedup_is_the_median_of_per_round_ratios_and_alternates_the_models() -> None:
    from objectives.evaluation import interleaved_speedup

    calls: list[str] = []
    # the host slows down for round 2 (both models 3x): the ratio of that round is still 4
    teacher_times = iter([[8.0, 8.0, 9.0], [24.0, 24.0], [8.0], [100.0]])
    student_times = iter([[2.0, 2.0, 1.0], [6.0, 6.0], [4.0], [2.0]])

    def teacher() -> list[float]:
        calls.append("teacher")
        return next(teacher_times)

    def student() -> list[float]:
        calls.append("student")
        return next(student_times)

    # per-round ratios 8/2, 24/6, 8/4, 100/2 = 4, 4, 2, 50: median 4
    assert interleaved_speedup(student, teacher, rounds=4) == 4.0
    assert calls == ["teacher", "student"] * 4


def test_paired_speedup_alternates_the_two_models_step_by_step_and_takes_the_median_step_ratio() -> None:
    from objectives.evaluation import paired_speedup

    calls: list[str] = []
    # the host slows down for the second step pair (both 3x): that pair's ratio is still 4
    teacher_rounds = iter([[8.0, 24.0, 8.0], [100.0, 8.0, 4.0]])
    student_rounds = iter([[2.0, 6.0, 4.0], [2.0, 2.0, 2.0]])

    def steps(name: str, rounds: Iterator[list[float]]) -> Callable[[], Iterator[float]]:
        def run() -> Iterator[float]:
            for ms in next(rounds):
                calls.append(name)
                yield ms

        return run

    # step ratios 4, 4, 2, 50, 4, 2: median 4
    assert paired_speedup(steps("student", student_rounds), steps("teacher", teacher_rounds), rounds=2) == 4.0
    assert calls == ["teacher", "student"] * 6  # one step of each in turn, not one model's round then the other's


def test_paired_decoding_steps_of_real_decoders_find_the_shallower_one_faster() -> None:
    from objectives.evaluation import decode_round, decode_steps, paired_speedup
    from objectives.students import cut_decoder

    teacher = tiny_decoder("llama", num_hidden_layers=8, layer_types=["full_attention"] * 8)
    student = cut_decoder(teacher, [0])  # 1 of its 8 layers
    prompt = torch.randint(0, teacher.config.vocab_size, (1, 8))
    assert len(decode_round(teacher, prompt, 5)()) == 5
    # each model keeps its own KV cache while their steps alternate
    assert paired_speedup(decode_steps(student, prompt, 6), decode_steps(teacher, prompt, 6), rounds=3) > 1


def test_a_real_model_is_faster_than_a_deeper_one_by_interleaved_rounds() -> None:
    from objectives.evaluation import forward_round, interleaved_speedup

    torch.manual_seed(0)
    deep = torch.nn.Sequential(*[torch.nn.Linear(256, 256) for _ in range(8)])
    shallow = torch.nn.Sequential(*list(deep)[:2])
    x = {"input": torch.randn(16, 256)}
    ratio = interleaved_speedup(forward_round(shallow, x, 20), forward_round(deep, x, 20), rounds=5)
    assert 1.5 < ratio < 8  # 4x the layers; per-call overhead keeps it under 4 or so
