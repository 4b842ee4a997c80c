"""Property: any input to a loader, the template parser or the config readers gives a result or one one-line
`TunelabError`, never another exception (the targets: tests/fuzz_targets.py; 10,000 examples each:
benchmarks/fuzz.py)."""

from __future__ import annotations

from pathlib import Path

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
