"""Fuzzing at length: every target of tests/fuzz_targets.py (each loader, the template parser and label words, YAML
configs and `--set` overrides) on 10,000 generated inputs, counting what tunelab took, what it refused with a
one-line `TunelabError`, and anything else it raised (the bar: nothing). Writes results/fuzz.json."""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from common import RESULTS, log, machine, read_json, write_result
from hypothesis import HealthCheck, Phase, given, seed, settings

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the targets the fast tests run too
from fuzz_targets import TARGETS, Target, outcome  # noqa: E402

EXAMPLES = 10_000


def fuzz_target(target: Target, examples: int, first_seed: int, folder: Path) -> tuple[dict[str, Any], list[dict]]:
    """Run `examples` generated inputs through the target without stopping at a failure (no shrinking): the
    figures, and each kind of uncaught exception with its count and first input."""
    refusals: Counter[str] = Counter()
    uncaught: dict[str, dict[str, Any]] = {}
    counts = Counter()

    @settings(max_examples=examples, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @seed(first_seed)
    @given(target.inputs)
    def run(given_input: Any) -> None:
        counts["examples"] += 1
        try:
            message = outcome(target, folder, given_input)
        except Exception as error:  # what the bar counts: every exception but a TunelabError, and multi-line ones
            kind = f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
            uncaught.setdefault(kind, {"exception": kind, "count": 0, "example": repr(given_input)[:500]})
            uncaught[kind]["count"] += 1
            return
        if message is None:
            counts["accepted"] += 1
        else:
            refusals[message] += 1

    start = time.perf_counter()
    run()
    figures = {"examples": counts["examples"], "accepted": counts["accepted"], "refused": refusals.total(),
               "distinct_messages": len(refusals), "uncaught": sum(row["count"] for row in uncaught.values()),
               "seconds": round(time.perf_counter() - start, 1)}
    return figures, sorted(uncaught.values(), key=lambda row: -row["count"])


def fuzz_named(name: str, examples: int, first_seed: int) -> tuple[dict[str, Any], list[dict]]:
    """One target by name (what a worker process receives), in a scratch folder of its own."""
    target = next(target for target in TARGETS if target.name == name)
    with tempfile.TemporaryDirectory(prefix=f"tunelab-fuzz-{name}-") as folder:
        figures, uncaught = fuzz_target(target, examples, first_seed, Path(folder))
    log(f"fuzz {name}: {figures}")
    return figures, uncaught


def run_benchmark(examples: int = EXAMPLES, first_seed: int = 0, only: list[str] | None = None,
                  quick: bool = False, jobs: int = 1, update: bool = False) -> dict[str, Any]:
    """Fuzz every target (or `only` these). With `update`, the targets run replace their rows in results/fuzz.json
    and the others are kept, so that a fix to one reader is measured again without rerunning all; the result lists
    the targets rerun and what each found before."""
    examples = 100 if quick else examples
    names = [target.name for target in TARGETS if not only or target.name in only]
    with ProcessPoolExecutor(jobs) as pool:
        outcomes = list(pool.map(fuzz_named, names, [examples] * len(names), [first_seed] * len(names)))
    summary = {name: figures for name, (figures, _) in zip(names, outcomes, strict=True)}
    uncaught = {name: found for name, (_, found) in zip(names, outcomes, strict=True)}
    settings = {"examples_per_target": examples, "seed": first_seed, "targets": len(summary), "jobs": jobs}
    if update:
        kept = read_json(RESULTS / "fuzz.json")
        rerun = {**kept.get("rerun", {}), **{name: kept["uncaught"][name] for name in names}}
        summary, uncaught = {**kept["summary"], **summary}, {**kept["uncaught"], **uncaught}
        settings = {**kept["settings"], "targets": len(summary)}
    result = {"note": "Each target's inputs: random bytes or text, and well-formed files with odd values, framed with "
                      "BOMs, newline styles, encodings and cuts (tests/fuzz_targets.py).",
              "settings": settings, "summary": summary, "uncaught": uncaught,
              "bars": {f"0 uncaught exceptions in {examples:,} examples per target": all(
                  row["uncaught"] == 0 and row["examples"] == examples for row in summary.values())},
              "machine": machine()}
    if update:
        result["rerun"] = rerun  # target -> what it found in the run before, since fixed
    write_result("fuzz", result, quick or examples != EXAMPLES or (bool(only) and not update))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--examples", type=int, default=EXAMPLES, help="per target")
    parser.add_argument("--seed", type=int, default=0, help="Hypothesis's seed")
    parser.add_argument("--only", action="append", choices=[target.name for target in TARGETS])
    parser.add_argument("--quick", action="store_true", help="100 examples a target; writes results/fuzz.quick.json")
    parser.add_argument("--jobs", type=int, default=1, help="targets fuzzed at once, each in its own process")
    parser.add_argument("--update", action="store_true",
                        help="with --only: replace those targets' rows in results/fuzz.json, keep the others")
    args = parser.parse_args()
    run_benchmark(args.examples, args.seed, args.only, args.quick, args.jobs, args.update)


if __name__ == "__main__":
    main()
