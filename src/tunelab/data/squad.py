"""Extractive question-answering data: the official SQuAD JSON (v1.1 and v2.0) and flat rows as in the Hugging Face
`squad`/`squad_v2` datasets (JSONL, a JSON list, Parquet or a hub id), read into one table of questions, each answer
checked against its context. Errors name the file and the record (line, row, or place in the SQuAD tree) and the fix.

The table has columns `id`, `question`, `context`, `answers` (list of str) and `answer_starts` (list of int,
character offsets into the context); empty lists mark an unanswerable question (SQuAD 2.0).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tunelab.config import DataConfig
from tunelab.data.loading import json_lines, parse_json, read_source, read_text_utf8
from tunelab.data.splits import Splits, split_examples
from tunelab.errors import TunelabError

COLUMNS = ["id", "question", "context", "answers", "answer_starts"]
FLAT_FIELDS = "id, question, context and answers ({text: [...], answer_start: [...]}; empty lists: unanswerable)"
Record = tuple[str, dict[str, Any]]  # (where it is, said in errors; the question's fields)


def _read_text(path: Path) -> str:
    if path.stat().st_size == 0:
        raise TunelabError(f"data file {path} is empty: it holds no questions")
    return read_text_utf8(path)


def _field(fields: Any, name: str, where: str, needs: str) -> Any:
    if not isinstance(fields, dict) or name not in fields:
        raise TunelabError(f"{where} has no '{name}' field; it needs {needs}")
    return fields[name]


def _list(fields: Any, name: str, path: Path, place: str, what: str) -> list[Any]:
    """`fields[name]`, which must be a list of `what`; `place` says where `fields` stands (data[0], "" at the top)."""
    value = _field(fields, name, f"{path}: {place}" if place else str(path), f"a list of {what}")
    if not isinstance(value, list):
        kind = "null" if value is None else type(value).__name__
        raise TunelabError(f"{path}: {place + '.' if place else ''}{name} is {kind}, not a list; give a list of {what}")
    return value


def _squad_records(tree: dict[str, Any], path: Path) -> Iterator[Record]:
    """The questions of the official format, data[].paragraphs[].qas[], each with its paragraph's context."""
    for a, article in enumerate(_list(tree, "data", path, "", "articles")):
        for p, paragraph in enumerate(_list(article, "paragraphs", path, f"data[{a}]", "paragraphs")):
            place = f"data[{a}].paragraphs[{p}]"
            context = _field(paragraph, "context", f"{path}: {place}", "context and qas")
            for q, qa in enumerate(_list(paragraph, "qas", path, place, "questions")):
                where = f"{path}: {place}.qas[{q}]"
                if not isinstance(qa, dict):
                    raise TunelabError(f"{where} is not an object with id, question and answers")
                where += f" (question id {qa['id']!r})" if "id" in qa else ""
                yield where, {"id": f"{a}.{p}.{q}", **qa, "context": context}


def _flat_records(rows: Iterable[tuple[int, Any]], source: str, unit: str) -> Iterator[Record]:
    """Rows as the Hugging Face datasets hold them, numbered by `unit` (line, record, row)."""
    for number, row in rows:
        where = f"{source}: {unit} {number}"
        if not isinstance(row, dict):
            raise TunelabError(f"{where} is not an object; each question needs {FLAT_FIELDS}")
        where += f" (question id {row['id']!r})" if "id" in row else ""
        yield where, {"id": str(number), **row}


def _records(source: str) -> Iterator[Record]:
    path = Path(source).expanduser()
    suffix = path.suffix.lower()
    if suffix == ".jsonl" and path.is_file():
        _read_text(path)  # an empty file's error
        return _flat_records(json_lines(path), str(path), "line")
    if suffix == ".json" and path.is_file():
        tree = parse_json(_read_text(path), str(path))
        if isinstance(tree, dict) and "data" in tree:
            return _squad_records(tree, path)
        if isinstance(tree, list):
            return _flat_records(enumerate(tree, start=1), str(path), "record")
        raise TunelabError(f"{path} is neither SQuAD JSON ({{\"data\": [articles]}}) nor a JSON list of questions "
                           f"with {FLAT_FIELDS}")
    frame = read_source(source)  # Parquet, a hub id, or a missing file (which read_source reports)
    return _flat_records(enumerate(frame.to_dict("records"), start=1), source, "row")


def _text(fields: dict[str, Any], name: str, where: str) -> str:
    value = _field(fields, name, where, FLAT_FIELDS)
    if not isinstance(value, str):
        raise TunelabError(f"{where}: the {name} is {type(value).__name__}, not text")
    if not value.strip():
        raise TunelabError(f"{where} has an empty {name}; fill it in or remove the question")
    return value


def _answer_pairs(raw: Any, where: str) -> list[tuple[Any, Any]]:
    """SQuAD's [{text, answer_start}], the datasets' {text: [...], answer_start: [...]}, or one {text, answer_start}
    as (text, start) pairs."""
    needs = "text and answer_start"
    if isinstance(raw, dict):
        texts, starts = (_field(raw, key, f"{where}: answers", needs) for key in ("text", "answer_start"))
        if isinstance(texts, str) and not isinstance(starts, (list, np.ndarray)):  # one answer
            return [(texts, starts)]
        if not isinstance(texts, (list, np.ndarray)) or not isinstance(starts, (list, np.ndarray)):
            raise TunelabError(f"{where}: answers has text {texts!r} and answer_start {starts!r}; give two lists of "
                               f"equal length, or one text and its start")
        if len(texts) != len(starts):
            raise TunelabError(f"{where}: answers has {len(texts)} texts but {len(starts)} answer_start values; "
                               f"give one start per text")
        return list(zip(texts, starts, strict=True))
    if isinstance(raw, (list, np.ndarray)):
        return [(_field(answer, "text", f"{where}: answers[{index}]", needs),
                 _field(answer, "answer_start", f"{where}: answers[{index}]", needs))
                for index, answer in enumerate(raw)]
    raise TunelabError(f"{where}: answers is {type(raw).__name__}; give {{\"text\": [...], \"answer_start\": [...]}} "
                       f"or a list of {{\"text\", \"answer_start\"}}")


def _check_answer(text: Any, start: Any, context: str, where: str) -> tuple[str, int]:
    """The answer as (text, start) without surrounding spaces, when its text stands at its start in the context;
    else a one-line error that says what stands there and, when the text occurs elsewhere, the offset nearest to
    the one given."""
    if not isinstance(text, str) or not text.strip():
        raise TunelabError(f"{where}: an answer's text is empty or not text; give the answer span's text")
    if isinstance(start, bool) or not isinstance(start, (int, np.integer)) or start < 0:
        raise TunelabError(f"{where}: answer {text!r} has answer_start {start!r}; give its character offset in the "
                           f"context (an integer from 0)")
    found = context[start:start + len(text)]
    if found == text:  # spaces around a span are not part of the answer a model should learn to mark
        return text.strip(), int(start) + len(text) - len(text.lstrip())
    occurrences = [match.start() for match in re.finditer(re.escape(text), context)]
    if occurrences:
        nearest = min(occurrences, key=lambda offset: abs(offset - start))
        fix = f"the text occurs at {nearest}: set answer_start to {nearest}"
    else:
        fix = "the context does not contain it: correct the answer text or the context"
    raise TunelabError(f"{where}: answer {text!r} is not at answer_start {start} of its context, which has {found!r} "
                       f"there; {fix}")


def _question(where: str, fields: dict[str, Any]) -> dict[str, Any]:
    context = _text(fields, "context", where)
    question = _text(fields, "question", where)
    raw = _field(fields, "answers", where, FLAT_FIELDS)
    answers = [_check_answer(text, start, context, where) for text, start in _answer_pairs(raw, where)]
    if fields.get("is_impossible") and answers:
        raise TunelabError(f"{where} is marked is_impossible but has answers; empty its answers (SQuAD 2.0 keeps "
                           f"those under plausible_answers) or set is_impossible to false")
    return {"id": str(fields["id"]), "question": question, "context": context,
            "answers": [text for text, _ in answers], "answer_starts": [start for _, start in answers]}


def load_squad(source: str) -> pd.DataFrame:
    """Every question of `source` with its context and gold answers, each answer checked against its context."""
    questions, seen = [], {}
    for where, fields in _records(source):
        question = _question(where, fields)
        if question["id"] in seen:  # predictions are keyed by id: two questions would share one answer
            raise TunelabError(f"{where} repeats the question id of {seen[question['id']]}; give each question its "
                               f"own id")
        seen[question["id"]] = where
        questions.append(question)
    examples = pd.DataFrame(questions, columns=COLUMNS)
    if examples.empty:
        raise TunelabError(f"{source} holds no questions")
    return examples


def has_unanswerable(examples: pd.DataFrame) -> bool:
    return bool((examples["answers"].map(len) == 0).any())


def split_by_context(examples: pd.DataFrame, data: DataConfig) -> Splits:
    """Train/validation/test splits of the paragraphs, so that no context is read in two splits (questions on one
    paragraph share most of their input): `test_size` and `validation_size` count paragraphs. The limits then take
    the first N questions of a split, in the order in which the split shuffled its paragraphs."""
    contexts = pd.DataFrame({"context": examples["context"].unique()})
    try:
        parts = split_examples(contexts, data.test_size, data.validation_size, data.split_seed)
    except TunelabError:  # its message counts examples; here they are paragraphs
        count = len(contexts)
        fix = (f"give more paragraphs, or set the sizes as counts, e.g. --set data.test_size={max(1, count // 5)} "
               f"--set data.validation_size={max(1, count // 10)}" if count >= 3 else "give at least 3 paragraphs")
        raise TunelabError(f"cannot split the {count} paragraphs of {data.source} into test, validation and training "
                           f"paragraphs (the sizes count paragraphs, whose questions stay together): {fix}") from None
    eval_limits = [limit for limit in (data.limit_validation, data.limit_eval) if limit is not None]
    limits = {"train": data.limit_train, "validation": min(eval_limits, default=None), "test": data.limit_eval}
    chosen = {}
    for name, part in vars(parts).items():
        rank = pd.Series(range(len(part)), index=part["context"])
        questions = examples[examples["context"].isin(rank.index)]
        questions = questions.iloc[np.argsort(questions["context"].map(rank).to_numpy(), kind="stable")]
        chosen[name] = questions.iloc[:limits[name]].reset_index(drop=True)
    return Splits(**chosen)
