"""Loading user data files into a text/label table, with one-line errors for the usual mistakes."""

from pathlib import Path

import pandas as pd
import pytest
from tiny import sentiment_frame, write_table

from tunelab.data.loading import load_examples
from tunelab.errors import TunelabError


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl", ".parquet"])
def test_each_format_reads_into_text_and_label(tmp_path: Path, suffix: str):
    frame = sentiment_frame(12, ("negative", "neutral", "positive"))
    examples = load_examples(str(write_table(frame, tmp_path / f"data{suffix}")))
    assert list(examples.columns) == ["text", "label"]
    assert examples["text"].tolist() == frame["text"].tolist()
    assert examples["label"].tolist() == frame["label"].tolist()


def test_other_column_names(tmp_path: Path):
    path = tmp_path / "reviews.csv"
    pd.DataFrame({"id": [1, 2, 3], "review": ["good", "bad", "fine"], "stars": ["5", "1", "4"]}).to_csv(path,
                                                                                                        index=False)
    examples = load_examples(str(path), text_column="review", label_column="stars")
    assert examples.to_dict("list") == {"text": ["good", "bad", "fine"], "label": ["5", "1", "4"]}


def test_numeric_labels_become_strings(tmp_path: Path):
    path = tmp_path / "data.jsonl"
    path.write_text('{"text": "good", "label": 1}\n{"text": "bad", "label": 0}\n', encoding="utf-8")
    assert load_examples(str(path))["label"].tolist() == ["1", "0"]


def test_labels_are_stripped_texts_kept(tmp_path: Path):
    path = tmp_path / "data.csv"
    path.write_text('text,label\n"  good film ",positive \nbad,negative\n', encoding="utf-8")
    examples = load_examples(str(path))
    assert examples["label"].tolist() == ["positive", "negative"]
    assert examples["text"].tolist() == ["  good film ", "bad"]


def test_json_array_file(tmp_path: Path):
    path = tmp_path / "data.json"
    path.write_text('[{"text": "good", "label": "pos"}, {"text": "bad", "label": "neg"}]', encoding="utf-8")
    assert load_examples(str(path)).to_dict("list") == {"text": ["good", "bad"], "label": ["pos", "neg"]}


def _error(source: str, **columns) -> str:
    with pytest.raises(TunelabError) as error:
        load_examples(source, **columns)
    return str(error.value)


def test_missing_file(tmp_path: Path):
    message = _error(str(tmp_path / "nope.csv"))
    assert "nope.csv does not exist" in message


def test_unknown_suffix(tmp_path: Path):
    path = tmp_path / "data.txt"
    path.write_text("good\tpositive\n", encoding="utf-8")
    message = _error(str(path))
    assert "cannot read" in message and ".csv" in message and ".parquet" in message


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_unknown_text_column_lists_the_columns(tmp_path: Path, suffix: str):
    path = write_table(pd.DataFrame({"sentence": ["a", "b"], "label": ["x", "y"], "extra": ["1", "2"]}),
                       tmp_path / f"data{suffix}")
    message = _error(str(path), text_column="review")
    assert "no text column 'review'" in message
    assert "sentence, label, extra" in message
    assert "--text-column" in message


def test_unknown_label_column_lists_the_columns(tmp_path: Path):
    path = write_table(pd.DataFrame({"text": ["a", "b"], "sentiment": ["x", "y"]}), tmp_path / "data.csv")
    message = _error(str(path))
    assert "no label column 'label'" in message
    assert "text, sentiment" in message
    assert "--label-column" in message


@pytest.mark.parametrize(("name", "content"), [
    ("header-only.csv", "text,label\n"),
    ("header-only.tsv", "text\tlabel\n"),
])
def test_header_only_file_holds_no_examples(tmp_path: Path, name: str, content: str):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    assert "holds no examples" in _error(str(path))


def test_empty_parquet_holds_no_examples(tmp_path: Path):
    path = write_table(pd.DataFrame({"text": pd.Series([], dtype=str), "label": pd.Series([], dtype=str)}),
                       tmp_path / "empty.parquet")
    assert "holds no examples" in _error(str(path))


@pytest.mark.parametrize("name", ["zero.csv", "zero.tsv", "zero.jsonl", "zero.parquet"])
def test_zero_byte_file_is_reported_as_empty(tmp_path: Path, name: str):
    path = tmp_path / name
    path.write_bytes(b"")
    assert _error(str(path)) == f"data file {path} is empty: it holds no examples"


@pytest.mark.parametrize(("content", "row", "role"), [
    ("text,label\ngood,positive\nbad,negative\n,positive\n", 3, "text"),
    ("text,label\ngood,positive\n   ,negative\n", 2, "text"),
    ("text,label\ngood,positive\nbad,\n", 2, "label"),
])
def test_empty_cell_names_the_row(tmp_path: Path, content: str, row: int, role: str):
    path = tmp_path / "data.csv"
    path.write_text(content, encoding="utf-8")
    message = _error(str(path))
    assert f"row {row} has an empty {role}" in message
    assert "1 such rows" in message


def test_null_text_in_jsonl(tmp_path: Path):
    path = tmp_path / "data.jsonl"
    path.write_text('{"text": "good", "label": "p"}\n{"text": null, "label": "n"}\n', encoding="utf-8")
    assert "row 2 has an empty text" in _error(str(path))


def test_non_utf8_csv(tmp_path: Path):
    path = tmp_path / "latin.csv"
    path.write_bytes(b"text,label\ncaf\xe9 au lait,positive\nbad,negative\n")
    message = _error(str(path))
    assert "is not UTF-8" in message
    assert "re-save it as UTF-8" in message


def test_malformed_csv(tmp_path: Path):
    path = tmp_path / "bad.csv"
    path.write_text('text,label\n"unclosed quote,positive\n', encoding="utf-8")
    assert "cannot parse" in _error(str(path))


def test_unknown_dataset_name_fails_without_the_hub():
    message = _error("no-such-dataset")
    assert "unknown dataset 'no-such-dataset'" in message
    assert "movie-snippets" in message


def test_unknown_hub_dataset_offline():
    message = _error("no-such-owner/no-such-dataset")
    assert "no-such-owner/no-such-dataset" in message
    assert "Hugging Face hub" in message


def test_hub_class_labels_are_read_by_name(monkeypatch: pytest.MonkeyPatch):
    """`to_pandas` keeps only a ClassLabel's ids; tunelab reads the names (-1, the hub's 'no label', is empty)."""
    import datasets

    features = datasets.Features({"sentence": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["negative", "positive"])})
    hub = datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"sentence": ["good", "bad"], "label": [1, 0]}, features),
        "validation": datasets.Dataset.from_dict({"sentence": ["fine"], "label": [1]}, features)})
    monkeypatch.setattr(datasets, "load_dataset", lambda name: hub)
    examples = load_examples("someone/sentiment", text_column="sentence")
    assert examples.to_dict("list") == {"text": ["good", "bad", "fine"], "label": ["positive", "negative", "positive"]}
    hub["test"] = datasets.Dataset.from_dict({"sentence": ["unseen"], "label": [-1]}, features)
    assert "someone/sentiment: row 4 has an empty label" in _error("someone/sentiment", text_column="sentence")
