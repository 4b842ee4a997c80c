"""Load a dataset (catalog name, file, or Hugging Face dataset id) into a validated text/label table."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from tunelab.assets.datasets import CATALOG, load_catalog_dataset
from tunelab.errors import TunelabError

if TYPE_CHECKING:
    import datasets

# UTF-8, and a byte-order mark at the start skipped: Excel's "CSV UTF-8" and Notepad write one, which would otherwise
# become part of the first column's name (or a JSON parse error)
UTF8 = "utf-8-sig"


def read_delimited(path: Path, sep: str) -> pd.DataFrame:
    """A CSV or TSV table of strings. Rows with one field more than the header has names would make pandas read the
    first column as the index, shifting every value one column to the right: refused instead."""
    frame = pd.read_csv(path, sep=sep, encoding=UTF8, dtype=str, keep_default_na=False)
    if not isinstance(frame.index, pd.RangeIndex):
        raise TunelabError(f"cannot parse {path}: its rows have more fields than its first line has column names; "
                           f"name every column in the first line (or remove the {sep!r} that ends each row)")
    return frame


def not_utf8(path: Path, error: UnicodeDecodeError) -> TunelabError:
    return TunelabError(f"{path} is not UTF-8 text (byte {error.start}): re-save it as UTF-8")


def read_text_utf8(path: Path) -> str:
    """A text file's contents, with the one-line error every reader gives for a file that is not UTF-8."""
    try:
        return path.read_text(encoding=UTF8)
    except UnicodeDecodeError as error:
        raise not_utf8(path, error) from None


def parse_json(text: str, where: str) -> Any:
    """One JSON document, or a one-line error that says where it breaks."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise TunelabError(f"{where} is not valid JSON ({error.msg} at line {error.lineno}, column {error.colno}); "
                           f"fix the JSON") from None
    except RecursionError:  # the decoder recurses once per level of nesting
        raise TunelabError(f"{where} nests JSON too deeply to read; flatten it") from None


def json_lines(path: Path) -> Iterator[tuple[int, Any]]:
    """Each non-blank line's JSON value with its line number (blank lines are skipped, and counted). A line ends at
    \\n, \\r\\n or \\r, which JSON text escapes inside strings; not at U+2028 and the other characters that
    `str.splitlines` also breaks at, which a JSON string may hold as they are."""
    for number, line in enumerate(re.split(r"\r\n|\r|\n", read_text_utf8(path)), start=1):
        if line.strip():
            yield number, parse_json(line, f"{path}: line {number}")


def _table_of_objects(values: Iterable[tuple[int, Any]], path: Path, unit: str) -> pd.DataFrame:
    rows = []
    for number, value in values:
        if not isinstance(value, dict):
            kind = "null" if value is None else type(value).__name__
            raise TunelabError(f"{path}: {unit} {number} is {kind}, not an object; write each example as an object "
                               f"of column names and values, e.g. {{\"text\": \"...\", \"label\": \"...\"}}")
        rows.append(value)
    if not rows:
        raise TunelabError(f"{path} holds no examples")
    return pd.DataFrame(rows)


def read_json_file(path: Path) -> pd.DataFrame:
    """A JSON list of objects (one per example), or else JSON lines: both numbered in errors as the user counts."""
    text = read_text_utf8(path)
    if text.lstrip()[:1] == "[":
        return _table_of_objects(enumerate(parse_json(text, str(path)), start=1), path, "record")
    return _table_of_objects(json_lines(path), path, "line")


def read_parquet(path: Path) -> pd.DataFrame:
    """A Parquet table, checked whole first: pyarrow checks that strings are UTF-8 only when asked, and pandas' Arrow
    strings decode lazily, so a corrupt cell would otherwise fail wherever it is first read."""
    import pyarrow.parquet as pq

    names = pq.read_schema(path).names
    twice = next((name for name in names if names.count(name) > 1), None)
    if twice is not None:
        raise TunelabError(f"{path} has {names.count(twice)} columns named '{twice}'; give each column its own name")
    table = pq.read_table(path)
    table.validate(full=True)
    return table.to_pandas()


FILE_READERS = {
    ".csv": lambda path: read_delimited(path, ","),
    ".tsv": lambda path: read_delimited(path, "\t"),
    ".jsonl": lambda path: _table_of_objects(json_lines(path), path, "line"),
    ".json": read_json_file,
    ".parquet": read_parquet,
}


def read_file(path: Path) -> pd.DataFrame:
    """Read a CSV/TSV/JSONL/JSON/Parquet file, with one-line errors for the usual problems."""
    if not path.exists():
        raise TunelabError(f"data file {path} does not exist")
    reader = FILE_READERS.get(path.suffix.lower())
    if reader is None:
        raise TunelabError(f"cannot read {path}: use one of {', '.join(FILE_READERS)}")
    if path.is_file() and path.stat().st_size == 0:  # readers would blame a missing column or a parse error
        raise TunelabError(f"data file {path} is empty: it holds no examples")
    try:
        return reader(path)
    except UnicodeDecodeError as error:
        raise not_utf8(path, error) from None
    except (ValueError, pd.errors.ParserError, OSError) as error:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise TunelabError(f"cannot parse {path}: {message}") from None


def _read_hub(name: str) -> pd.DataFrame:
    """A Hugging Face dataset id; its splits are concatenated and re-split by tunelab."""
    import datasets

    try:
        loaded = datasets.load_dataset(name)
    except Exception as error:  # the hub client raises many unrelated types for 'not reachable'
        raise TunelabError(
            f"data '{name}' is not an embedded dataset ({', '.join(CATALOG)}), not a file, and could not be "
            f"loaded from the Hugging Face hub ({type(error).__name__}); pass a local CSV/JSONL/Parquet file"
        ) from None
    return pd.concat([_with_class_names(split) for split in loaded.values()], ignore_index=True)


def _class_name(label: datasets.ClassLabel, value: Any) -> str | None:
    """A class id's name; None for a missing id and for -1, the hub's 'no label' (as in unlabelled test splits)."""
    return label.names[int(value)] if pd.notna(value) and value >= 0 else None


def _with_class_names(split: datasets.Dataset) -> pd.DataFrame:
    """A hub split as a table, with class ids written as their names (ner_tags [3, 0] -> ['B-ORG', 'O']), since
    tunelab reads labels and tags by name and `to_pandas` keeps only the ids."""
    import datasets

    frame = split.to_pandas()
    for column, feature in split.features.items():
        inner = getattr(feature, "feature", None)  # Sequence/List(ClassLabel): a label per token
        if isinstance(feature, datasets.ClassLabel):
            frame[column] = [_class_name(feature, value) for value in frame[column]]
        elif isinstance(inner, datasets.ClassLabel):
            frame[column] = [None if values is None else [_class_name(inner, value) for value in values]
                             for values in frame[column]]
    return frame


def read_source(source: str) -> pd.DataFrame:
    """An embedded name, an existing file, or a hub id; hub ids are `owner/name`, so a typo fails at once."""
    if source in CATALOG:
        return load_catalog_dataset(source)
    path = Path(source).expanduser()
    if path.exists() or path.suffix.lower() in FILE_READERS:
        return read_file(path)
    if "/" not in source:
        raise TunelabError(f"unknown dataset '{source}': use an embedded one ({', '.join(CATALOG)}), "
                           f"a data file, or a Hugging Face id like owner/name")
    return _read_hub(source)


def _first(rows: pd.Series) -> int:
    """The row number, counted from 1 in the file's order, of the first true value of a mask."""
    return int(rows.to_numpy().argmax()) + 1


def select_columns(frame: pd.DataFrame, columns: dict[str, str], source: str) -> pd.DataFrame:
    """The columns {role: column name} renamed to their roles, as non-empty strings; one-line errors otherwise."""
    for role, column in columns.items():
        if column not in frame.columns:
            raise TunelabError(f"{source} has no {role} column '{column}'; its columns are "
                               f"{', '.join(map(str, frame.columns))}: pass --{role}-column")
    if frame.empty:
        raise TunelabError(f"{source} holds no examples")
    examples = pd.DataFrame({role: frame[column] for role, column in columns.items()})
    for role in columns:
        binary = pd.Series([isinstance(value, bytes) for value in examples[role]])  # a categorical maps to one
        if binary.any():  # pandas would decode the bytes as UTF-8, or fail to
            raise TunelabError(f"{source}: row {_first(binary)} holds binary data as its {role}, not text; store the "
                               f"column as strings")
        blank = examples[role].isna() | (examples[role].astype(str).str.strip() == "")
        if blank.any():
            raise TunelabError(f"{source}: row {_first(blank)} has an empty {role}; fill or remove the {blank.sum()} "
                               f"such rows")
        examples[role] = examples[role].astype(str)
    return examples


def to_examples(frame: pd.DataFrame, text_column: str, label_column: str, source: str,
                fields: tuple[str, ...] = ()) -> pd.DataFrame:
    """Select and validate the text and label columns, and any further input `fields` a template reads: a table
    with columns `text`, `label` and those fields (str)."""
    missing = [field for field in fields if field not in frame.columns]
    if missing:
        raise TunelabError(f"the template reads {{{missing[0]}}}, but {source} has no column '{missing[0]}'; its "
                           f"columns are {', '.join(map(str, frame.columns))}")
    examples = select_columns(frame, {"text": text_column, "label": label_column, **{f: f for f in fields}}, source)
    examples["label"] = examples["label"].str.strip()
    return examples


def load_examples(source: str, text_column: str = "text", label_column: str = "label",
                  fields: tuple[str, ...] = ()) -> pd.DataFrame:
    return to_examples(read_source(source), text_column, label_column, source, fields)
