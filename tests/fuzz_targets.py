"""Fuzz targets for every reader of user input: the data loaders, the prompt template and label words, YAML run
configs and `--set` overrides. Each target pairs a Hypothesis strategy of inputs with what tunelab does with one
input; the property is that any input gives a result or one `TunelabError` whose message is one line.

Inputs come two ways: random bytes or text, and well-formed files with odd values (empty strings, NaN, huge
numbers, unicode, duplicate or missing columns, wrong types, deep nesting), then framed with a BOM, another newline
style, another encoding or a cut. `tests/test_fuzz.py` runs each target briefly; `benchmarks/fuzz.py` runs 10,000
examples of each.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from hypothesis import strategies as st

from tunelab.cli.options import run_config
from tunelab.config import build_config, read_yaml, to_yaml
from tunelab.data.checks import profile_file
from tunelab.data.loading import load_examples
from tunelab.data.messages import load_generation_examples
from tunelab.data.splits import few_shot, split_as_configured
from tunelab.data.squad import load_squad, split_by_context
from tunelab.data.tagged import CONLL_SUFFIXES, check_known, check_tags, load_tagged
from tunelab.errors import TunelabError
from tunelab.prompting.template import Template
from tunelab.prompting.verbalizer import Verbalizer
from tunelab.rlhf.data import STAGE_FORMATS, stage_splits

# --- values: what a cell, a JSON field or a YAML setting may hold --------------------------------------------------

ODD_TEXT = ["", " ", "\t", "NaN", "nan", "null", "None", "NA", "N/A", "inf", "-0", "1e309", "0x1F", "\ufeff",
            "\u2028", "\x00", "a,b", '"', "'", "\\", "\r\n", "é", "🙂", "İ", "[bold]x[/bold]", "{text}", "B-PER", "O",
            "-DOCSTART-", "user", "assistant", "ありがとう", "\u200b", "x" * 300]
COLUMNS = ["text", "label", "prompt", "completion", "chosen", "rejected", "messages", "tokens", "tags", "id",
           "question", "context", "answers", "", " text", "Text", "label ", "0", "unnamed: 0", "text.1"]
BIG = 2**70

PLAIN = ["great", "bad", "ok", "the film was long", "positive", "negative", "neutral", "é à ü", "🙂 fine",
         "ありがとう", "x" * 300]

odd_text = st.one_of(st.sampled_from(ODD_TEXT), st.text(max_size=20))
plain = st.sampled_from(PLAIN)
words = st.one_of(plain, odd_text)
numbers = st.one_of(st.integers(-BIG, BIG), st.floats(allow_nan=True, allow_infinity=True), st.booleans())
scalars = st.one_of(st.none(), numbers, odd_text)
json_values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                            st.dictionaries(st.sampled_from(COLUMNS) | odd_text,
                                                                            inner, max_size=4)), max_leaves=12)
column_names = st.one_of(st.sampled_from(COLUMNS), odd_text)


def chance(percent: int) -> st.SearchStrategy[bool]:
    """True `percent` times in a hundred: integers over a wide range come out near uniform, where a short
    `sampled_from` or `integers(0, 9)` favours its ends."""
    return st.integers(0, 99).map(lambda number: number < percent)


@st.composite
def sprinkled(draw: st.DrawFn, clean: list[Any], odd: st.SearchStrategy[Any], at_most: int = 3,
              percent: int = 50) -> list[Any]:
    """`clean` with, `percent` times in a hundred, up to `at_most` of its items replaced by odd ones: mostly good
    data with a few bad spots reaches further into a loader than data that is bad throughout."""
    items = list(clean)
    for _ in range(draw(st.integers(1, at_most)) if items and draw(chance(percent)) else 0):
        items[draw(st.integers(0, len(items) - 1))] = draw(odd)
    return items


@st.composite
def sprinkled_fields(draw: st.DrawFn, rows: list[dict[str, Any]], odd: st.SearchStrategy[Any],
                     percent: int = 50) -> list[Any]:
    """Rows of fields with, `percent` times in a hundred, up to three field values replaced by odd ones; now and
    then a whole row replaced by odd JSON."""
    rows = [dict(row) for row in rows]
    for _ in range(draw(st.integers(1, 3)) if rows and draw(chance(percent)) else 0):
        row = rows[draw(st.integers(0, len(rows) - 1))]
        row[draw(st.sampled_from([*row, "extra"]) if row else "extra")] = draw(odd)
    return draw(sprinkled(rows, json_values, at_most=1, percent=percent // 3))


# --- framing: the same content as a user's file may really arrive ---------------------------------------------------

NEWLINES = ["\n", "\r\n", "\r"]


now_and_then = chance(10)
encodings = chance(85).flatmap(lambda usual: st.just("utf-8") if usual else st.sampled_from(
    ["utf-8-sig", "utf-16", "latin-1"]))  # a BOM, and two that are not UTF-8


@st.composite
def framed(draw: st.DrawFn, lines: list[str]) -> bytes:
    """Lines joined by one newline style or a mix, encoded (UTF-8 mostly, with a BOM, UTF-16, Latin-1), with or
    without a last newline; now and then cut at a random byte."""
    mixed = draw(st.booleans())
    newline = draw(st.sampled_from(NEWLINES))
    text = "".join(line + (draw(st.sampled_from(NEWLINES)) if mixed else newline) for line in lines)
    if draw(st.booleans()):
        text = text.rstrip("\r\n")
    data = text.encode(draw(encodings), errors="replace")
    return data[:draw(st.integers(0, len(data)))] if draw(now_and_then) else data


def with_noise(structured: st.SearchStrategy[bytes], max_size: int = 200) -> st.SearchStrategy[bytes]:
    """Structured file contents (seven times in ten), random bytes, or structured contents with a few bytes
    overwritten."""
    noise = st.one_of(st.binary(max_size=max_size), st.builds(_overwrite, structured, st.data()))
    return chance(70).flatmap(lambda clean: structured if clean else noise)


def _overwrite(data: bytes, draw: st.DataObject) -> bytes:
    if not data:
        return data
    spots = draw.draw(st.lists(st.tuples(st.integers(0, len(data) - 1), st.integers(0, 255)), max_size=3))
    buffer = bytearray(data)
    for spot, byte in spots:
        buffer[spot] = byte
    return bytes(buffer)


# --- file contents by format ----------------------------------------------------------------------------------------

ROWS = st.integers(1, 20)  # files with no rows come from cuts and random bytes
HEADERS = st.lists(column_names, max_size=3).flatmap(lambda extra: st.sampled_from(
    [["text", "label"], ["text", "label", *extra], ["label", "id", "text"], extra, ["text", "text", "label"]]))


@st.composite
def delimited(draw: st.DrawFn, sep: str) -> bytes:
    """A header (duplicate, missing or odd names) over rows of plain cells with a few odd cells and odd (ragged)
    rows, quoted properly or joined naively."""
    header = draw(HEADERS)
    rows = [[draw(plain) for _ in header] for _ in range(draw(ROWS))]
    cells = st.one_of(odd_text, numbers.map(str))
    rows = draw(sprinkled(rows, st.lists(cells, max_size=4), 1))
    rows = [draw(sprinkled(row, cells, 1, percent=5)) for row in rows]
    if draw(st.booleans()):
        buffer = io.StringIO()
        csv.writer(buffer, delimiter=sep, lineterminator="\n").writerows([header, *rows])
        lines = buffer.getvalue().split("\n")
    else:
        lines = [sep.join(row) for row in [header, *rows]]
    return draw(framed(lines))


@st.composite
def records(draw: st.DrawFn) -> list[Any]:
    """Rows as JSON objects of plain text and label, a few with odd values, odd columns, or no object at all."""
    rows = [{"text": draw(plain), "label": draw(plain)} for _ in range(draw(ROWS))]
    return draw(sprinkled_fields(rows, json_values))


def dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)  # NaN and Infinity as JSON's common extension writes them


@st.composite
def jsonl(draw: st.DrawFn, rows: st.SearchStrategy[list[Any]]) -> bytes:
    lines = [dumps(row) for row in draw(rows)]
    lines += draw(st.lists(st.sampled_from(["", "{", "[1,", "nul", '{"text": "a", "text": "b"}']), max_size=1))
    return draw(framed(draw(st.permutations(lines))))


@st.composite
def json_file(draw: st.DrawFn, rows: st.SearchStrategy[list[Any]]) -> bytes:
    """A JSON list of records, a columns-to-lists object, one value, or nesting deep enough to trouble a parser."""
    listed = draw(rows)
    shape = draw(st.sampled_from(["list", "list", "columns", "value", "deep"]))
    if shape == "columns":
        names = {name for row in listed if isinstance(row, dict) for name in row}
        listed = {name: [row.get(name) if isinstance(row, dict) else row for row in listed] for name in names}
    elif shape == "value":
        listed = draw(json_values)
    elif shape == "deep":
        depth = draw(st.integers(1, 3000))
        return draw(framed(["[" * depth + dumps(listed) + "]" * draw(st.integers(0, depth))]))
    return draw(framed(json.dumps(listed, ensure_ascii=False, indent=draw(st.none() | st.just(1))).split("\n")))


PARQUET_COLUMNS = {  # arrow type -> values of it (None: a null)
    pa.string(): plain, pa.int64(): st.integers(-(2**63), 2**63 - 1), pa.float64(): st.floats(),
    pa.bool_(): st.booleans(), pa.binary(): st.binary(max_size=8), pa.list_(pa.string()): st.lists(words, max_size=3),
    pa.struct([("role", pa.string()), ("content", pa.string())]): st.fixed_dictionaries({"role": words,
                                                                                         "content": words}),
    pa.list_(pa.int64()): st.lists(st.integers(-5, 5), max_size=3), pa.null(): st.none(),
    pa.dictionary(pa.int32(), pa.string()): plain, pa.timestamp("ns"): st.integers(-(2**62), 2**62),
}


@st.composite
def parquet(draw: st.DrawFn) -> bytes:
    """A Parquet file of typed columns (text columns mostly strings; any names, duplicates allowed), a few nulls;
    sometimes cut short."""
    rows = draw(ROWS)
    names = draw(HEADERS)
    kinds = list(PARQUET_COLUMNS)
    types = draw(sprinkled([pa.string()] * len(names), st.sampled_from(kinds), at_most=2))
    arrays = [pa.array(draw(sprinkled([draw(PARQUET_COLUMNS[kind]) for _ in range(rows)], st.none(), 1)), type=kind)
              for kind in types]
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_arrays(arrays, names=names), buffer)
    data = buffer.getvalue()
    return data[:draw(st.integers(0, len(data)))] if draw(now_and_then) else data


# --- what tunelab does with one input --------------------------------------------------------------------------------

def _write(folder: Path, name: str, data: bytes) -> str:
    path = folder / name
    path.write_bytes(data)
    return str(path)


def consume_table(suffix: str) -> Callable[[Path, Any], object]:
    """`tunelab train`'s classification data path (read, check, split) and `recommend --data`'s profile."""

    def consume(folder: Path, given: tuple[bytes, str, str, dict[str, Any]]) -> object:
        data, text_column, label_column, sizes = given
        source = _write(folder, f"data{suffix}", data)
        examples = load_examples(source, text_column, label_column)
        data_config = build_config({"data": {"source": source, **sizes}}).data
        splits = split_as_configured(examples, data_config)
        if data_config.shots:
            few_shot(splits, data_config.shots, data_config.split_seed)
        return profile_file(source, text_column, label_column)

    return consume


split_sizes = st.fixed_dictionaries({}, optional={
    "test_size": st.sampled_from([0.15, 0.5, 0.99, 1, 2, 3, 1e9]), "validation_size": st.sampled_from([0.1, 1, 2]),
    "limit_train": st.integers(1, 5), "shots": st.integers(1, 3), "limit_eval": st.integers(1, 5),
    "limit_validation": st.integers(1, 5), "split_seed": st.integers(0, 2**32 - 1) | st.sampled_from([-1, 2**32])})


def table_inputs(contents: st.SearchStrategy[bytes]) -> st.SearchStrategy[tuple]:
    """A file, the --text-column and --label-column given (mostly the file's own), the split settings."""
    return st.tuples(with_noise(contents), st.sampled_from(["text"] * 4 + ["label", " text", "review"]),
                     st.sampled_from(["label"] * 4 + ["text", "stars"]), split_sizes)


TAGS = ["O", "B-PER", "I-PER", "E-PER", "S-LOC", "B-LOC", "I-LOC", "L-X", "U-X", "B-", "I", "b-per", "B_PER",
        "B-PER-X", "0", "-"]
odd_tags = st.one_of(st.sampled_from(TAGS[7:]), odd_text)


@st.composite
def tagged_sentences(draw: st.DrawFn) -> list[tuple[list[str], list[str]]]:
    """Sentences of plain words, tagged in IOB2 (B- then I-) or BIOES, with a few odd words and tags."""
    sentences = []
    for _ in range(draw(st.integers(1, 8))):
        length = draw(st.integers(1, 5))
        kinds = [draw(st.sampled_from(["O", "PER", "LOC"])) for _ in range(length)]
        scheme_tags = ["O" if kind == "O" else ("I-" if index and kinds[index - 1] == kind else "B-") + kind
                       for index, kind in enumerate(kinds)]
        tokens = [draw(plain).replace(" ", "_") for _ in range(length)]
        sentences.append((draw(sprinkled(tokens, words, 1, percent=5)), draw(sprinkled(scheme_tags, odd_tags, 1, 5))))
    return sentences


@st.composite
def conll_lines(draw: st.DrawFn) -> list[str]:
    """A CoNLL file: a token a line (more columns between, spaces or tabs), blank lines between sentences, maybe
    -DOCSTART-, with a few odd lines (one column, stray blanks)."""
    sep = draw(st.sampled_from([" ", "\t", "  "]))
    lines = ["-DOCSTART- -X- O O", ""] if draw(st.booleans()) else []
    for tokens, tags in draw(tagged_sentences()):
        columns = ["NN"] * draw(st.integers(0, 2))  # part of speech and the like, between token and tag
        lines += [sep.join([token, *columns, tag]) for token, tag in zip(tokens, tags, strict=True)]
        lines.append("")
    return draw(sprinkled(lines, st.sampled_from(["", " ", "lonely", "-DOCSTART-", "a b c d"]) | words, 2, 30))


@st.composite
def tagged_records(draw: st.DrawFn) -> list[Any]:
    rows = [{"tokens": tokens, "tags": tags} for tokens, tags in draw(tagged_sentences())]
    return draw(sprinkled_fields(rows, json_values | st.lists(words, max_size=3)))


def consume_tagged(folder: Path, given: tuple[bytes, str, str, list[str]]) -> object:
    """Token classification's data path: the sentences, their tag scheme, and evaluation data's known tags."""
    data, suffix, scheme, known = given
    source = _write(folder, f"data{suffix}", data)
    sentences = load_tagged(source)
    check_tags(sentences, scheme, source)
    check_known(sentences, known, source)
    return sentences


schemes = st.sampled_from(["auto", "IOB1", "IOB2", "BIOES"])
known_tags = st.lists(st.sampled_from(TAGS[:7]), min_size=1)
tagged_inputs = st.one_of(
    st.tuples(with_noise(conll_lines().flatmap(framed)), st.sampled_from(CONLL_SUFFIXES), schemes, known_tags),
    st.tuples(with_noise(jsonl(tagged_records())), st.just(".jsonl"), schemes, known_tags))

CONTEXTS = ["The film opened in 1999 in Paris.", "Ada Lovelace wrote the first program.", "é 🙂 ありがとう, x y z"]


@st.composite
def squad_question(draw: st.DrawFn, number: int, context: str) -> dict[str, Any]:
    """A question whose answers stand in its context (none: unanswerable), a few fields odd or missing."""
    answers = []
    for _ in range(draw(st.integers(0, 2)) if context else 0):
        start = draw(st.integers(0, len(context) - 1))
        answers.append({"text": context[start:start + draw(st.integers(1, 8))], "answer_start": start})
    question = {"id": f"q{number}", "question": draw(plain), "context": context, "answers": answers,
                "is_impossible": not answers}
    flat = draw(st.booleans())  # the datasets' {text: [...], answer_start: [...]}
    if flat:
        question["answers"] = {key: [answer[key] for answer in answers] for key in ("text", "answer_start")}
    return draw(sprinkled_fields([question], json_values | st.integers(-3, 3) | odd_text, percent=10))[0]


@st.composite
def squad_file(draw: st.DrawFn) -> tuple[bytes, str]:
    """The official tree (.json), or flat rows as a JSON list or JSONL."""
    contexts = [f"{CONTEXTS[number % len(CONTEXTS)]} ({number})" for number in range(draw(st.integers(1, 8)))]
    contexts = draw(sprinkled(contexts * draw(st.integers(1, 2)), words, 1, percent=20))
    questions = [draw(squad_question(number, context)) for number, context in enumerate(contexts)]
    shape = draw(st.sampled_from(["tree", "list", "jsonl", "odd"]))
    if shape == "tree":
        asked = [question for question in questions if isinstance(question, dict)]
        paragraphs = [{"context": context, "qas": [qa for qa in asked if qa.get("context") == context]}
                      for context in dict.fromkeys(contexts)]
        tree = {"version": "v2.0", "data": [{"title": "t", "paragraphs": draw(sprinkled(paragraphs, json_values, 1))}]}
        return draw(framed(dumps(tree).split("\n"))), ".json"
    if shape == "odd":
        tree = draw(st.fixed_dictionaries({}, optional={"data": json_values, "version": json_values}))
        return draw(framed([dumps(tree)])), ".json"
    if shape == "list":
        return draw(framed([dumps(questions)])), ".json"
    return draw(framed([dumps(question) for question in questions])), ".jsonl"


def consume_squad(folder: Path, given: tuple[tuple[bytes, str], dict[str, Any]]) -> object:
    """Question answering's data path: the questions, each answer checked, split by paragraph."""
    (data, suffix), sizes = given
    source = _write(folder, f"data{suffix}", data)
    return split_by_context(load_squad(source), build_config({"data": {"source": source, **sizes}}).data)


squad_inputs = st.tuples(st.one_of(squad_file(), squad_file(), st.tuples(st.binary(max_size=200),
                                                                          st.sampled_from([".json", ".jsonl"]))),
                         split_sizes)

odd_message = st.one_of(st.fixed_dictionaries({"role": odd_text | st.sampled_from(["system", "user", "assistant"]),
                                               "content": json_values}),
                        st.dictionaries(st.sampled_from(["role", "content", "from", "value"]), json_values, max_size=3),
                        json_values)


@st.composite
def conversation_rows(draw: st.DrawFn) -> list[Any]:
    """Rows of a `messages` column (system?, user, assistant, ...), a few odd messages and fields."""
    rows = []
    for _ in range(draw(ROWS)):
        turns = [{"role": "system", "content": draw(plain)}] if draw(st.booleans()) else []
        for _ in range(draw(st.integers(1, 2))):
            turns += [{"role": "user", "content": draw(plain)}, {"role": "assistant", "content": draw(plain)}]
        rows.append({"messages": draw(sprinkled(turns, odd_message, 1, percent=5)), "label": draw(plain)})
    return draw(sprinkled_fields(rows, json_values | st.lists(odd_message, max_size=2)))


def consume_messages(folder: Path, given: tuple[bytes, str]) -> object:
    """Generation's data path: chat conversations, or prompt/completion pairs."""
    data, suffix = given
    return load_generation_examples(_write(folder, f"data{suffix}", data))


messages_inputs = st.tuples(with_noise(st.one_of(jsonl(conversation_rows()), json_file(conversation_rows()))),
                            st.sampled_from([".jsonl", ".json"]))

RLHF_COLUMNS = [("prompt", "chosen", "rejected"), ("chosen", "rejected"), ("prompt", "completion"), ("text",),
                ("prompt",), ("completion",)]


@st.composite
def preference_rows(draw: st.DrawFn) -> list[Any]:
    """Rows in one of TRL's formats (or none), a few odd values and fields."""
    columns = draw(st.sampled_from(RLHF_COLUMNS))
    rows = [{column: draw(plain) for column in columns} for _ in range(draw(ROWS))]
    return draw(sprinkled_fields(rows, json_values))


def consume_preferences(folder: Path, given: tuple[bytes, str, str, float]) -> object:
    """`tunelab rlhf` stages' data path: the stage's format found, validated, split for held-out examples."""
    data, suffix, stage, test_share = given
    return stage_splits(_write(folder, f"data{suffix}", data), stage, test_share)


preference_inputs = st.tuples(with_noise(st.one_of(jsonl(preference_rows()), json_file(preference_rows()))),
                              st.sampled_from([".jsonl", ".json"]), st.sampled_from(list(STAGE_FORMATS)),
                              st.sampled_from([0.05, 0.1, 0.5, 0.99]))


# --- the prompt template and label words -----------------------------------------------------------------------------

PIECES = ["{text}", "{label}", "{soft}", "{soft:3}", "{soft:0}", "{soft:-1}", "{soft:²}", "{soft:١٢}", "{soft: }",
          "{soft:great film}", "{soft:99999999999999999999}", "{{", "}}", "{", "}", "{ text }", "{text:x}", "{1x}",
          "{premise}", "{label}{label}", "{}", " ", "\n", "Review:", "Sentiment:"]
templates = chance(80).flatmap(lambda structured: st.lists(st.sampled_from(PIECES) | odd_text, max_size=8).flatmap(
    lambda pieces: st.permutations([*pieces, "{text}"])).map("".join) if structured else st.text(max_size=40))


def consume_template(folder: Path, source: str) -> object:
    template = Template.parse(source)
    return template.fields, template.label_slot, template.ends_with_label_slot(), template.softened()


def consume_verbalizer(folder: Path, given: tuple[str | None, list[str], list[str]]) -> object:
    """The --template and --verbalizer flags as the CLI reads them, then the label words for the data's labels."""
    template, flags, labels = given
    config = run_config(None, {}, None, None, template, flags)
    if config.prompt.template is not None:
        consume_template(folder, config.prompt.template)
    return Verbalizer.build(config.prompt.verbalizer, labels)


verbalizer_inputs = st.tuples(st.none() | templates,
                              st.lists(st.tuples(words, st.sampled_from(["=", "", "= ", "=="]), words).map("".join),
                                       max_size=3),
                              st.lists(words, min_size=1, max_size=3, unique=True))


# --- run configs: YAML files and overrides ---------------------------------------------------------------------------

SETTINGS = ["model", "task", "output", "data.source", "data.test_size", "data.validation_size", "data.limit_train",
            "data.shots", "data.tag_scheme", "strategy.name", "strategy.options.r", "strategy.options",
            "prompt.template", "prompt.verbalizer", "prompt.verbalizer.positive", "training.epochs",
            "training.learning_rate", "training.batch_size", "training.report_to", "training.precision",
            "qa.null_threshold", "data", "training", "nonsense", "data.nonsense", "a.b.c.d", "", ".", "data."]
YAML_VALUES = ["2", "-1", "0", "1e999", ".nan", ".inf", "~", "null", "yes", "[1, 2]", "{a: 1}", "!!float abc",
               "!!int 1.5", "!!timestamp 2020-13-45", "!!float ''", "!!binary x", "!!python/object:os.system x",
               "&a [*a]", "[", "'", "\"", "a: b: c", "- x", "\t", "!!set {a}", "2020-01-01", "0o17", "0x1F",
               "[" * 600 + "]" * 600, "😀", "lora", "classification", "IOB2", "bf16"]
yaml_scalars = st.one_of(st.sampled_from(YAML_VALUES), st.text(max_size=20))


@st.composite
def config_tree(draw: st.DrawFn) -> dict[str, Any]:
    """A nested config of known and unknown settings with odd values."""
    tree: dict[str, Any] = {}
    for dotted in draw(st.lists(st.sampled_from(SETTINGS), max_size=5)):
        *parents, leaf = dotted.split(".")
        node = tree
        for part in parents:
            node = node.setdefault(part, {}) if isinstance(node.get(part, {}), dict) else {}
        node[leaf] = draw(json_values)
    return tree


@st.composite
def yaml_file(draw: st.DrawFn) -> bytes:
    """A YAML dump of a config tree, lines of `key: value` with YAML's own oddities (tags, anchors), or deep nesting."""
    shape = "deep" if draw(now_and_then) else draw(st.sampled_from(["dump", "lines"]))  # deep is slow to refuse
    if shape == "dump":
        lines = yaml.safe_dump(draw(config_tree()), allow_unicode=True).split("\n")
    elif shape == "lines":
        keys = st.sampled_from(["model", "task", "data", "  source", "training", "  epochs", "- x", "? a"])
        lines = draw(st.lists(st.tuples(keys, yaml_scalars).map(": ".join), max_size=6))
    else:
        depth = draw(st.integers(1, 600))
        lines = ["model: " + "[" * depth + "]" * draw(st.integers(0, depth))]
    return draw(framed(lines))


def consume_yaml(folder: Path, data: bytes) -> object:
    """`--config FILE`: the file read, validated, and written back as a run saves it."""
    return to_yaml(build_config(read_yaml(Path(_write(folder, "config.yaml", data)))))


override = st.tuples(st.sampled_from(SETTINGS) | odd_text, st.sampled_from(["="] * 5 + ["", "=="]), yaml_scalars)
overrides = st.lists(chance(80).flatmap(lambda structured: override.map("".join) if structured
                                        else st.text(max_size=30)), max_size=4)


def consume_overrides(folder: Path, given: tuple[list[str], list[str]]) -> object:
    """`--set key=value` and `--option key=value` as the CLI reads them, and the config a run saves."""
    sets, options = given
    return to_yaml(run_config(None, {}, sets, options, None, None))


# --- the targets ----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Target:
    name: str
    inputs: st.SearchStrategy[Any]
    consume: Callable[[Path, Any], object]  # one input, in a scratch folder it may write into


TARGETS = [
    Target("csv", table_inputs(delimited(",")), consume_table(".csv")),
    Target("tsv", table_inputs(delimited("\t")), consume_table(".tsv")),
    Target("jsonl", table_inputs(jsonl(records())), consume_table(".jsonl")),
    Target("json", table_inputs(json_file(records())), consume_table(".json")),
    Target("parquet", table_inputs(parquet()), consume_table(".parquet")),
    Target("tagged", tagged_inputs, consume_tagged),
    Target("squad", squad_inputs, consume_squad),
    Target("messages", messages_inputs, consume_messages),
    Target("preferences", preference_inputs, consume_preferences),
    Target("template", templates, consume_template),
    Target("verbalizer", verbalizer_inputs, consume_verbalizer),
    Target("yaml-config", with_noise(yaml_file()), consume_yaml),
    Target("overrides", st.tuples(overrides, overrides), consume_overrides),
]


def outcome(target: Target, folder: Path, given: Any) -> str | None:
    """None when tunelab took the input, the message of its `TunelabError` when it refused it; any other exception,
    or a message that is empty or not one line, propagates (as an AssertionError for the message)."""
    try:
        target.consume(folder, given)
    except TunelabError as error:
        message = str(error)
        assert message and not {"\n", "\r"} & set(message), f"not a one-line message: {message!r}"
        return message
    return None

