"""Kill `tunelab train` with SIGKILL at ten moments and run the same command again: MiniLM, movie-snippets, LoRA with
`--checkpoint-every`. One uninterrupted run is the reference; each of the ten runs is killed once, at a moment of
its own (while it loads, as soon as its staging folder appears, three times while it trains, as training ends and
the test split is scored, as its delta is written, as it commits, and twice at random), then the same command runs
to its end. The bars: every final run's metrics equal the reference's; after each kill, the output is either absent
or a complete run (its manifest checks out); no staging folder is left after success.
"""

from __future__ import annotations

import argparse
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import OFFLINE_ENV, TUNELAB, log, machine, read_json, write_result

NAME = "chaos"
POLL_S = 0.005


def command(output: Path, rows: int, every: int) -> list[str]:
    return [TUNELAB, "train", "--model", "minilm", "--data", "movie-snippets", "--strategy", "lora", "--limit-train",
            str(rows), "--limit-eval", "300", "--batch-size", "16", "--epochs", "2", "--checkpoint-every", str(every),
            "--quiet", "--output", str(output)]


def staging(output: Path) -> Path:
    return output.with_name(f".{output.name}.partial")


def checkpoints(output: Path) -> list[int]:
    return sorted(int(path.parent.name.rpartition("-")[2])
                  for path in (staging(output) / "checkpoints").glob("checkpoint-*/trainer_state.json"))


# When to kill: a condition on the run's files (checked every few milliseconds) and a delay after it holds.
Moment = tuple[str, Callable[[Path], bool], float]


def moments(steps: int, reference_s: float, rng: random.Random) -> list[Moment]:
    trained = lambda share: lambda out: bool(checkpoints(out)) and checkpoints(out)[-1] >= share * steps  # noqa: E731
    return [
        ("loading data and model", lambda out: True, rng.uniform(0.5, 3.0)),
        ("staging folder just made", lambda out: staging(out).exists(), 0.0),
        ("training, first quarter", trained(0.0), rng.uniform(0.0, 1.0)),
        ("training, mid-run", trained(0.4), rng.uniform(0.0, 1.0)),
        ("training, last quarter", trained(0.75), rng.uniform(0.0, 1.0)),
        ("scoring the test split", trained(1.0), rng.uniform(0.0, 1.0)),
        ("saving the delta", lambda out: any(staging(out).glob("adapter*")), 0.0),
        ("committing", lambda out: (staging(out) / "manifest.json.partial").exists()
         or (staging(out) / "manifest.json").exists(), 0.0),
        ("random moment", lambda out: True, rng.uniform(0.0, reference_s)),
        ("random moment", lambda out: True, rng.uniform(0.0, reference_s)),
    ]


def kill_when(process: subprocess.Popen, output: Path, ready: Callable[[Path], bool], delay: float) -> float | None:
    """SIGKILL once `ready` holds and `delay` seconds have passed; the kill's time since start, or None if the run
    ended first."""
    start = time.monotonic()
    while process.poll() is None and not ready(output):
        time.sleep(POLL_S)
    time.sleep(delay)
    if process.poll() is not None:
        return None
    process.send_signal(signal.SIGKILL)
    process.wait()
    return time.monotonic() - start


def visible_state(output: Path) -> str:
    """What a reader of the output sees right after the kill: nothing, or a complete run."""
    if not output.exists():
        return "absent"
    check = subprocess.run([sys.executable, "-c", "import sys; from pathlib import Path; "
                            "from tunelab.runs import verify_manifest; verify_manifest(Path(sys.argv[1]))",
                            str(output)], capture_output=True, text=True, env=OFFLINE_ENV)
    complete = (output / "manifest.json").exists() and (output / "metrics.json").exists() and check.returncode == 0
    return "complete" if complete else "HALF-WRITTEN"


def run_benchmark(rows: int, every: int, seed: int, quick: bool, work: Path) -> dict[str, Any]:
    reference = work / "reference"
    start = time.monotonic()
    subprocess.run(command(reference, rows, every), check=True, env=OFFLINE_ENV, stdout=subprocess.DEVNULL)
    reference_s = time.monotonic() - start
    expected = read_json(reference / "metrics.json")
    steps = expected["training"]["optimizer_steps"]
    log(f"{NAME}: reference run {reference_s:.0f} s, {steps} steps, accuracy {expected['test']['accuracy']:.4f}")
    kills = []
    for index, (moment, ready, delay) in enumerate(moments(steps, reference_s, random.Random(seed))):
        if quick and index % 3:
            continue
        output = work / f"kill-{index:02d}"
        process = subprocess.Popen(command(output, rows, every), env=OFFLINE_ENV, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        killed_at = kill_when(process, output, ready, delay)
        seen = visible_state(output)
        kept = checkpoints(output)
        again = subprocess.run(command(output, rows, every), env=OFFLINE_ENV, capture_output=True, text=True)
        finished_already = again.returncode != 0 and "already exists" in again.stderr
        resumed = next((line.rpartition(" ")[2] for line in again.stdout.splitlines()
                        if "resuming the interrupted run from step" in line), None)
        metrics = read_json(output / "metrics.json") if (output / "metrics.json").exists() else {}
        row = {"moment": moment, "killed_at_s": killed_at, "visible_after_kill": seen,
               "checkpoints_after_kill": kept, "resumed_from_step": int(resumed) if resumed else None,
               "rerun_exit": again.returncode, "finished_before_rerun": finished_already,
               "test_accuracy": metrics.get("test", {}).get("accuracy"),
               "identical_metrics": metrics == expected,
               "test_metrics_equal": metrics.get("test") == expected["test"],
               "staging_left": staging(output).exists(),
               "rerun_error": again.stderr.strip()[-300:] if again.returncode and not finished_already else ""}
        kills.append(row)
        log(f"{NAME}: {moment}: killed at {killed_at}, seen {seen}, checkpoints {kept[-1:]}, resumed from "
            f"{row['resumed_from_step']}, identical {row['identical_metrics']}")
    ended = [row for row in kills if row["rerun_exit"] == 0 or row["finished_before_rerun"]]
    result = {"benchmark": NAME, "quick": quick, "machine": machine(),
              "settings": {"model": "minilm", "data": "movie-snippets", "strategy": "lora", "rows": rows,
                           "checkpoint_every": every, "epochs": 2, "batch_size": 16, "limit_eval": 300, "seed": seed},
              "reference": {"wall_s": reference_s, "optimizer_steps": steps, "test": expected["test"]},
              "kills": kills,
              "summary": {"kills": len(kills),
                          "resumed_to_identical_metrics": sum(r["identical_metrics"] for r in kills),
                          "resumed_from_a_checkpoint": sum(r["resumed_from_step"] is not None for r in kills),
                          "half_written_seen": sum(r["visible_after_kill"] == "HALF-WRITTEN" for r in kills),
                          "staging_left": sum(r["staging_left"] for r in kills)},
              "bars": {"every_kill_resumed_to_identical_metrics": len(ended) == len(kills)
                       and all(r["identical_metrics"] for r in kills),
                       "nothing_half_written": all(r["visible_after_kill"] != "HALF-WRITTEN" for r in kills),
                       "no_staging_left": not any(r["staging_left"] for r in kills)}}
    log(f"{NAME}: {result['summary']}, bars {result['bars']}")
    log(f"{NAME}: wrote {write_result(NAME, result, quick)}")
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=400)
    parser.add_argument("--checkpoint-every", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0, help="draws the kill delays")
    parser.add_argument("--quick", action="store_true", help="four of the ten kills, 200 rows: a check that it runs")
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="tunelab-bench-chaos-"))
    work.mkdir(parents=True, exist_ok=True)
    run_benchmark(200 if args.quick else args.rows, args.checkpoint_every, args.seed, args.quick, work)
