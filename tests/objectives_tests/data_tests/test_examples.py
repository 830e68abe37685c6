"""Instruction data (``data.format``: prompt-completion, chat) tokenised with the tiny Llama's tokenizer: which
tokens are trained on, truncation from the prompt side, the chat template, the built-in prompted sets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from objectives import ConfigError, DataArgs
from objectives.data import IGNORE, load_instructions, tokenise_examples
from objectives.students import load_lm_tokenizer

CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} <eos> {% endfor %}"
    "{% if add_generation_prompt %}assistant : {% endif %}"
)
"""A template in words the tiny tokenizer knows (its unknown words become <unk>), rendering turn by turn."""


def pairs_file(path: Path, rows: int = 30) -> str:
    """A JSON Lines file of prompt/completion pairs in the tiny tokenizer's words."""
    records = [
        {"prompt": "The river runs through the old town", "completion": " and past the mill."},
        {"prompt": "A band from the city played", "completion": " three songs at the festival."},
        {"prompt": "The species is found in", "completion": " warm forests near the coast."},
    ]
    path.write_text("\n".join(json.dumps(records[i % 3]) for i in range(rows)) + "\n")
    return str(path)


def test_prompt_tokens_are_ignored_and_the_completion_is_trained_on_with_eos(tiny_lm: str, tmp_path: Path) -> None:
    tokenizer = load_lm_tokenizer(tiny_lm)
    args = DataArgs(name=pairs_file(tmp_path / "pairs.jsonl"), format="prompt-completion", max_length=32)
    data = load_instructions(args)
    assert sum(len(s) for s in data.splits.values()) == 30
    examples = tokenise_examples(tokenizer, data.splits["train"], args)
    row = data.splits["train"][0]
    prompt = tokenizer(row["prompt"], add_special_tokens=False)["input_ids"]
    completion = [*tokenizer(row["completion"], add_special_tokens=False)["input_ids"], tokenizer.eos_token_id]
    assert examples.input_ids[0] == prompt + completion
    assert examples.labels[0] == [IGNORE] * len(prompt) + completion
    assert examples.prompt(0) == prompt
    assert examples.references[0] == row["completion"].strip()
    assert examples.truncated == 0

    batch = examples.batch([0, 1])
    width = max(len(examples.input_ids[0]), len(examples.input_ids[1]))
    assert batch["labels"].shape == (2, width)
    padded = batch["attention_mask"] == 0
    assert (batch["labels"][padded] == IGNORE).all()  # padding is never a target
    assert examples.batch([0], width=40)["input_ids"].shape == (1, 40)
    assert next(examples.eval_batches(4))["input_ids"].shape[1] == examples.width  # one width for a stored teacher


def test_long_examples_lose_prompt_tokens_first_and_are_counted(tiny_lm: str, tmp_path: Path) -> None:
    tokenizer = load_lm_tokenizer(tiny_lm)
    args = DataArgs(name=pairs_file(tmp_path / "pairs.jsonl"), format="prompt-completion", max_length=8)
    rows = load_instructions(args).splits["train"]
    examples = tokenise_examples(tokenizer, rows, args)
    assert examples.truncated == len(rows)  # every prompt + completion is longer than 8 tokens
    for ids, labels, row in zip(examples.input_ids, examples.labels, rows, strict=True):
        completion = [*tokenizer(row["completion"], add_special_tokens=False)["input_ids"], tokenizer.eos_token_id]
        assert len(ids) == 8
        assert ids[-len(completion) :] == completion and labels[-len(completion) :] == completion  # kept whole
        prompt = tokenizer(row["prompt"], add_special_tokens=False)["input_ids"]
        assert ids[: 8 - len(completion)] == prompt[len(prompt) - (8 - len(completion)) :]  # its end kept


def chat_file(path: Path) -> str:
    conversation = [
        {"role": "user", "content": "The river runs through"},
        {"role": "assistant", "content": "the old town"},
        {"role": "user", "content": "A band from the city"},
        {"role": "assistant", "content": "played three songs"},
    ]
    path.write_text("\n".join(json.dumps({"messages": conversation}) for _ in range(9)) + "\n")
    return str(path)


def test_chat_renders_the_template_and_trains_on_the_assistant_turns_only(tiny_lm: str, tmp_path: Path) -> None:
    tokenizer = load_lm_tokenizer(tiny_lm)
    tokenizer.chat_template = CHAT_TEMPLATE
    args = DataArgs(name=chat_file(tmp_path / "chat.jsonl"), format="chat", max_length=64)
    rows = load_instructions(args).splits["train"]
    examples = tokenise_examples(tokenizer, rows, args)
    rendered = tokenizer.apply_chat_template(rows[0]["messages"], tokenize=False)
    assert examples.input_ids[0] == tokenizer(rendered, add_special_tokens=False)["input_ids"]
    trained = [y for y in examples.labels[0] if y != IGNORE]
    words = "the old town <eos> played three songs <eos>"
    assert trained == tokenizer(words, add_special_tokens=False)["input_ids"]
    prompt = tokenizer.apply_chat_template(rows[0]["messages"][:3], tokenize=False, add_generation_prompt=True)
    assert examples.prompt(0) == tokenizer(prompt, add_special_tokens=False)["input_ids"]
    assert examples.references[0] == "played three songs"


def test_chat_with_a_tokenizer_without_a_template_is_one_error_naming_the_format(tiny_lm: str, tmp_path: Path) -> None:
    tokenizer = load_lm_tokenizer(tiny_lm)
    assert tokenizer.chat_template is None
    args = DataArgs(name=chat_file(tmp_path / "chat.jsonl"), format="chat")
    with pytest.raises(ConfigError) as error:
        tokenise_examples(tokenizer, load_instructions(args).splits["train"], args)
    assert error.value.key == "format" and "has none" in str(error.value)


def test_a_missing_column_names_its_key(tmp_path: Path) -> None:
    path = pairs_file(tmp_path / "pairs.jsonl")
    with pytest.raises(ConfigError) as error:
        load_instructions(DataArgs(name=path, format="prompt-completion", completion_column="answer"))
    assert error.value.key == "completion_column" and "'answer'" in str(error.value)


def test_a_built_in_labelled_set_becomes_prompts_with_the_class_as_completion() -> None:
    data = load_instructions(DataArgs(name="rt-snippets", format="prompt-completion", val_fraction=0.1))
    train = data.splits["train"]
    assert train[0]["prompt"].startswith("Review: ") and train[0]["prompt"].endswith("\nSentiment:")
    completions = set(train["completion"])
    assert completions == {" positive", " negative"}
    chat = load_instructions(DataArgs(name="rt-snippets", format="chat")).splits["validation"][0]["messages"]
    assert [m["role"] for m in chat] == ["user", "assistant"] and chat[1]["content"] in ("positive", "negative")


@pytest.mark.slow
def test_smollm2_instruct_carries_its_chat_template_and_chat_examples_train_on_the_assistant_turn() -> None:
    tokenizer = load_lm_tokenizer("smollm2-135m")  # the offline GGUF's tokenizer
    assert "<|im_start|>" in tokenizer.chat_template
    args = DataArgs(name="rt-snippets", format="chat", max_length=96, max_train_rows=8)
    rows = load_instructions(args).splits["train"].select(range(8))
    examples = tokenise_examples(tokenizer, rows, args)
    for i, row in enumerate(rows):
        rendered = tokenizer.apply_chat_template(row["messages"], tokenize=False)
        assert tokenizer.decode(examples.input_ids[i]) == rendered  # system prompt, user turn, assistant turn
        trained = tokenizer.decode([y for y in examples.labels[i] if y != IGNORE])
        assert trained == f"{row['messages'][1]['content']}<|im_end|>\n"
        assert tokenizer.decode(examples.prompt(i)).endswith("<|im_start|>assistant\n")
