"""Load a dataset (catalog name, file, or Hugging Face dataset id) into a validated text/label table."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from tunelab.assets.datasets import CATALOG, load_catalog_dataset
from tunelab.errors import TunelabError

if TYPE_CHECKING:
    import datasets

FILE_READERS = {
    ".csv": lambda path: pd.read_csv(path, encoding="utf-8", dtype=str, keep_default_na=False),
    ".tsv": lambda path: pd.read_csv(path, sep="\t", encoding="utf-8", dtype=str, keep_default_na=False),
    ".jsonl": lambda path: pd.read_json(path, lines=True, encoding="utf-8", dtype=False),
    ".json": lambda path: pd.read_json(path, lines=path.read_text(encoding="utf-8").lstrip()[:1] != "[",
                                       encoding="utf-8", dtype=False),
    ".parquet": pd.read_parquet,
}


def not_utf8(path: Path, error: UnicodeDecodeError) -> TunelabError:
    return TunelabError(f"{path} is not UTF-8 text (byte {error.start}): re-save it as UTF-8")


def read_text_utf8(path: Path) -> str:
    """A text file's contents, with the one-line error every reader gives for a file that is not UTF-8."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise not_utf8(path, error) from None


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
        blank = examples[role].isna() | (examples[role].astype(str).str.strip() == "")
        if blank.any():
            raise TunelabError(f"{source}: row {int(blank.idxmax()) + 1} has an empty {role}; "
                               f"fill or remove the {blank.sum()} such rows")
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
