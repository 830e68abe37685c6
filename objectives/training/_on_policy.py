"""On-policy distillation (generalised knowledge distillation, Agarwal et al. 2024; TRL's ``GKDTrainer``): in a
fraction lambda of the training batches the student completes the batch's prompts itself, and the live teacher
scores those completions token by token; the other batches, the references, read the study's cached teacher
logits where there are some (:class:`Teachers`).

:class:`OnPolicy` wraps a split of instruction examples: its training batches are the split's, except that with
probability ``fraction`` a batch's completions are replaced by the student's own (sampled at ``temperature``), and
:meth:`OnPolicy.loss` picks the loss of the batch just drawn. The generation function is a parameter
(:data:`Generate`): Hugging Face ``generate`` with the KV cache by default; a vLLM engine on a GPU fits the same
signature.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from objectives.evaluation import completions
from objectives.training._logits import HeadInputs

Generate = Callable[..., list[list[int]]]
"""(model, prompts, *, pad_token_id, eos_token_id, max_new_tokens, temperature) -> each prompt's new tokens, cut
before the first EOS (:func:`objectives.evaluation.completions`)."""

Loss = Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]


class OnPolicy:
    """Instruction examples (:class:`objectives.data.Examples`) whose training batches are, with probability
    ``fraction`` each (a seeded draw), the batch's prompts completed by ``student``: right-padded rows of prompt +
    sampled tokens (+ EOS where generation stopped), labels -100 on the prompt, so every loss weighs the student's
    own tokens only. Everything else (evaluation, caching keys, length) is the wrapped split's."""

    def __init__(
        self,
        data: Any,
        student: torch.nn.Module,
        *,
        fraction: float,
        temperature: float,
        max_new_tokens: int,
        generate: Generate = completions,
    ) -> None:
        self.data = data
        self.student = student
        self.fraction = fraction
        self.temperature = temperature
        self.max_new_tokens = max_new_tokens
        self.generate = generate
        self.on_policy = False
        """Whether the batch drawn last is the student's own."""
        self.generated = 0
        """On-policy batches drawn so far."""

    def __len__(self) -> int:
        return len(self.data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.data, name)

    def train_batches(self, batch_size: int, seed: int, *, group_by_length: bool = True) -> Iterator[dict[str, Any]]:
        """The split's training batches, each replaced by :meth:`student_batch` with probability ``fraction``."""
        draw = random.Random(f"on-policy:{seed}")
        for batch in self.data.train_batches(batch_size, seed, group_by_length=group_by_length):
            self.on_policy = draw.random() < self.fraction
            yield self.student_batch(batch) if self.on_policy else batch

    def student_batch(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``batch``'s prompts with the student's sampled completions in place of the references."""
        self.generated += 1
        rows = batch["index"].tolist()
        prompts = [self.data.prompt(i) for i in rows]
        eos = self.data.tokenizer.eos_token_id
        new = self.generate(
            self.student,
            prompts,
            pad_token_id=self.data.pad_token_id,
            eos_token_id=eos,
            max_new_tokens=self.max_new_tokens,
            temperature=self.temperature,
        )
        tokens = [c if len(c) == self.max_new_tokens else [*c, eos] for c in new]  # EOS where it stopped
        width = max(len(p) + len(c) for p, c in zip(prompts, tokens, strict=True))
        input_ids = torch.full((len(rows), width), self.data.pad_token_id, dtype=torch.long)
        labels = torch.full((len(rows), width), -100, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for row, (prompt, completion) in enumerate(zip(prompts, tokens, strict=True)):
            n = len(prompt) + len(completion)
            input_ids[row, :n] = torch.tensor(prompt + completion)
            labels[row, len(prompt) : n] = torch.tensor(completion, dtype=torch.long)
            mask[row, :n] = 1
        return {"input_ids": input_ids, "attention_mask": mask, "labels": labels, "index": batch["index"]}

    def loss(self, off_policy: Loss, on_policy: Loss) -> Loss:
        """The loss of the batch drawn last: ``on_policy`` (the divergence alone, as GKD trains on the student's
        own tokens: no cross-entropy toward its samples) or ``off_policy`` (the study's loss on the references)."""

        def loss(student_logits: torch.Tensor, labels: torch.Tensor, teacher_logits: Any = None) -> torch.Tensor:
            chosen = on_policy if self.on_policy else off_policy
            return chosen(student_logits, labels, teacher_logits)

        return loss


@dataclass
class Teachers:
    """The teacher of an on-policy run with a cache: ``live`` scores the student's own batches (new tokens, which no
    cache holds), ``cached`` (the study's stored logits of the references) serves the off-policy ones, so a trial
    with 0 < lambda < 1 runs the teacher on a fraction lambda of its batches only. ``data`` says which batch was
    drawn last (:attr:`OnPolicy.on_policy`)."""

    live: torch.nn.Module
    cached: torch.Tensor | HeadInputs
    data: OnPolicy

    def to(self, device: torch.device) -> Teachers:
        """Ready for training on ``device``: the live teacher in eval mode, the cache's head moved there."""
        self.live.eval()
        cached = self.cached.head_to(device) if isinstance(self.cached, HeadInputs) else self.cached
        return Teachers(self.live, cached, self.data)

    def current(self) -> torch.nn.Module | torch.Tensor | HeadInputs:
        """The teacher of the batch drawn last: the live model for the student's own tokens, else the cache."""
        return self.live if self.data.on_policy else self.cached
