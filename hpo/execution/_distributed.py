"""A trial on several devices (``train.devices`` > 1): one Optuna trial, several ranks of one process group.

Rank 0 is the worker process itself: it holds the trial (asked of the study under the heartbeat, as for any
trial), starts ranks 1..N-1 as spawned child processes, and joins them in a ``torch.distributed`` group (gloo on
CPU, where a device is a process; NCCL on GPUs, rank r on the r-th device after the worker's own). It broadcasts
the trial's config, parameters, seed and number (``broadcast_object_list``), so every rank trains the same trial;
at each validation it reports to the study, asks the pruner and broadcasts the decision, and every rank stops on a
pruning. No other rank opens the study: they get no storage, no store and no lease, only the tokenised data, the
teacher's folder and, when the teacher's logits are cached, the path of the cache file rank 0 fetched (each rank
reads its shard's rows from it). What a rank trains is ``objectives.training._distributed``.

A rank that raises or dies (exception, OOM, kill -9) fails the trial with ``rank R: reason``; the other ranks are
torn down (SIGTERM, then SIGKILL) before the trial is recorded, and the worker goes on. A child rank dies with its
worker (``PR_SET_PDEATHSIG``). The collectives' timeout (``COLLECTIVE_TIMEOUT``) bounds only a rank that hangs
alive; a dead rank is seen at once, by its closed connection and its exit.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import datetime
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import torch
import torch.distributed as dist

from objectives import (
    ConfigError,
    EvalShard,
    HeadInputs,
    NonFiniteLoss,
    RankGroup,
    Report,
    distributed_training,
    load_logits,
    read_logits,
    teacher_logits,
)

log = logging.getLogger("hpo")

COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=30)
"""How long a rank waits in one collective (torch's default): rank 0 may spend minutes alone (measuring costs,
building the logit cache) while the others wait."""

FAILURE_WAIT_S = 5.0
"""After rank 0 sees a collective fail, how long it waits for another rank's exit or message naming the cause."""

STOP_WAIT_S = 30.0
"""How long rank 0 waits for the other ranks to finish cleanly (after a complete or pruned trial) before killing."""


class RankFailed(RuntimeError):
    """A rank of a trial on several devices raised or died; the message names the rank and why."""


@dataclass(frozen=True)
class RankResult:
    """What a rank other than 0 reports when its part of the trial ends."""

    rank: int
    outcome: str
    """``complete`` or ``pruned``."""
    params: dict[str, Any]
    """The trial parameters the rank trained with (received from rank 0)."""
    seed: int
    peak_memory_mb: float | None
    """This rank's own peak memory (None when pruned before its end)."""


class _Stopped(Exception):
    """Raised on a rank other than 0 when rank 0 broadcasts that the trial was pruned."""


def _decide(decision: str | None) -> str | None:
    """Broadcast rank 0's pruning ``decision`` (a message, or None to go on); every rank returns it."""
    box = [decision]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _leading(report: Report | None) -> Report:
    """Rank 0's report: the trial's own (which reports to the study and may prune), its decision broadcast."""

    def lead(step: int, scores: dict[str, float], final: bool) -> None:
        decision = None
        try:
            if report is not None:
                report(step, scores, final)
        except optuna.TrialPruned as exc:
            decision = str(exc) or f"pruned at step {step}"
        if _decide(decision) is not None:
            raise optuna.TrialPruned(decision)

    return lead


def _following(step: int, scores: dict[str, float], final: bool) -> None:
    """The report of a rank other than 0: wait for rank 0's decision at the same validation."""
    decision = _decide(None)
    if decision is not None:
        raise _Stopped(decision)


class SharedLogits:
    """The teacher's cached logits across ranks: on rank 0 the study's cache (``LogitCache``: computed once per
    study, under its lease), whose local file path it broadcasts; on the other ranks that file, memory-mapped, so
    each rank reads only its shard's rows. A collective: every rank asks for the same entries in the same order.

    When rank 0 computes an entry (no process did before), every rank computes the teacher's logits of its slice of
    each batch (:class:`objectives.EvalShard`) on its own device, writes them to a folder of rank 0's (the ranks
    share the host), and rank 0 puts the rows together in example order (:func:`_parallel_logits`). That is done
    with each rank's whole teacher, before a trial's training shards a copy of it (``teacher.strategy: fsdp``, on
    the CPU there: :func:`objectives.training._fit.frozen_teacher`), so its slices need not be equal nor the ranks'
    forwards in lockstep."""

    def __init__(self, cache: Any = None, rank: int = 0, world: int = 1) -> None:
        self.cache, self.rank, self.world = cache, rank, world

    def __call__(self, name: str, data: Any, teacher: torch.nn.Module) -> Any:
        if self.cache is None:
            while True:  # rank 0 asks for this rank's part of a computation, then sends the path
                box: list[Any] = [None]
                dist.broadcast_object_list(box, src=0)
                kind, *rest = box[0]
                if kind == "path":
                    return read_logits(rest[0])
                folder, batch_size = rest
                _write_part(teacher, data, batch_size, self.rank, self.world, Path(folder))
                dist.barrier()

        def parallel(teacher: torch.nn.Module, data: Any, batch_size: int) -> Any:
            return _parallel_logits(teacher, data, batch_size, self.world)

        plain, self.cache.compute_logits = self.cache.compute_logits, parallel
        try:
            logits = self.cache(name, data, teacher)
        finally:
            self.cache.compute_logits = plain
        dist.broadcast_object_list([("path", str(self.cache.artifacts.fetch(self.cache.entry(name, data))))], src=0)
        return logits


def _write_part(teacher: torch.nn.Module, data: Any, batch_size: int, rank: int, world: int, folder: Path) -> None:
    """Rank ``rank``'s part of the teacher's logits of ``data`` and the example numbers of its rows, to ``folder``."""
    shard = EvalShard(data, rank, world)
    logits = teacher_logits(teacher, shard, batch_size)  # rows in the order of the shard's example numbers
    rows = torch.cat(shard.rows).sort().values
    state = logits.state() if isinstance(logits, HeadInputs) else {"logits": logits}
    torch.save({**state, "rows": rows}, folder / f"rank-{rank}.pt")


def _parallel_logits(teacher: torch.nn.Module, data: Any, batch_size: int, world: int) -> Any:
    """Rank 0's computation of the teacher's logits of ``data`` with every rank computing its part: rows put back in
    example order (a causal LM's head is rank 0's; every rank holds the same frozen teacher)."""
    with tempfile.TemporaryDirectory(prefix="hpo-logits-") as folder:
        dist.broadcast_object_list([("compute", folder, batch_size)], src=0)
        _write_part(teacher, data, batch_size, 0, world, Path(folder))
        dist.barrier()  # every rank wrote its part
        parts = [torch.load(Path(folder) / f"rank-{r}.pt", weights_only=True) for r in range(world)]
    log.info("teacher logits computed on %d ranks (%s rows)", world, "/".join(str(len(p["rows"])) for p in parts))
    return _assemble(parts, len(data))


def _assemble(parts: list[dict[str, torch.Tensor]], rows: int) -> torch.Tensor | HeadInputs:
    """The ``rows`` examples' logits (a classifier's) or head inputs (a causal LM's, with rank 0's head) from the
    ranks' parts (:func:`_write_part`), in example order."""
    key = "logits" if "logits" in parts[0] else "states"
    first = parts[0][key]
    whole = first.new_empty((rows, *first.shape[1:]))
    for part in parts:
        whole[part["rows"]] = part[key]
    if key == "logits":
        return whole
    return load_logits({**{k: v for k, v in parts[0].items() if k != "rows"}, "states": whole})


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when the worker that started it dies (no orphaned rank)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _rank_main(
    rank: int,
    world: int,
    address: str,
    backend: str,
    threads: int,
    runner_type: type,
    work: Any,
    teacher_dir: Path | None,
    cached: bool,
    conn: multiprocessing.connection.Connection,
) -> None:
    """A rank other than 0: join the group, receive the trial, train its part, report how it ended."""
    _die_with_parent()
    torch.set_num_threads(threads)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    try:
        if work is not None and work.device.type == "cuda":
            work = copy.copy(work)
            work.device = torch.device("cuda", (work.device.index or 0) + rank)
            torch.cuda.set_device(work.device)
        conn.send(("ready", rank))
        dist.init_process_group(backend, init_method=address, rank=rank, world_size=world, timeout=COLLECTIVE_TIMEOUT)
        box: list[Any] = [None] * 4
        dist.broadcast_object_list(box, src=0)
        config, params, seed, number = box
        runner = runner_type(config, work, teacher_dir, logits=SharedLogits(None, rank, world) if cached else None)
        try:
            with distributed_training(RankGroup(rank, world, config.train.strategy, config.teacher.strategy)):
                metrics = runner.train(config, params, seed, number, _following)
            result = RankResult(rank, "complete", params, seed, metrics.get("rank_peak_memory_mb"))
        except _Stopped:
            result = RankResult(rank, "pruned", params, seed, None)
        conn.send(("done", result))
    except BaseException as exc:
        with contextlib.suppress(OSError):
            conn.send(("error", f"{type(exc).__name__}: {exc}"[:1000]))
        os._exit(1)
    conn.close()
    os._exit(0)  # no interpreter teardown: nothing of the process group is left to wait on


@dataclass
class _Rank:
    rank: int
    process: multiprocessing.process.BaseProcess
    conn: multiprocessing.connection.Connection
    message: tuple[Any, ...] | None = None

    def poll(self) -> tuple[Any, ...] | None:
        """The rank's next message if one is waiting (None once its pipe is closed)."""
        with contextlib.suppress(EOFError, OSError):
            if self.conn.poll():
                self.message = self.conn.recv()
                return self.message
        return None

    def reason(self) -> str | None:
        """Why the rank failed: the exception it sent, or how it died; None while it lives and sent no error."""
        if self.message is not None and self.message[0] == "error":
            return str(self.message[1])
        code = self.process.exitcode
        if code is None or (code == 0 and self.message is not None and self.message[0] == "done"):
            return None
        if code < 0:
            return f"killed by {signal.Signals(-code).name}"
        return f"exited with code {code}"


def _wait(ranks: list[_Rank], kind: str, timeout: float | None) -> None:
    """Wait until every rank sent a ``kind`` message; raise :class:`RankFailed` as soon as one fails or dies."""
    waiting = {r.rank: r for r in ranks}
    deadline = None if timeout is None else datetime.datetime.now() + datetime.timedelta(seconds=timeout)
    while waiting:
        left = None if deadline is None else max(0.0, (deadline - datetime.datetime.now()).total_seconds())
        handles = [h for r in waiting.values() for h in (r.conn, r.process.sentinel)]
        if not multiprocessing.connection.wait(handles, left):
            raise RankFailed(f"rank {min(waiting)}: sent no {kind!r} within {timeout:.0f} s")
        for rank in list(waiting.values()):
            message = rank.poll()
            if message is not None and message[0] == kind:
                del waiting[rank.rank]
            elif (message is not None and message[0] == "error") or not rank.process.is_alive():
                rank.process.join(1)
                raise _failed(rank)


def _failed(rank: _Rank) -> Exception:
    """The exception that fails the trial for ``rank``'s failure: a NaN loss stays :class:`NonFiniteLoss` (the
    trial is pruned with ``fail_reason: nan``, as on one device), anything else is :class:`RankFailed`."""
    reason = rank.reason() or "exited"
    kind = NonFiniteLoss if reason.startswith(f"{NonFiniteLoss.__name__}: ") else RankFailed
    return kind(f"rank {rank.rank}: {reason}")


def _failure(ranks: list[_Rank]) -> Exception | None:
    """The failure of another rank that made rank 0's collective fail, waited for up to ``FAILURE_WAIT_S``."""
    deadline = datetime.datetime.now() + datetime.timedelta(seconds=FAILURE_WAIT_S)
    while True:
        for rank in ranks:
            rank.poll()
            if rank.reason() is not None:
                rank.process.join(1)
                return _failed(rank)
        left = (deadline - datetime.datetime.now()).total_seconds()
        if left <= 0:
            return None
        multiprocessing.connection.wait([h for r in ranks for h in (r.conn, r.process.sentinel)], min(left, 0.5))


def _tear_down(ranks: list[_Rank]) -> None:
    """End every rank still running: SIGTERM, then SIGKILL; reap them all."""
    for rank in ranks:
        if rank.process.is_alive():
            rank.process.terminate()
    for rank in ranks:
        rank.process.join(5)
        if rank.process.is_alive():
            rank.process.kill()
            rank.process.join()
        rank.conn.close()


def _backend(work: Any, world: int) -> str:
    """gloo on CPU (a device is a process), NCCL on GPUs, after checking the worker sees ``world`` of them."""
    device = getattr(work, "device", torch.device("cpu"))
    if device.type != "cuda":
        return "gloo"
    seen = torch.cuda.device_count() - (device.index or 0)
    if seen < world:
        raise ConfigError(
            "train.devices",
            f"asks for {world} GPUs per trial but this worker sees {seen} from {device}; give it more "
            "(hpo worker --gpus) or lower train.devices",
        )
    return "nccl"


def _free_address() -> str:
    """A TCP rendezvous address on this host on a port free now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{sock.getsockname()[1]}"


@contextlib.contextmanager
def _group(backend: str, address: str, world: int) -> Iterator[None]:
    dist.init_process_group(backend, init_method=address, rank=0, world_size=world, timeout=COLLECTIVE_TIMEOUT)
    try:
        yield
    finally:
        dist.destroy_process_group()


def train_distributed(
    runner: Any,
    config: Any,
    params: dict[str, Any],
    seed: int,
    trial_number: int,
    report: Report | None = None,
    on_cost: Callable[[dict[str, Any]], None] | None = None,
    costs: Any = None,
) -> dict[str, float]:
    """Train one trial on ``config.train.devices`` ranks, this process being rank 0; returns rank 0's metrics
    (``peak_memory_mb`` the largest of any rank). ``runner`` is the worker's ``TrialRunner``: its ``train`` runs
    each rank's part, and ``on_cost`` records ``devices``, ``strategy``, ``rank_peak_memory_mb`` (by rank) and, in
    a trial with a live teacher, ``rank_teacher_params`` (the teacher's weights each rank held: all, or its shards
    under ``teacher.strategy: fsdp``)."""
    world, strategy = config.train.devices, config.train.strategy
    backend = _backend(runner.work, world)
    address = _free_address()
    context = multiprocessing.get_context("spawn")
    threads = max(1, torch.get_num_threads() // world)
    ranks: list[_Rank] = []
    try:
        for rank in range(1, world):
            receive, send = context.Pipe(duplex=False)
            args = (rank, world, address, backend, threads, type(runner), runner.work, runner.teacher_dir)
            process = context.Process(
                target=_rank_main, args=(*args, runner.logits is not None, send), name=f"hpo-rank-{rank}", daemon=True
            )
            process.start()
            send.close()
            ranks.append(_Rank(rank, process, receive))
        _wait(ranks, "ready", None)
        leader = copy.copy(runner)
        leader.logits = SharedLogits(runner.logits, 0, world) if runner.logits is not None else None
        with _group(backend, address, world):
            try:
                dist.broadcast_object_list([config, params, seed, trial_number], src=0)
                with distributed_training(RankGroup(0, world, strategy, config.teacher.strategy)):
                    metrics = leader.train(config, params, seed, trial_number, _leading(report), on_cost, costs)
                _wait(ranks, "done", STOP_WAIT_S)
            except optuna.TrialPruned:
                with contextlib.suppress(RankFailed):
                    _wait(ranks, "done", STOP_WAIT_S)
                _log_ranks(ranks)
                raise
            except NonFiniteLoss:
                raise  # rank 0's own NaN: pruned with fail_reason nan, as on one device
            except Exception as exc:
                failure = _failure(ranks) if not isinstance(exc, RankFailed) else None
                if failure is not None:
                    raise failure from exc
                raise
    finally:
        _tear_down(ranks)
    results = _log_ranks(ranks)
    for result in results:
        if (result.params, result.seed) != (params, seed):  # broadcast guarantees it; a mismatch is a bug
            raise RankFailed(f"rank {result.rank}: trained params {result.params} seed {result.seed}, not rank 0's")
    peaks = [metrics.pop("rank_peak_memory_mb"), *(r.peak_memory_mb for r in results)]
    held = metrics.pop("rank_teacher_params", None)
    if on_cost is not None:
        teacher = {} if held is None else {"rank_teacher_params": held}
        on_cost({"devices": world, "strategy": strategy, "rank_peak_memory_mb": peaks, **teacher})
    return metrics


def _log_ranks(ranks: list[_Rank]) -> list[RankResult]:
    """Log how each rank other than 0 ended; returns their results."""
    results = [r.message[1] for r in ranks if r.message is not None and r.message[0] == "done"]
    for result in results:
        log.info(
            "rank %d %s: seed %d, params %s, peak memory %s MB",
            result.rank,
            result.outcome,
            result.seed,
            result.params,
            "-" if result.peak_memory_mb is None else f"{result.peak_memory_mb:.0f}",
        )
    return results
