"""Property: any input to a loader, the template parser or the config readers gives a result or one one-line
`TunelabError`, never another exception (the targets: tests/fuzz_targets.py; 10,000 examples each:
benchmarks/fuzz.py)."""

from __future__ import annotations

import io
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fuzz_targets import TARGETS, Target, outcome
from hypothesis import HealthCheck, given, settings

# Few examples, a seed fixed by the test's name (derandomize) and no example database: the fast suite stays fast and
# gives the same verdict on every machine.
FAST = settings(max_examples=120, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])


@pytest.mark.parametrize("target", TARGETS, ids=lambda target: target.name)
def test_any_input_gives_a_result_or_one_tunelab_error(target: Target, tmp_path: Path):
    @FAST
    @given(target.inputs)
    def check(given_input):
        outcome(target, tmp_path, given_input)

    check()


def _rows(header: str, row: str, count: int = 12) -> bytes:
    return "\n".join([header, *[row.replace("#", str(number)) for number in range(count)]]).encode()


def _parquet_of(*arrays: pa.Array, names: list[str]) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_arrays(list(arrays), names=names), buffer)
    return buffer.getvalue()


def _categories(values: list[str]) -> pa.DictionaryArray:
    return pa.array(values).dictionary_encode()


TARGET = {target.name: target for target in TARGETS}
FOUND = [  # inputs fuzzing found, or that pin down what it fixed: (target, input, a part of the message; None: taken)
    ("csv", (b"\xef\xbb\xbf" + _rows("text,label", "film #,good"), "text", "label", {}), None),
    ("csv", (_rows("text,label", "film #,good,extra"), "text", "label", {}), "more fields than its first line"),
    ("csv", (_rows('"a\nb",label', "film #,good"), "text", "label", {}), "its columns are a\\nb, label"),
    ("jsonl", (b'{"text": "a", "label": "b"}\nnull\n', "text", "label", {}), "line 2 is null, not an object"),
    ("jsonl", (_rows('{"text": "x\u2028y", "label": "a"}', '{"text": "film #", "label": "b"}'), "text", "label",
               {}), None),
    ("parquet", (_parquet_of(pa.array([b"\x8b"] * 12), pa.array(["a"] * 12), names=["text", "label"]), "text",
                 "label", {}), "holds binary data"),
    ("parquet", (_parquet_of(pa.array([b"\x8b"] * 12).view(pa.string()), pa.array(["a"] * 12),
                             names=["text", "label"]), "text", "label", {}), "Invalid UTF8 sequence"),
    ("parquet", (_parquet_of(*[pa.array(["a"] * 12)] * 3, names=["text", "text", "label"]), "text", "label", {}),
     "has 2 columns named 'text'"),
    ("parquet", (_parquet_of(_categories(["film"] * 12), _categories(["a", "b"] * 6), names=["text", "label"]), "text",
                 "label", {}), None),
    ("csv", (_rows("text,label", "film #,good"), "text", "label", {"split_seed": -1}), "data.split_seed"),
    ("yaml-config", b"model: !!float abc", "a tagged value cannot be read"),
    ("yaml-config", b"x: !!timestamp 2020-13-45", "a tagged value cannot be read"),
    ("yaml-config", b"model: " + b"[" * 600 + b"]" * 600, "nests too deeply"),
    ("yaml-config", b"training: !!timestamp 2020-13-", "a tagged value cannot be read"),
    ("overrides", (["training.epochs=!!int 1.5"], []), "a tagged value cannot be read"),
    ("overrides", ([], ["targets=&a [*a]"]), "strategy.options: Value error, it holds itself"),
    ("overrides", ([], ["targets=" + "[" * 20 + "]" * 20]), "more than 8 deep"),
    ("overrides", ([], ["targets=[query, {value: [1, 2]}]"]), None),
    ("overrides", (["training.seed=4294967296"], []), "training.seed"),
    ("template", "{soft:²} {text}", None),
]


@pytest.mark.parametrize(("name", "given_input", "expected"), FOUND)
def test_inputs_fuzzing_found(name: str, given_input, expected: str | None, tmp_path: Path):
    message = outcome(TARGET[name], tmp_path, given_input)
    assert message is None if expected is None else expected in message, message
