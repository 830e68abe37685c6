"""Built-in offline datasets, local files through `datasets`, seeded splits, tokenisation cache."""

import json
import logging
from pathlib import Path

import pytest

from objectives import ConfigError, DataArgs, load_rows, load_task
from objectives.data import Encoded, Task, collate, encode, forget_encoded, normalise_text, train_batches
from objectives.students import load_tokenizer


def test_rt_snippets_drops_neutral_rows_and_is_balanced() -> None:
    rows = load_rows(DataArgs(name="rt-snippets"))
    assert len(rows.texts) == 10_605 - 37
    assert sum(rows.labels) == 5_242
    assert rows.label_names == ["negative", "positive"]


def test_sms_spam_is_imbalanced() -> None:
    rows = load_rows(DataArgs(name="sms-spam"))
    assert len(rows.texts) == 4_837
    assert sum(rows.labels) == 638


def test_splits_are_seeded_disjoint_and_cover_every_row() -> None:
    a = load_task(DataArgs(split_seed=3))
    b = load_task(DataArgs(split_seed=3))
    c = load_task(DataArgs(split_seed=4))
    assert a.train_idx == b.train_idx and a.fingerprint == b.fingerprint
    assert a.train_idx != c.train_idx and a.fingerprint != c.fingerprint
    parts = [set(a.train_idx), set(a.val_idx), set(a.test_idx)]
    assert sum(map(len, parts)) == len(a.rows.texts) == len(set.union(*parts))
    assert abs(len(a.test_idx) - 0.1 * len(a.rows.texts)) <= a.num_labels  # rounded per label


def test_row_limits_keep_the_test_split_untouched() -> None:
    full = load_task(DataArgs())
    small = load_task(DataArgs(max_train_rows=100, max_val_rows=50))
    assert len(small.train_idx) == 100 and len(small.val_idx) == 50
    assert small.test_idx == full.test_idx
    assert set(small.train_idx) <= set(full.train_idx)


def test_local_csv_jsonl_and_string_labels(tmp_path: Path) -> None:
    csv_path = tmp_path / "reviews.csv"
    csv_path.write_text("review,stars\n" + "".join(f"text {i},{'pos' if i % 3 else 'neg'}\n" for i in range(30)))
    rows = load_rows(DataArgs(name=str(csv_path), text_column="review", label_column="stars"))
    assert rows.label_names == ["neg", "pos"] and len(rows.texts) == 30
    assert rows.labels[0] == 0 and rows.labels[1] == 1
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text("".join(json.dumps({"text": f"t{i}", "label": i % 3}) + "\n" for i in range(12)))
    assert load_rows(DataArgs(name=str(jsonl))).label_names == ["0", "1", "2"]
    with pytest.raises(ConfigError, match="label_column: column 'label' not in the dataset"):
        load_rows(DataArgs(name=str(csv_path), text_column="review"))


def test_dataset_directory_goes_through_the_hub_loader(tmp_path: Path) -> None:
    """`datasets.load_dataset(name)` is the hub path; a local dataset directory exercises it offline."""
    (tmp_path / "train.csv").write_text("text,label\n" + "".join(f"x {i},{i % 2}\n" for i in range(20)))
    rows = load_rows(DataArgs(name=str(tmp_path)))
    assert len(rows.texts) == 20 and rows.label_names == ["0", "1"]


def test_unknown_dataset_name_lists_the_valid_ones() -> None:
    with pytest.raises(ConfigError, match=r"name: unknown dataset 'imdbb'; use one of \['rt-snippets', 'sms-spam'\]"):
        load_rows(DataArgs(name="imdbb"))
    with pytest.raises(ConfigError, match="does not exist"):
        load_rows(DataArgs(name="missing.csv"))


def test_tokenised_once_and_padded_per_batch() -> None:
    task = load_task(DataArgs(max_train_rows=64))
    tok = load_tokenizer("minilm-l6")
    first = encode(tok, task.train(), 32, key=(task.fingerprint, "train"))
    assert encode(tok, task.train(), 32, key=(task.fingerprint, "train")) is first
    assert max(len(ids) for ids in first.input_ids) <= 32
    batch = next(train_batches(first, 8, seed=0))
    lengths = batch["attention_mask"].sum(1)
    assert batch["input_ids"].shape[1] == int(lengths.max())  # dynamic: as wide as the longest, no wider
    whole = collate(first, list(range(8)))
    assert whole["labels"].tolist() == first.labels[:8]
    forget_encoded(first)  # a pool worker done with the study: the cache lets go, the next call tokenises anew
    again = encode(tok, task.train(), 32, key=(task.fingerprint, "train"))
    assert again is not first and again.input_ids == first.input_ids


def _epoch(data: Encoded, batch_size: int, group: bool, seed: int = 0) -> list[dict]:
    batches = train_batches(data, batch_size, seed, group_by_length=group, pool=4)
    return [next(batches) for _ in range(len(data) // batch_size)]


def test_length_grouped_batches_cover_each_example_once_per_epoch_with_less_padding() -> None:
    lengths = [1 + (i * 7919) % 60 for i in range(403)]  # 403 examples: 12 whole batches of 32, 19 left out
    data = Encoded([[5] * n for n in lengths], [i % 2 for i in range(403)], pad_token_id=0)
    grouped, uniform = _epoch(data, 32, True), _epoch(data, 32, False)
    for epoch in (grouped, uniform):
        seen = [i for batch in epoch for i in batch["index"].tolist()]
        assert len(seen) == len(set(seen)) == 12 * 32
    assert [b["index"].tolist() for b in grouped] == [b["index"].tolist() for b in _epoch(data, 32, True)]  # seeded

    def padding(epoch: list[dict]) -> int:
        return sum(int((b["attention_mask"] == 0).sum()) for b in epoch)

    assert padding(grouped) < padding(uniform) / 3
    widths = [b["input_ids"].shape[1] for b in grouped]
    assert widths != sorted(widths) and widths != sorted(widths, reverse=True)  # batch order is shuffled


def _int_csv(path: Path) -> Path:
    """A 6-class question set with integer labels 0..5; class 5 is rare (3 of 120 rows)."""
    rows = [f"question {i},{5 if i % 40 == 0 else i % 5}\n" for i in range(120)]
    path.write_text("question,topic\n" + "".join(rows))
    return path


def test_label_names_list_or_mapping_name_integer_labels(tmp_path: Path) -> None:
    csv_path = _int_csv(tmp_path / "q.csv")
    args = {"name": str(csv_path), "text_column": "question", "label_column": "topic"}
    plain = load_rows(DataArgs(**args))
    assert plain.label_names == ["0", "1", "2", "3", "4", "5"] and plain.columns == ("question", "topic")
    names = ["business", "sports", "politics", "film", "health", "space"]
    listed = load_rows(DataArgs(**args, label_names=names))
    assert listed.label_names == names and listed.labels == plain.labels  # ids are the integer labels
    mapped = load_rows(DataArgs(**args, label_names={str(i): n for i, n in enumerate(names)}))
    assert mapped.label_names == names and mapped.labels == plain.labels
    with pytest.raises(ConfigError, match=r"label_names: lists 5 names but the data has 6 classes"):
        load_rows(DataArgs(**args, label_names=names[:5]))
    with pytest.raises(ConfigError, match=r"label_names: has no name for the labels \['5'\]"):
        load_rows(DataArgs(**args, label_names={str(i): n for i, n in enumerate(names[:5])}))
    with pytest.raises(ConfigError, match=r"label_names: names labels \['7'\] that the data does not have"):
        load_rows(DataArgs(**args, label_names={**{str(i): n for i, n in enumerate(names)}, "7": "x"}))
    with pytest.raises(ConfigError, match="label_names: names must be unique"):
        DataArgs(**args, label_names=["a", "a"])


def test_a_list_of_string_labels_sets_their_ids_and_a_mapping_renames_them(tmp_path: Path) -> None:
    csv_path = tmp_path / "reviews.csv"
    csv_path.write_text("text,label\n" + "".join(f"t {i},{['neg', 'neu', 'pos'][i % 3]}\n" for i in range(30)))
    ordered = load_rows(DataArgs(name=str(csv_path), label_names=["pos", "neu", "neg"]))
    assert ordered.label_names == ["pos", "neu", "neg"] and ordered.labels[:3] == [2, 1, 0]
    renamed = load_rows(
        DataArgs(name=str(csv_path), label_names={"neg": "negative", "neu": "neutral", "pos": "positive"})
    )
    assert renamed.label_names == ["negative", "neutral", "positive"] and renamed.labels[:3] == [0, 1, 2]
    with pytest.raises(ConfigError, match=r"label_names: does not list the labels \['neu'\] of column 'label'"):
        load_rows(DataArgs(name=str(csv_path), label_names=["pos", "neg"]))
    builtin = load_rows(DataArgs(name="sms-spam", label_names={"ham": "ok", "1": "junk"}))
    assert builtin.label_names == ["ok", "junk"]


def test_data_errors_name_their_key_under_the_data_section(tmp_path: Path) -> None:
    from objectives import open_data

    csv_path = _int_csv(tmp_path / "q.csv")
    with pytest.raises(ConfigError, match=r"^data\.label_column: column 'labels' not in the dataset; its columns"):
        open_data(DataArgs(name=str(csv_path), text_column="question", label_column="labels"))
    with pytest.raises(ConfigError, match=r"^data\.text_column: column 'text' not in the dataset"):
        open_data(DataArgs(name=str(csv_path), label_column="topic"))
    holes = tmp_path / "holes.csv"
    holes.write_text("text,label\n" + "".join(f"t {i},{'' if i in (3, 7) else i % 2}\n" for i in range(20)))
    with pytest.raises(
        ConfigError, match=r"^data\.label_column: 2 rows have no label in column 'label' \(first: row 3\)"
    ):
        open_data(DataArgs(name=str(holes)))
    with pytest.raises(ConfigError, match=r"^data\.name: file '.*gone\.csv' does not exist"):
        open_data(DataArgs(name=str(tmp_path / "gone.csv")))


def _check_leak_free_and_stratified(task: Task) -> None:
    """No normalised text in two splits; every label's share within one point of its share in the whole set."""
    splits = [task.train(), task.validation(), task.test()]
    texts = [{normalise_text(t) for t in split.texts} for split in splits]
    assert not (texts[0] & texts[1] or texts[0] & texts[2] or texts[1] & texts[2])
    for label in range(task.num_labels):
        overall = task.rows.labels.count(label) / len(task.rows.labels)
        for split in splits:
            assert abs(split.labels.count(label) / len(split.labels) - overall) <= 0.01, (label, overall)


@pytest.mark.parametrize("name", ["rt-snippets", "sms-spam"])
def test_builtin_sets_are_deduplicated_and_split_by_label(name: str) -> None:
    raw = load_rows(DataArgs(name=name))
    task = load_task(DataArgs(name=name))
    _check_leak_free_and_stratified(task)
    assert len({normalise_text(t) for t in task.rows.texts}) == len(task.rows.texts) < len(raw.texts)


def test_local_csv_duplicates_and_conflicting_labels_are_resolved_before_splitting(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    lines = [f"message {i},{'spam' if i % 5 == 0 else 'ham'}" for i in range(60)]  # 12 spam, 48 ham
    lines += ["MESSAGE   7,ham", " message 7 ,ham"]  # copies of row 7 (case, whitespace)
    lines += ["win a prize,spam", "Win a  prize,ham", "win a prize,spam"]  # conflicting copies: 2 spam, 1 ham
    lines += ["hello there,ham", "Hello There,spam"]  # a tie: the first copy's label
    lines += [f"rare {i},other" for i in range(3)]  # a rare label, 3 rows
    path = tmp_path / "messages.csv"
    path.write_text("text,label\n" + "\n".join(lines) + "\n")
    with caplog.at_level(logging.INFO):
        task = load_task(DataArgs(name=str(path), val_fraction=0.2, test_fraction=0.2))
    assert "dropped 5 duplicate texts" in caplog.text
    assert len(task.rows.texts) == 60 + 1 + 1 + 3
    names = task.rows.label_names
    kept = dict(zip(task.rows.texts, (names[y] for y in task.rows.labels), strict=True))
    assert kept["win a prize"] == "spam" and kept["hello there"] == "ham" and kept["message 7"] == "ham"
    splits = [task.train(), task.validation(), task.test()]
    texts = [{normalise_text(t) for t in split.texts} for split in splits]
    assert not (texts[0] & texts[1] or texts[0] & texts[2] or texts[1] & texts[2])
    other = names.index("other")
    assert [split.labels.count(other) for split in splits] == [1, 1, 1]  # a rare label reaches validation and test
    spam = names.index("spam")
    assert [split.labels.count(spam) for split in splits] == [7, 3, 3]  # 13 spam: 0.2 x 13 rounds to 3 each


def test_hub_data_sets_are_deduplicated_and_stratified_too(tmp_path: Path) -> None:
    """The hub path (`datasets.load_dataset(name)`, here a local dataset directory) goes through the same split."""
    rows = [f"text {i},{int(i % 4 == 0)}" for i in range(80)] + [f"TEXT {i},{int(i % 4 == 0)}" for i in range(20)]
    (tmp_path / "train.csv").write_text("text,label\n" + "\n".join(rows) + "\n")
    task = load_task(DataArgs(name=str(tmp_path), val_fraction=0.25, test_fraction=0.25))
    assert len(task.rows.texts) == 80  # the 20 upper-case copies dropped
    splits = [task.train(), task.validation(), task.test()]
    texts = [{normalise_text(t) for t in split.texts} for split in splits]
    assert not (texts[0] & texts[1] or texts[0] & texts[2] or texts[1] & texts[2])
    assert [split.labels.count(1) for split in splits] == [10, 5, 5]  # 20 of 80: a quarter in each split


def _transfer_files(root: Path) -> dict[str, str]:
    """The same four texts (one blank row among them) in every format a transfer file may have, column ``body``."""
    import datasets
    import pandas as pd

    rows = [" the first text ", "the second text", "", "the third text"]
    frame = pd.DataFrame({"body": rows, "other": range(4)})
    paths = {fmt: str(root / f"t.{fmt}") for fmt in ("csv", "tsv", "jsonl", "json", "parquet")}
    frame.to_csv(paths["csv"], index=False)
    frame.to_csv(paths["tsv"], sep="\t", index=False)
    frame.to_json(paths["jsonl"], orient="records", lines=True)
    frame.to_json(paths["json"], orient="records", lines=True)
    frame.to_parquet(paths["parquet"])
    (root / "t.txt").write_text("\n".join(rows) + "\n")
    paths["txt"] = str(root / "t.txt")
    datasets.Dataset.from_pandas(frame).save_to_disk(str(root / "saved"))
    paths["dataset directory"] = str(root / "saved")
    datasets.DatasetDict({"train": datasets.Dataset.from_pandas(frame)}).save_to_disk(str(root / "saved-dict"))
    paths["dataset dict directory"] = str(root / "saved-dict")
    return paths


def test_transfer_files_of_every_format_give_their_text_column(tmp_path: Path) -> None:
    from objectives.data import transfer_texts

    wanted = ["the first text", "the second text", "the third text"]
    for fmt, path in _transfer_files(tmp_path).items():
        assert transfer_texts([path], "body") == wanted, fmt  # stripped, blank rows dropped; .txt: its lines
    both = transfer_texts([str(tmp_path / "t.parquet"), str(tmp_path / "t.txt")], "body")
    assert both == wanted + wanted

    with pytest.raises(ConfigError) as error:
        transfer_texts([str(tmp_path / "t.txt"), str(tmp_path / "t.csv")], "text")
    assert error.value.key == "distill.transfer_files[1]"
    assert "no column 'text' (data.text_column); its columns are ['body', 'other']" in str(error.value)
    (tmp_path / "plain-dir").mkdir()
    with pytest.raises(ConfigError, match=r"transfer_files\[0\]: .* is a directory but no saved Hugging Face"):
        transfer_texts([str(tmp_path / "plain-dir")], "body")
    (tmp_path / "blank.txt").write_text("\n  \n")
    with pytest.raises(ConfigError, match=r"distill\.transfer_files: hold no text"):
        transfer_texts([str(tmp_path / "blank.txt")], "body")


def test_transfer_files_are_stored_absolute_and_transfer_only_needs_files_and_the_sequential_approach(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from objectives import DistillArgs

    (tmp_path / "extra.txt").write_text("a text\n")
    monkeypatch.chdir(tmp_path)
    args = DistillArgs(approach="sequential", transfer_files=["extra.txt"], transfer_only=True)
    assert args.transfer_files == [str(tmp_path / "extra.txt")]
    monkeypatch.chdir("/")
    assert DistillArgs(transfer_files=args.transfer_files).transfer_files == args.transfer_files  # found from "/"
    with pytest.raises(ConfigError, match=r"transfer_files\[0\]: 'extra\.txt' does not exist"):
        DistillArgs(transfer_files=["extra.txt"])  # relative paths are read from the working directory
    with pytest.raises(ConfigError) as error:
        DistillArgs(approach="sequential", transfer_only=True)
    assert error.value.key == "transfer_only" and "none are given" in str(error.value)
    with pytest.raises(ConfigError) as error:
        DistillArgs(transfer_files=args.transfer_files, transfer_only=True)
    assert error.value.key == "transfer_only"
    assert "which only approach: sequential reads; got approach 'integrated'" in str(error.value)
