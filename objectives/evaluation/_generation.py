"""What a causal LM generates for held-out prompts, scored against their references: exact match and ROUGE-L
(``rouge-score``), with completion perplexity and token accuracy (:func:`objectives.evaluation.lm_evaluate` on
examples whose prompt tokens are labelled -100)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from objectives.evaluation._metrics import lm_evaluate


def _normalised(text: str) -> str:
    return " ".join(text.split())


def exact_match(predictions: list[str], references: list[str]) -> float:
    """exact_match = (1 / N) * sum_n [norm(pred_n) == norm(ref_n)], norm collapsing runs of whitespace and
    stripping the ends (case and punctuation count)."""
    pairs = zip(predictions, references, strict=True)
    return sum(_normalised(p) == _normalised(r) for p, r in pairs) / max(1, len(references))


def rouge_l(predictions: list[str], references: list[str]) -> float:
    """Mean ROUGE-L F-measure (Lin 2004) of each prediction against its reference, as ``rouge-score`` computes it
    (lower-cased alphanumeric tokens): F = 2 P R / (P + R), P = LCS / |pred|, R = LCS / |ref|."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"])
    pairs = zip(predictions, references, strict=True)
    return sum(scorer.score(r, p)["rougeL"].fmeasure for p, r in pairs) / max(1, len(references))


@torch.no_grad()  # not inference_mode: a model wrapped for training (DDP, FSDP2) keeps what its forward makes
def completions(
    model: torch.nn.Module,
    prompts: list[list[int]],
    *,
    pad_token_id: int,
    eos_token_id: int,
    max_new_tokens: int,
    batch_size: int = 16,
    temperature: float = 0.0,
) -> list[list[int]]:
    """Each prompt's continuation (``model.generate``, KV cache, left-padded batches), up to ``max_new_tokens``
    tokens and cut before the first EOS: greedy at ``temperature`` 0, else sampled from softmax(z / temperature)
    (torch's global random state)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        width = max(len(p) for p in chunk)
        ids = torch.full((len(chunk), width), pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, prompt in enumerate(chunk):
            ids[row, width - len(prompt) :] = torch.tensor(prompt)
            mask[row, width - len(prompt) :] = 1
        generated = model.generate(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            max_new_tokens=max_new_tokens,
            **(
                {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0}
                if temperature
                else {"do_sample": False}
            ),
            pad_token_id=pad_token_id,
            eos_token_id=eos_token_id,
        )
        for row in generated[:, width:].tolist():
            out.append(row[: row.index(eos_token_id)] if eos_token_id in row else row)
    model.train(was_training)
    return out


@dataclass
class CompletionEvaluation:
    """A causal LM's scores on instruction examples: over the completion tokens, and of its greedy completions of
    the split's fixed generation sample."""

    loss: float
    """Mean negative log-likelihood of the completion tokens, nats per token."""
    perplexity: float
    """exp(loss): completion perplexity."""
    token_accuracy: float
    """Share of the completion tokens that are the model's argmax."""
    tokens: int
    exact_match: float
    rouge_l: float
    samples: list[tuple[str, str]] = field(default_factory=list)
    """(prompt, generated completion) of the generation sample."""

    def scores(self) -> dict[str, float]:
        return {
            "perplexity": self.perplexity,
            "token_accuracy": self.token_accuracy,
            "exact_match": self.exact_match,
            "rouge_l": self.rouge_l,
            "val_loss": self.loss,
        }


def completion_evaluate(model: torch.nn.Module, examples: Any, batch_size: int) -> CompletionEvaluation:
    """:func:`lm_evaluate` over ``examples``' completion tokens, and :func:`exact_match` / :func:`rouge_l` of the
    greedy completions (``examples.max_new_tokens`` tokens at most) of the prompts of
    ``examples.generation_sample()`` against their references (an :class:`objectives.data.Examples`)."""
    scored = lm_evaluate(model, examples, batch_size)
    sample = examples.generation_sample()
    tokenizer = examples.tokenizer
    outputs = completions(
        model,
        [examples.prompt(i) for i in sample],
        pad_token_id=examples.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        max_new_tokens=examples.max_new_tokens,
        batch_size=batch_size,
    )
    texts = [tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in outputs]
    references = [examples.references[i] for i in sample]
    prompts = [tokenizer.decode(examples.prompt(i)) for i in sample]
    return CompletionEvaluation(
        scored.loss,
        scored.perplexity,
        scored.token_accuracy,
        scored.tokens,
        exact_match(texts, references),
        rouge_l(texts, references),
        list(zip(prompts, texts, strict=True)),
    )
