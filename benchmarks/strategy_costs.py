"""What each strategy costs to train, relative to full fine-tuning measured in the same run.

Every strategy runs `strategy_step.py` in a fresh process (so peak memory is its own, read from wait4), in an
order that rotates every repeat. Reported per strategy: median step time / full's, peak RSS / full's, bytes on
disk per task (the delta) next to a full model copy, and the trainable share.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from common import BENCHMARKS, log, machine, main_for, median, read_json, run_timed, working_folder, write_result

NAME = "strategy_costs"
STRATEGIES = ["full", "linear-probe", "lora", "ia3", "adapter", "prefix", "prompt-tuning", "p-tuning"]
LORA_STEP_BAR = 0.7  # LoRA's step may take at most 0.7x full's


def measure(strategy: str, folder: Path, repeat: int, steps: int) -> dict[str, Any]:
    result = folder / f"{strategy}-{repeat}.json"
    command = [sys.executable, str(BENCHMARKS / "strategy_step.py"), "--strategy", strategy, "--steps", str(steps),
               "--result", str(result)]
    timed = run_timed(command, folder / f"{strategy}-{repeat}.log")
    return {**read_json(result), "peak_rss_bytes": timed.peak_rss_bytes, "load_before": timed.load_before}


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per strategy: medians over repeats of its own figures and of its per-repeat ratios to full."""
    summary = {}
    for strategy in STRATEGIES:
        mine = [row[strategy] for row in rows]
        summary[strategy] = {
            "step_s": median([m["step_s_median"] for m in mine]),
            "step_vs_full": median([row[strategy]["step_s_median"] / row["full"]["step_s_median"] for row in rows]),
            "peak_rss_bytes": median([m["peak_rss_bytes"] for m in mine]),
            "peak_rss_vs_full": median([row[strategy]["peak_rss_bytes"] / row["full"]["peak_rss_bytes"]
                                        for row in rows]),
            "delta_bytes": mine[0]["delta_bytes"],
            "trainable_share": mine[0]["trainable_share"],
        }
    summary["pass"] = bool(summary["lora"]["step_vs_full"] <= LORA_STEP_BAR
                           and all(summary[s]["step_vs_full"] <= 1.0 for s in STRATEGIES))
    return summary


def run_benchmark(repeats: int = 3, quick: bool = False, keep: bool = False) -> dict[str, Any]:
    steps = 3 if quick else 12
    host = machine()
    rows = []
    with working_folder(NAME, keep) as folder:
        for repeat in range(repeats):
            order = STRATEGIES[repeat % len(STRATEGIES):] + STRATEGIES[:repeat % len(STRATEGIES)]
            row = {strategy: measure(strategy, folder, repeat, steps) for strategy in order}
            rows.append(row)
            log(f"{NAME}: repeat {repeat + 1}/{repeats}: " + ", ".join(
                f"{s} {row[s]['step_s_median']:.3f} s" for s in STRATEGIES))
    result = {"benchmark": NAME, "quick": quick, "repeats": repeats, "steps": steps, "batch_size": 32,
              "machine": host, "summary": summarise(rows), "rows": rows}
    path = write_result(NAME, result, quick)
    log(f"{NAME}: wrote {path}")
    return result


if __name__ == "__main__":
    main_for(run_benchmark, __doc__.splitlines()[0], 3, "3 timed steps per strategy, for a smoke test")
