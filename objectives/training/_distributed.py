"""One training run across the ranks of a ``torch.distributed`` process group (``train.devices`` > 1).

Every rank builds the same student from the same seed and draws the same global batches (``train.batch_size``
examples); each trains on its own contiguous slice of every batch (:class:`RankShard`), and the strategy averages
the gradients: ``ddp`` replicates the model (``torch.distributed._composable.replicate``, DDP under the hood,
parameter names unchanged), ``fsdp`` shards parameters, gradients and optimizer state (FSDP2's ``fully_shard``, one
unit per transformer layer, as ``_no_split_modules`` names them, then the root). Each rank's slice mean is weighted
by its share of the batch's targets (:meth:`RankGroup.share`: a causal LM's completions differ in length between
ranks), so the ranks' average is the global batch's mean, and a trial on N ranks trains the model one rank would, up
to floating-point order.
With gradient accumulation the gradients are averaged on each step's last micro-batch only (``_train``).
Validation is sharded (:meth:`RankGroup.sharded`): each rank scores its slice of every validation batch and the
slices' sums are merged into the whole set's scores on every rank (equal to one process's up to floating-point
order), so early stopping and pruning decide the same everywhere. No rank is left without rows of a batch (with
``fsdp`` a forward is a collective every rank runs, and the transformers models refuse an empty one): the
validation batch size is lowered where the last batch would be too small. Costs (latency, size, FLOPs) are measured by rank 0 alone,
before the model is wrapped: on one device at batch 1. Optuna-free: the launcher (``hpo.execution._distributed``)
owns the process group and the trial.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import torch


@dataclass(frozen=True)
class RankGroup:
    """This process's place in the trial's process group (initialised by the launcher)."""

    rank: int
    world: int
    strategy: str
    """``ddp`` or ``fsdp`` (see the module docstring)."""
    teacher_strategy: str = "replicate"
    """``teacher.strategy``: ``replicate`` (every rank holds the whole frozen teacher) or ``fsdp`` (each rank holds
    1/N of it: :meth:`shard_teacher`)."""

    def prepare(self, model: torch.nn.Module, stages: list[Any]) -> tuple[torch.nn.Module, list[Any]]:
        """``model`` wrapped by the strategy and ``stages`` (``objectives.training._fit.Stage``) reading this rank's
        shard, their live teachers sharded where ``teacher_strategy`` is ``fsdp`` (:meth:`shard_teacher`). A loss
        with parameters of its own (a layer term's projection) is refused: its gradients would not be averaged across
        ranks."""
        for stage in stages:
            if isinstance(stage.loss_fn, torch.nn.Module) and any(True for _ in stage.loss_fn.parameters()):
                raise ValueError(
                    "train.devices > 1 does not train a loss with parameters of its own (a layer term's projection); "
                    "use train.devices: 1 or drop distill.hidden_weight"
                )
        if self.teacher_strategy == "fsdp":
            stages = self._shard_teachers(stages, next(model.parameters()).device)
        return self.wrap(model), [replace(stage, data=self.shard(stage.data)) for stage in stages]

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """``model`` (already on this rank's device) made data-parallel in place by the strategy; returns it."""
        if self.strategy == "ddp":
            from torch.distributed._composable import replicate

            device = next(model.parameters()).device
            return replicate(model, device_ids=[device.index or 0] if device.type == "cuda" else None)
        if self.strategy == "fsdp":
            return self._fully_shard(model, next(model.parameters()).device)
        raise ValueError(f"strategy {self.strategy!r} is not one that trains here (ddp, fsdp)")

    def _fully_shard(self, model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        """``model`` sharded in place across the ranks onto ``device`` (FSDP2: one unit per ``_no_split_modules``
        layer, then the root); ``fully_shard`` moves each unit's weights to ``device`` as it shards them."""
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh(device.type, (self.world,))
        units = set(getattr(model, "_no_split_modules", None) or ())
        for module in list(model.modules())[1:]:
            if type(module).__name__ in units:
                fully_shard(module, mesh=mesh)
        return fully_shard(model, mesh=mesh)

    def shard_teacher(self, teacher: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        """A copy of the frozen ``teacher`` sharded across the ranks onto ``device`` (``teacher.strategy: fsdp``):
        each rank holds 1/N of its weights, and each forward gathers one layer at a time, a collective every rank
        runs (each rank forwards its slice of every training batch, so they run the same forwards). The copy is
        made where the process keeps the teacher (the CPU: :func:`shards_teacher`) and moved to ``device`` unit by
        unit as it is sharded, so the whole teacher is never on the device; the kept teacher stays whole (students
        are cut from it)."""
        import copy

        return self._fully_shard(copy.deepcopy(teacher), device)

    def _shard_teachers(self, stages: list[Any], device: torch.device) -> list[Any]:
        """``stages`` whose live teachers (a model, or the live part of on-policy ``Teachers``) are replaced by one
        sharded copy each (:meth:`shard_teacher`); cached logits are left as they are."""
        from objectives.training._on_policy import Teachers

        copies: dict[int, torch.nn.Module] = {}

        def sharded(teacher: torch.nn.Module) -> torch.nn.Module:
            if id(teacher) not in copies:
                copies[id(teacher)] = self.shard_teacher(teacher, device)
            return copies[id(teacher)]

        out = []
        for stage in stages:
            teacher = stage.teacher
            if isinstance(teacher, torch.nn.Module):
                teacher = sharded(teacher)
            elif isinstance(teacher, Teachers):
                teacher = replace(teacher, live=sharded(teacher.live))
            out.append(replace(stage, teacher=teacher))
        return out

    def sharded(
        self, evaluate: Callable[[torch.nn.Module, Any, int], Any]
    ) -> Callable[[torch.nn.Module, Any, int], Any]:
        """``evaluate`` (a task's: classification's, ``lm_evaluate``, ``completion_evaluate``) run by each rank on its
        slice of every validation batch (:class:`EvalShard`), the ranks' scores merged (:func:`merge_scores`): the
        whole set's, on every rank. Every rank gets rows of every batch (under ``fsdp`` a forward is a collective
        every rank runs; under ``ddp`` the first forward after training syncs buffers): the batch size is lowered
        where the last batch would have fewer rows than ranks (:func:`even_batch`), and a set smaller than the
        ranks is scored whole on every rank."""

        def each_rank(model: torch.nn.Module, data: Any, batch_size: int) -> Any:
            size = even_batch(len(data), batch_size, self.world)  # every rank rows of every batch
            if size == 0:  # fewer examples than ranks
                return evaluate(model, data, batch_size)
            shard = EvalShard(data, self.rank, self.world)
            return merge_scores(self.gather(evaluate(model, shard, size)), shard.sizes)

        return each_rank

    def shard(self, data: Any) -> RankShard:
        """``data`` whose training batches are this rank's slice of each global batch."""
        return RankShard(data, self.rank, self.world)

    def share(self, labels: torch.Tensor) -> torch.Tensor:
        """This rank's weight on its slice's mean loss, N * n_r / sum_r n_r (a collective: every rank calls it on
        each micro-batch), so the ranks' averaged gradients are those of the global batch's mean: n_r is the slice's
        targets, its rows for a classifier (1-D ``labels``; equal, since ``train.batch_size`` divides by the ranks,
        so the weight is 1) and its next-token targets for a causal LM (``labels[:, 1:]`` not -100: a prompt-
        completion batch's completions differ in length between ranks, and each rank's loss is a mean over its own).
        """
        import torch.distributed as dist

        mine = labels[:, 1:] != -100 if labels.dim() == 2 else torch.ones_like(labels, dtype=torch.bool)
        counts = mine.sum().float()
        total = counts.clone()
        dist.all_reduce(total)
        return self.world * counts / total.clamp(min=1.0)

    def gather(self, value: Any) -> list[Any]:
        """``value`` of every rank, by rank (a collective: every rank calls it)."""
        import torch.distributed as dist

        values: list[Any] = [None] * self.world
        dist.all_gather_object(values, value)
        return values


def teacher_parameters(stages: list[Any]) -> int | None:
    """How many of the live teacher's weights this rank holds in ``stages`` (as :meth:`RankGroup.prepare` left
    them): all of them, or its shards' (``teacher.strategy: fsdp``); None where no stage runs a live teacher."""
    from torch.distributed.tensor import DTensor

    from objectives.training._on_policy import Teachers

    for stage in stages:
        teacher = stage.teacher.live if isinstance(stage.teacher, Teachers) else stage.teacher
        if isinstance(teacher, torch.nn.Module):
            return sum((p.to_local() if isinstance(p, DTensor) else p).numel() for p in teacher.parameters())
    return None


class RankShard:
    """A data set seen by one rank: ``train_batches(batch_size, ...)`` yields rows ``[r * b / N, (r + 1) * b / N)``
    of each of the data's global batches of ``batch_size`` (drawn with the same seed on every rank); everything
    else (``eval_batches``, ``len``, ``fingerprint``) is the whole data's."""

    def __init__(self, data: Any, rank: int, world: int) -> None:
        self.data, self.rank, self.world = data, rank, world

    def __len__(self) -> int:
        return len(self.data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.data, name)

    def train_batches(self, batch_size: int, seed: int, **options: Any) -> Iterator[dict[str, Any]]:
        for batch in self.data.train_batches(batch_size, seed, **options):
            yield {key: value.tensor_split(self.world)[self.rank] for key, value in batch.items()}


class EvalShard:
    """A validation set seen by one rank: ``eval_batches(batch_size)`` yields rank r's part of each of the data's
    batches (``tensor_split`` by rows: the first ``n % N`` ranks one row more; a rank whose part is empty skips the
    batch, which :meth:`RankGroup.sharded` avoids); :attr:`sizes` records every rank's rows of each batch, for :func:`merge_scores`. Everything else
    (``len``, ``generation_sample``...) is the whole data's."""

    def __init__(self, data: Any, rank: int, world: int) -> None:
        self.data, self.rank, self.world = data, rank, world
        self.sizes: list[list[int]] = []
        self.rows: list[torch.Tensor] = []
        """The ``index`` (example numbers) of every batch part this rank was given, when the batches carry one."""

    def __len__(self) -> int:
        return len(self.data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.data, name)

    def eval_batches(self, batch_size: int) -> Iterator[dict[str, Any]]:
        self.sizes, self.rows = [], []
        for batch in self.data.eval_batches(batch_size):
            rows = len(next(iter(batch.values())))
            self.sizes.append([len(part) for part in torch.arange(rows).tensor_split(self.world)])
            if self.sizes[-1][self.rank]:
                part = {
                    k: v.tensor_split(self.world)[self.rank] if isinstance(v, torch.Tensor) else v
                    for k, v in batch.items()
                }
                if "index" in part:
                    self.rows.append(part["index"])
                yield part


def even_batch(rows: int, batch_size: int, world: int) -> int:
    """The largest batch size from ``world`` up to ``batch_size`` (else the smallest above it) that splits ``rows``
    into batches of at least ``world`` rows each, the last one too, so every rank gets rows of every batch;
    ``batch_size`` itself unless its last batch is too small; 0 when ``rows`` < ``world`` (none does)."""
    if rows < world:
        return 0
    smaller = range(min(batch_size, rows), world - 1, -1)
    for size in [*smaller, *range(max(batch_size + 1, world), rows + 1)]:  # larger only if no smaller one does
        if rows % size == 0 or rows % size >= world:
            return size
    raise AssertionError("unreachable: a batch of every row qualifies")


def merge_scores(parts: list[Any], sizes: list[list[int]]) -> Any:
    """The whole validation set's scores from each rank's scores of its slices (``parts``, by rank; ``sizes`` as
    :attr:`EvalShard.sizes`). Sums are merged, then divided once, as one process divides them:

    - classification (``Evaluation``): loss = sum_r loss_r * n_r / sum_r n_r; the predictions and labels put back
      in the data's batch order, accuracy, macro-F1 and the top label's share computed on them;
    - language models (``LMEvaluation``, ``CompletionEvaluation``): loss = sum_r loss_r * M_r / M (M tokens),
      perplexity = exp(loss), token_accuracy = sum_r acc_r * M_r / M; generation metrics and samples are rank
      0's (every rank completes the whole generation sample, alike)."""
    from objectives.evaluation import LMEvaluation, accuracy, macro_f1
    from objectives.evaluation._generation import CompletionEvaluation
    from objectives.training._train import Evaluation

    first = parts[0]
    if isinstance(first, Evaluation):
        taken = [0] * len(parts)
        preds: list[int] = []
        labels: list[int] = []
        for batch in sizes:
            for rank, rows in enumerate(batch):
                preds += parts[rank].preds[taken[rank] : taken[rank] + rows]
                labels += parts[rank].labels[taken[rank] : taken[rank] + rows]
                taken[rank] += rows
        loss = sum(p.loss * len(p.labels) for p in parts) / len(labels)
        top_share = max(preds.count(c) for c in set(preds)) / len(preds)
        return Evaluation(loss, accuracy(preds, labels), macro_f1(preds, labels), top_share, preds, labels)
    if isinstance(first, LMEvaluation | CompletionEvaluation):
        tokens = sum(p.tokens for p in parts)
        loss = sum(p.loss * p.tokens for p in parts) / max(1, tokens)
        correct = sum(round(p.token_accuracy * p.tokens) for p in parts)
        return replace(
            first, loss=loss, perplexity=math.exp(loss), token_accuracy=correct / max(1, tokens), tokens=tokens
        )
    raise TypeError(f"cannot merge the ranks' scores of type {type(first).__name__}")


_GROUP: contextvars.ContextVar[RankGroup | None] = contextvars.ContextVar("rank_group", default=None)


@contextlib.contextmanager
def distributed_training(group: RankGroup) -> Iterator[None]:
    """Make every training run inside the block (``fit``) one rank's part of a run across ``group``."""
    token = _GROUP.set(group)
    try:
        yield
    finally:
        _GROUP.reset(token)


def current_group() -> RankGroup | None:
    """The rank group of an enclosing :func:`distributed_training`, or None (one process)."""
    return _GROUP.get()


def shards_teacher() -> bool:
    """Whether the enclosing trial on several devices shards its teacher (``teacher.strategy: fsdp``): the process
    then keeps the frozen teacher on the CPU (``objectives.training._fit.frozen_teacher``), a trial's live teacher
    is a sharded copy on the devices (:meth:`RankGroup.shard_teacher`), and no ``speedup`` is timed against it."""
    group = _GROUP.get()
    return group is not None and group.teacher_strategy == "fsdp"
