"""Tagged sentences for token classification: CoNLL column files, or JSONL/JSON/Parquet rows (and Hugging Face
datasets) with a list of tokens and a list of tags, checked against a tag scheme.

A sentence is a row with `tokens` and `tags` (lists of str) and where it came from (`unit` "line" or "record",
`at` its number), so that every error names the file and the line or record to fix.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from tunelab.data.loading import read_source, read_text_utf8
from tunelab.errors import TunelabError
from tunelab.tasks.tags import OUTSIDE, convert, detect_scheme, parse_tag

CONLL_SUFFIXES = (".conll", ".iob", ".bio", ".txt")
DOCSTART = "-DOCSTART-"  # CoNLL-2003's document separator: not a sentence


def where(row: pd.Series | tuple, token: int | None = None) -> str:
    """'line 12' (a CoNLL line: token k of a sentence is k lines below its first) or 'record 3, token 2'."""
    if token is None:
        return f"{row.unit} {row.at}"
    return f"line {row.at + token}" if row.unit == "line" else f"record {row.at}, token {token + 1}"


def _sentences(tokens: list[list[str]], tags: list[list[str]], unit: str, at: list[int]) -> pd.DataFrame:
    return pd.DataFrame({"tokens": tokens, "tags": tags, "unit": unit, "at": at})


def _read_lines(path: Path) -> list[str]:
    if not path.is_file():
        raise TunelabError(f"data file {path} does not exist")
    return read_text_utf8(path).splitlines()


def read_conll(path: Path) -> pd.DataFrame:
    """One token a line, its tag in the last column, a blank line between sentences; -DOCSTART- lines skipped."""
    sentences: list[tuple[int, list[str], list[str]]] = []  # (first line, tokens, tags)
    current: tuple[int, list[str], list[str]] | None = None
    for number, line in enumerate(_read_lines(path), start=1):
        fields = line.split()
        if not fields or fields[0] == DOCSTART:
            current = None
            continue
        if len(fields) == 1:
            raise TunelabError(f"{path}, line {number}: '{line.strip()}' has one column; a CoNLL line holds the "
                               f"token first and its tag last, separated by spaces or tabs")
        if current is None:
            current = (number, [], [])
            sentences.append(current)
        current[1].append(fields[0])
        current[2].append(fields[-1])
    if not sentences:
        raise TunelabError(f"{path} holds no sentences: write one token and its tag a line, a blank line between "
                           f"sentences")
    firsts, tokens, tags = zip(*sentences, strict=True)
    return _sentences(list(tokens), list(tags), "line", list(firsts))


def _as_strings(value: object, column: str, source: str, record: int) -> list[str]:
    """A cell that should hold a list of strings, as one."""
    if isinstance(value, str) or not isinstance(value, Sequence | np.ndarray):
        raise TunelabError(f"{source}, record {record}: '{column}' holds {type(value).__name__}, not a list; "
                           f"write each sentence as lists of tokens and tags (JSONL, Parquet) or use a CoNLL file")
    items = list(value)
    odd = next((item for item in items if not isinstance(item, str)), None)
    if odd is not None:
        raise TunelabError(f"{source}, record {record}: '{column}' holds {odd!r}, not text; write tags by name "
                           f"(B-PER), not by class id")
    return items


def read_records(source: str, tokens_column: str, tags_column: str) -> pd.DataFrame:
    """Rows of a JSONL/JSON/Parquet file (or a hub dataset) with a token list and a tag list of equal length."""
    frame = read_source(source)
    for role, column in (("tokens", tokens_column), ("tags", tags_column)):
        if column not in frame.columns:
            raise TunelabError(f"{source} has no {role} column '{column}'; its columns are "
                               f"{', '.join(map(str, frame.columns))}: set data.{role}_column")
    if frame.empty:
        raise TunelabError(f"{source} holds no sentences")
    tokens, tags = [], []
    for record, (words, labels) in enumerate(zip(frame[tokens_column], frame[tags_column], strict=True), start=1):
        words = _as_strings(words, tokens_column, source, record)
        labels = _as_strings(labels, tags_column, source, record)
        if len(words) != len(labels):
            raise TunelabError(f"{source}, record {record}: {len(words)} tokens but {len(labels)} tags; give every "
                               f"token exactly one tag")
        if not words:
            raise TunelabError(f"{source}, record {record} has no tokens; remove it")
        blank = next((index for index, word in enumerate(words) if not word.strip()), None)
        if blank is not None:
            raise TunelabError(f"{source}, record {record}, token {blank + 1} is empty; remove it and its tag")
        tokens.append(words)
        tags.append(labels)
    return _sentences(tokens, tags, "record", list(range(1, len(tokens) + 1)))


def load_tagged(source: str, tokens_column: str = "tokens", tags_column: str = "tags") -> pd.DataFrame:
    """Sentences from a CoNLL file (by its suffix) or a table of token and tag lists."""
    path = Path(source).expanduser()
    if path.suffix.lower() in CONLL_SUFFIXES:
        return read_conll(path)
    return read_records(source, tokens_column, tags_column)


def _bad_tag(source: str, place: str, tag: str) -> TunelabError:
    hint = " (BILOU: write L- as E- and U- as S-)" if tag[:2] in ("L-", "U-") else ""
    return TunelabError(f"{source}, {place}: tag '{tag}' is not O or B-, I-, E-, S- and a type (e.g. B-PER){hint}; "
                        f"fix the tag")


def check_tags(sentences: pd.DataFrame, scheme: str, source: str) -> str:
    """The data's tag scheme: detected under 'auto' (and read leniently, as conlleval reads it), else checked
    strictly; raises at the first tag that is malformed or breaks the scheme."""
    for row in sentences.itertuples():
        bad = next((index for index, tag in enumerate(row.tags) if parse_tag(tag) is None), None)
        if bad is not None:
            raise _bad_tag(source, where(row, bad), row.tags[bad])
    if all(tag == OUTSIDE for tags in sentences["tags"] for tag in tags):
        raise TunelabError(f"{source} has no entity tags (every tag is O): token classification learns tagged "
                           f"entities")
    if scheme == "auto":
        return detect_scheme(sentences["tags"].tolist())
    for row in sentences.itertuples():
        expected = convert(row.tags, scheme)
        bad = next((index for index, (tag, right) in enumerate(zip(row.tags, expected, strict=True))
                    if tag != right), None)
        if bad is not None:
            raise TunelabError(f"{source}, {where(row, bad)}: tag '{row.tags[bad]}' breaks {scheme}, which writes "
                               f"'{expected[bad]}' there; fix the tag, or set data.tag_scheme to the file's scheme "
                               f"(auto detects it)")
    return scheme


def check_known(sentences: pd.DataFrame, known: list[str], source: str) -> None:
    """Evaluation data may only hold entity types the model was trained to tag."""
    kinds = {parse_tag(tag)[1] for tag in known}
    for row in sentences.itertuples():
        bad = next((index for index, tag in enumerate(row.tags) if parse_tag(tag)[1] not in kinds), None)
        if bad is not None:
            raise TunelabError(f"{source}, {where(row, bad)}: tag '{row.tags[bad]}' is one the model never saw in "
                               f"training; it knows {', '.join(known)}: evaluate on data with these entity types")
