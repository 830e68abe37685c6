"""Metrics that need torch: language-model quality (perplexity, token accuracy), cost (latency, throughput, size,
FLOPs; per generated token for language models) and peak training memory. Scores of class predictions are in
:mod:`objectives.evaluation._scores`."""

from __future__ import annotations

import contextlib
import contextvars
import ctypes
import logging
import math
import platform
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

EvalCallback = Callable[[int, int], None]
"""Called after every batch of an evaluation pass with (blocks done, blocks in the pass): for progress display."""

EVAL_LOG_SECONDS = 10.0
"""Without an :func:`report_evaluation` callback, an evaluation pass logs an INFO line with its progress at most
this often (and a last one when it ends, if it logged any): plain logs show a long pass advancing."""

_ON_EVAL: contextvars.ContextVar[EvalCallback | None] = contextvars.ContextVar("on_eval", default=None)


@contextlib.contextmanager
def report_evaluation(callback: EvalCallback | None) -> Iterator[None]:
    """Make ``callback`` follow every :func:`lm_evaluate` pass inside the block (e.g. a progress bar on a terminal)
    instead of the INFO lines of plain logs."""
    token = _ON_EVAL.set(callback)
    try:
        yield
    finally:
        _ON_EVAL.reset(token)


def _eval_progress(block_size: int | None) -> EvalCallback:
    """The progress callback of one pass (blocks of ``block_size`` tokens): the enclosing :func:`report_evaluation`'s,
    or an INFO line every :data:`EVAL_LOG_SECONDS` with the blocks (and tokens) done and the time elapsed."""
    callback = _ON_EVAL.get()
    if callback is not None:
        return callback
    start = time.perf_counter()
    last = start

    def log_line(done: int, total: int) -> None:
        nonlocal last
        now = time.perf_counter()
        if now - last < EVAL_LOG_SECONDS and not (done == total and last > start):
            return
        last = now
        tokens = f" ({done * block_size:,} of {total * block_size:,} tokens)" if block_size else ""
        log.info("evaluating: %d/%d blocks%s, %.0f s elapsed", done, total, tokens, now - start)

    return log_line


def size_mb(params: int) -> float:
    """Size of the fp32 weights: params * 4 bytes / 2^20."""
    return params * 4 / 2**20


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` torch intra-op threads, then restore the previous count."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def hardware(device: torch.device, threads: int) -> str:
    """What a cost was measured on, in full: on a GPU its name, memory, compute capability, count of SMs (a MIG
    slice or a power-capped variant of a card differs in them) and the CUDA runtime torch uses, e.g.
    ``NVIDIA H100 80GB HBM3, 81559 MiB, sm_90, 132 SMs, CUDA 12.8``; on a CPU its model name and the torch thread
    count."""
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        memory = p.total_memory // 2**20
        return (
            f"{p.name}, {memory} MiB, sm_{p.major}{p.minor}, {p.multi_processor_count} SMs, CUDA {torch.version.cuda}"
        )
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux
        info = ""
    names = [line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")]
    return f"{(names or [platform.processor() or 'CPU'])[0]}, {threads} thread{'' if threads == 1 else 's'}"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def lowest_round_median(
    run_round: Callable[[], list[float]], *, max_samples: int, rel_tol: float = 0.01
) -> tuple[float, float]:
    """(p50, p95) of timings taken in rounds: ``run_round`` times one round of calls (ms each).

    p50 is the lowest round median, so a round slowed by another process on the machine does not count (as
    ``timeit`` takes the minimum); rounds go on until it has improved by less than ``rel_tol`` over the last two
    rounds, or ``max_samples`` timings are taken. p95 is over all timings."""
    times: list[float] = []
    best: list[float] = []  # the lowest round median after each round
    while len(times) < max_samples:
        round_times = run_round()
        times += round_times
        best.append(min([statistics.median(round_times), *best[-1:]]))
        if len(best) >= 3 and best[-3] - best[-1] <= rel_tol * best[-1]:
            break
    ordered = sorted(times)
    return best[-1], ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def interleaved_speedup(
    student_round: Callable[[], list[float]],
    teacher_round: Callable[[], list[float]],
    rounds: int,
) -> float:
    """How many times faster the student is than the teacher, measured in the same process in interleaved rounds
    (teacher, student, teacher, student, ...); each ``*_round`` times one round of calls (ms each):

        speedup = median over rounds r of  median(teacher times in r) / median(student times in r)

    A slow spell of the host that lasts a round slows both models of the round alike, so the ratio cancels what
    a process's own offset adds to an absolute latency; the rounds are timed by :func:`speedup_clock`."""
    ratios = []
    for _ in range(rounds):
        teacher = statistics.median(teacher_round())
        ratios.append(teacher / statistics.median(student_round()))
    return statistics.median(ratios)


def forward_round(
    model: torch.nn.Module, inputs: dict[str, torch.Tensor], calls: int, clock: Callable[[], float] = time.perf_counter
) -> Callable[[], list[float]]:
    """A function timing one round of ``calls`` forward passes of ``model`` on ``inputs`` (ms each, by ``clock``),
    the GPU synchronised around each call so the time is the kernel's, not the launch's."""
    device = next(model.parameters()).device

    @torch.inference_mode()
    def run_round() -> list[float]:
        model.eval()
        round_times = []
        for _ in range(calls):
            start = clock()
            model(**inputs)
            _sync(device)
            round_times.append((clock() - start) * 1000)
        return round_times

    return run_round


def paired_speedup(
    student_steps: Callable[[], Iterator[float]],
    teacher_steps: Callable[[], Iterator[float]],
    rounds: int,
) -> float:
    """How many times faster the student is than the teacher, timed step by step in the same process: each round
    starts both ``*_steps`` iterators (each yields one call's time in ms, e.g. :func:`decode_steps`) and takes their
    calls alternately (teacher, student, teacher, ...), so the two calls of a pair run microseconds apart:

        speedup = median over rounds r and steps i of  teacher time (r, i) / student time (r, i)

    Finer than :func:`interleaved_speedup`'s rounds of many calls, where a change in the host's load (another
    process's cache and memory traffic slows even a thread's CPU time) between two long rounds moves the ratio."""
    ratios = []
    for _ in range(rounds):
        for teacher, student in zip(teacher_steps(), student_steps(), strict=True):
            ratios.append(teacher / student)
    return statistics.median(ratios)


def decode_steps(
    model: torch.nn.Module, prompt: torch.Tensor, new_tokens: int, clock: Callable[[], float] = time.perf_counter
) -> Callable[[], Iterator[float]]:
    """A function starting one round of greedy decoding with the KV cache at batch 1: it prefills ``prompt``
    (1, P) untimed, then yields the time of each of ``new_tokens`` one-token steps (forward and argmax, ms each,
    by ``clock``) as it is taken: a caller can interleave the steps of two models (:func:`paired_speedup`)."""
    device = next(model.parameters()).device

    def run_round() -> Iterator[float]:
        with torch.inference_mode():  # entered and left around each step: the caller runs between steps
            model.eval()
            out = model(input_ids=prompt, use_cache=True)
            cache, token = out.cache, out.logits[:, -1:].argmax(-1)  # transformers >= 5.24 names it cache
            _sync(device)
        for _ in range(new_tokens):
            with torch.inference_mode():
                start = clock()
                out = model(input_ids=token, cache=cache, use_cache=True)
                token = out.logits[:, -1:].argmax(-1)
                _sync(device)
                elapsed = (clock() - start) * 1000
            yield elapsed

    return run_round


def decode_round(
    model: torch.nn.Module, prompt: torch.Tensor, new_tokens: int, clock: Callable[[], float] = time.perf_counter
) -> Callable[[], list[float]]:
    """A function timing one round of greedy decoding with the KV cache at batch 1 (:func:`decode_steps`, all
    ``new_tokens`` steps in a row): the prefill of ``prompt`` (1, P) untimed, then each step's ms by ``clock``."""
    steps = decode_steps(model, prompt, new_tokens, clock)
    return lambda: list(steps())


def speedup_clock(device: torch.device) -> Callable[[], float]:
    """The clock :func:`interleaved_speedup`'s rounds are timed by: on a CPU computing in one torch thread, the
    CPU time of the calling thread (``time.thread_time``), which every op then runs on, so the time another
    process holds the core is not counted (on a busy 2-core VM this took the spread of the ratio between processes
    from 8-11% to 1.5-3%, ``bench/latency_stability.py``); else (a GPU, or several CPU threads whose work the
    calling thread's clock would miss) wall time."""
    if device.type == "cpu" and torch.get_num_threads() == 1:
        return time.thread_time
    return time.perf_counter


@torch.inference_mode()
def latency_ms(
    model: torch.nn.Module,
    inputs: dict[str, torch.Tensor],
    *,
    warmup: int = 10,
    min_repeats: int = 30,
    max_repeats: int = 300,
    rel_tol: float = 0.01,
) -> tuple[float, float]:
    """(p50, p95) forward latency in ms for ``inputs`` (batch 1) after ``warmup`` calls, in rounds of
    ``min_repeats`` calls (:func:`forward_round`) and at most ``max_repeats`` (:func:`lowest_round_median`).
    """
    device = next(model.parameters()).device
    model.eval()
    for _ in range(warmup):
        model(**inputs)
    _sync(device)
    return lowest_round_median(forward_round(model, inputs, min_repeats), max_samples=max_repeats, rel_tol=rel_tol)


@torch.inference_mode()
def throughput(model: torch.nn.Module, inputs: dict[str, torch.Tensor], *, repeats: int = 5) -> float:
    """Samples per second of forward passes over the batch ``inputs`` (batch 32), after one warm-up pass."""
    device = next(model.parameters()).device
    model.eval()
    model(**inputs)
    _sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        model(**inputs)
    _sync(device)
    return repeats * inputs["input_ids"].shape[0] / (time.perf_counter() - start)


def _sdpa_flops(query: Any, key: Any, value: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    """FLOPs of a fused attention kernel from its query, key and value shapes: the two matrix products
    Q K^T and (softmax) V, as ``torch.utils.flop_counter`` counts its CUDA kernels and eager attention's ``bmm``."""
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query, key, value)


def gflops(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> float:
    """Forward GFLOPs per example, counted by ``torch.utils.flop_counter`` on ``inputs`` (one example): the same on
    every device and attention kernel. The counter has formulas for the CUDA attention kernels (flash, efficient,
    cuDNN) but not for the CPU's fused one, which it would count as 0; it is counted here as they are
    (:func:`_sdpa_flops`)."""
    from torch.utils.flop_counter import FlopCounterMode

    model.eval()
    cpu_attention = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    counter = FlopCounterMode(display=False, custom_mapping={cpu_attention: _sdpa_flops})
    with torch.inference_mode(), counter:
        model(**inputs)
    return counter.get_total_flops() / inputs["input_ids"].shape[0] / 1e9


@dataclass
class LMEvaluation:
    """A causal LM's scores on a split of token blocks."""

    loss: float
    """Mean next-token negative log-likelihood, nats per token, over every predicted token of the split."""
    perplexity: float
    """exp(loss)."""
    token_accuracy: float
    """Share of the predicted tokens that are the model's argmax."""
    tokens: int
    """Tokens predicted (the loss's denominator)."""

    def scores(self) -> dict[str, float]:
        """The validation scores a report receives (``val_loss`` is the one minimised)."""
        return {"perplexity": self.perplexity, "token_accuracy": self.token_accuracy, "val_loss": self.loss}


@torch.inference_mode()
def lm_evaluate(model: torch.nn.Module, blocks: Any, batch_size: int) -> LMEvaluation:
    """Next-token scores of ``model`` on every batch of ``blocks.eval_batches(batch_size)`` (an
    :class:`objectives.Blocks`, or anything with a length giving ``input_ids`` / ``attention_mask`` / ``labels``
    batches), its progress shown as :func:`_eval_progress` says:

    loss = NLL = -(1 / M) * sum_{tokens} log p(y_{t+1} | y_<=t),  perplexity = exp(NLL),
    token_accuracy = (1 / M) * sum_{tokens} [argmax p(. | y_<=t) == y_{t+1}]

    over the M predicted tokens of the whole split (targets labelled -100 or padded out by the attention mask are
    not predicted): token-weighted, so a batch with more tokens counts more, and the perplexity is that of the
    split, not a mean of per-batch perplexities. Each batch's (B, L, V) logits exist at once: keep ``batch_size``
    small for large vocabularies."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    nll = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    count = done = 0
    total = len(blocks)
    progress = _eval_progress(getattr(blocks, "block_size", None))
    for batch in blocks.eval_batches(batch_size):
        input_ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        labels = batch["labels"].to(device).masked_fill(mask == 0, -100)
        z, y, _ = next_token(model(input_ids=input_ids, attention_mask=mask).logits, labels)
        nll += torch.nn.functional.cross_entropy(z.float(), y, reduction="sum").double()
        correct += (z.argmax(-1) == y).sum()
        count += y.numel()
        done += len(input_ids)
        progress(done, total)
    model.train(was_training)
    loss = nll.item() / max(1, count)
    return LMEvaluation(loss, math.exp(loss), correct.item() / max(1, count), count)


@torch.inference_mode()
def generation_costs(
    model: torch.nn.Module,
    prompt_ids: torch.Tensor,
    *,
    new_tokens: int = 32,
    prefill_tokens: int = 128,
    batch: int = 8,
    rounds: int = 10,
    prefill_repeats: int = 5,
    throughput_repeats: int = 2,
    rel_tol: float = 0.01,
) -> dict[str, float]:
    """What generating text with a causal LM costs; ``prompt_ids`` (1, P) is the fixed prompt.

    - ``latency_ms`` / ``latency_ms_p95``: ms per generated token, greedy at batch 1 with the KV cache: each round
      prefills the prompt (untimed) and times ``new_tokens`` one-token decoding steps (forward and argmax); p50 is
      the lowest round median over at most ``rounds`` rounds after one warm-up round (:func:`lowest_round_median`),
      p95 over every step.
    - ``prefill_ms``: one forward pass over a ``prefill_tokens``-token prompt (the prompt repeated to that length),
      as :func:`latency_ms` times it in rounds of ``prefill_repeats``.
    - ``throughput``: generated tokens per second of ``model.generate`` (greedy, exactly ``new_tokens`` new tokens)
      on ``batch`` copies of the prompt, over ``throughput_repeats`` calls after a short warm-up call.
    - ``gflops``: forward GFLOPs per token over the prompt (:func:`gflops` / P).
    """
    device = next(model.parameters()).device
    model.eval()
    prompt = prompt_ids.to(device)
    run_round = decode_round(model, prompt, new_tokens)
    run_round()
    p50, p95 = lowest_round_median(run_round, max_samples=rounds * new_tokens, rel_tol=rel_tol)
    repeats = -(-prefill_tokens // prompt.shape[1])
    long_prompt = {"input_ids": prompt.repeat(1, repeats)[:, :prefill_tokens]}
    prefill = latency_ms(
        model, long_prompt, warmup=1, min_repeats=prefill_repeats, max_repeats=rounds * prefill_repeats, rel_tol=rel_tol
    )[0]
    prompts = prompt.repeat(batch, 1)
    config = model.generation_config
    eos = config.eos_token_id[0] if isinstance(config.eos_token_id, list) else config.eos_token_id
    pad = config.pad_token_id if config.pad_token_id is not None else eos
    settings = {"attention_mask": torch.ones_like(prompts), "do_sample": False, "pad_token_id": pad or 0}
    model.generate(prompts, max_new_tokens=2, min_new_tokens=2, **settings)
    _sync(device)
    start = time.perf_counter()
    generated = 0
    for _ in range(throughput_repeats):
        out = model.generate(prompts, max_new_tokens=new_tokens, min_new_tokens=new_tokens, **settings)
        generated += (out.shape[1] - prompt.shape[1]) * batch
    _sync(device)
    return {
        "latency_ms": p50,
        "latency_ms_p95": p95,
        "prefill_ms": prefill,
        "throughput": generated / (time.perf_counter() - start),
        "gflops": gflops(model, {"input_ids": prompt}) / prompt.shape[1],
    }


def process_memory(field: str = "VmRSS") -> int:
    """A memory line of ``/proc/self/status``, in bytes: ``VmRSS`` resident now, ``VmHWM`` the resident peak since
    the last reset, ``VmData`` heap and private mappings (what ``RLIMIT_DATA`` caps)."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise OSError(f"/proc/self/status has no {field}")


def _release_free_heap() -> None:
    """Hand freed heap pages back to the OS (glibc ``malloc_trim``), so that memory reused later counts as growth."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass


def _reset_rss_peak() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM); False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


class PeakMemory:
    """Peak memory of a block, in MiB, on every device the growth over what the process held at the block's start
    (``peak_memory_mb``: a trial's training, so its optimiser state, gradients, activations and batches; neither
    the weights already loaded nor what other models, caches or earlier trials of the process hold):

        peak_mb = (max over the block of M(t) - M(start)) / 2^20

    with M the bytes the CUDA caching allocator has allocated on a GPU (``max_memory_allocated`` after a reset of
    the peak, minus ``memory_allocated`` at entry), and on a CPU the process's resident memory, freed heap first
    returned to the OS. On CPU the kernel's own high-water mark (VmHWM, reset through ``/proc/self/clear_refs``)
    is exact, so a short-lived allocation is never missed; where that reset is not allowed, a background thread
    samples the RSS every ``interval`` seconds instead."""

    def __init__(self, device: torch.device, interval: float = 0.02) -> None:
        self.device = device
        self.interval = interval
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._start = 0
        self._peak = 0

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self._peak = max(self._peak, process_memory())

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
            return self
        # Freed but still-resident heap would be reused without any RSS growth: release it before the baseline.
        _release_free_heap()
        self._start = self._peak = process_memory()
        if not _reset_rss_peak():
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            self.peak_mb = max(0, torch.cuda.max_memory_allocated(self.device) - self._start) / 2**20
            return
        if self._thread is None:
            self._peak = process_memory("VmHWM")
        else:
            self._stop.set()
            self._thread.join()
            self._peak = max(self._peak, process_memory())
        self.peak_mb = max(0, self._peak - self._start) / 2**20


def next_token(
    logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A causal LM's predictions lined up with their targets: position t predicts token t + 1, so the logits of
    positions 0..L-2 whose target ``labels[:, t + 1]`` is not ``ignore_index``, (M, V), those M targets, and the
    (B, L - 1) mask that picked them (the last position predicts nothing in the block)."""
    mask = labels[:, 1:] != ignore_index
    return logits[:, :-1][mask], labels[:, 1:][mask], mask
