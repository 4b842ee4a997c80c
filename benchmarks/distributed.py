"""Two processes against one: MiniLM, movie-snippets, 2,000 training rows, LoRA at a global batch of 32, three
seeds each, `tunelab train` with and without `--nproc 2` (torchrun, DDP over gloo) on this machine's cores, and with
`--nproc 2 --distributed deepspeed-zero3` where DeepSpeed is installed. The bar: the 2-process mean test accuracy
within noise of the 1-process mean (twice the standard error of the difference); reported beside it, the training
time per optimizer step of each (2 processes of 1 thread each against 1 process of all the threads).
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import statistics
import tempfile
from pathlib import Path
from typing import Any

from common import log, machine, read_json, tunelab_train, write_result

NAME = "distributed"


SIDES = {"one process": [], "two processes": ["--nproc", "2"],
         "two processes, ZeRO-3": ["--nproc", "2", "--distributed", "deepspeed-zero3"]}


def run_benchmark(seeds: list[int], rows: int, quick: bool, work: Path) -> dict[str, Any]:
    chosen = {side: extra for side, extra in SIDES.items()
              if "deepspeed-zero3" not in extra or importlib.util.find_spec("deepspeed") is not None}
    sides: dict[str, list[dict[str, Any]]] = {side: [] for side in chosen}
    for seed in seeds:
        for side, extra in chosen.items():
            run = work / f"{side.replace(' ', '-')}-s{seed}"
            options = ["--model", "minilm", "--data", "movie-snippets", "--strategy", "lora", "--limit-train",
                       str(rows), "--batch-size", "32", "--seed", str(seed), *extra]
            timed, figures = tunelab_train(run, options, work / f"{run.name}.log")
            steps = read_json(run / "metrics.json")["training"]["optimizer_steps"]
            sides[side].append({"seed": seed, **figures, "optimizer_steps": steps,
                                "train_s_per_step": figures["train_s"] / steps, "wall_s": timed.wall_s})
            log(f"{NAME}: {side}, seed {seed}: accuracy {figures['test_accuracy']:.3f}, "
                f"{figures['train_s'] / steps * 1000:.0f} ms a step")
    summary: dict[str, Any] = {}
    for side, rows_ in sides.items():
        accuracies = [row["test_accuracy"] for row in rows_]
        summary[side] = {"accuracy_mean": statistics.fmean(accuracies),
                         "accuracy_sd": statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0,
                         "train_s_per_step_median": statistics.median(row["train_s_per_step"] for row in rows_)}
    one = summary["one process"]
    for side in sides:
        if side != "one process":  # each against one process, as `accuracy_difference`, `noise` and the ratio
            two = summary[side]
            two["accuracy_difference"] = two["accuracy_mean"] - one["accuracy_mean"]
            two["noise"] = 2 * math.sqrt((one["accuracy_sd"] ** 2 + two["accuracy_sd"] ** 2) / len(seeds))
            two["step_time_ratio_vs_one"] = two["train_s_per_step_median"] / one["train_s_per_step_median"]
    result = {"benchmark": NAME, "quick": quick, "machine": machine(),
              "settings": {"model": "minilm", "data": "movie-snippets", "strategy": "lora", "rows": rows,
                           "global_batch": 32, "seeds": seeds},
              "runs": sides, "summary": summary,
              "bars": {f"{side} within noise": abs(summary[side]["accuracy_difference"]) <= summary[side]["noise"]
                       for side in sides if side != "one process"}}
    log(f"{NAME}: {summary}")
    log(f"{NAME}: wrote {write_result(NAME, result, quick)}")
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--quick", action="store_true", help="one seed, 200 rows: a check that it runs")
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="tunelab-bench-distributed-"))
    work.mkdir(parents=True, exist_ok=True)
    chosen = [int(seed) for seed in args.seeds.split(",")][:1 if args.quick else None]
    run_benchmark(chosen, 200 if args.quick else args.rows, args.quick, work)
