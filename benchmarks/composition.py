"""Merging four domains' LoRA runs into one delta on MiniLM: what each task keeps of its single-task accuracy.

For each seed, one LoRA run (tunelab's defaults, 2,000 training examples at most) per sentiment domain of the
embedded data (movie, tweets, amazon and nyt snippets: the same two labels, four kinds of text), then every merge
method over the four, each task keeping its head; every task scored on its whole test split merged, single-task
and base+head (`tunelab compose merge`). The bar: the merged bundle keeps at least 97% of each task's single-task
accuracy on average (median over the seeds), with every task stated.

Runs are kept in `--work` (default: a temporary folder) and a finished run is not trained again, so a second
invocation with the same folder only merges.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

from common import TUNELAB, log, machine, median, read_json, run_timed, write_result

NAME = "composition"
SEEDS = [42, 43, 44]
DOMAINS = ["movie-snippets", "tweets", "amazon-snippets", "nyt-snippets"]
METHODS = {"linear": [], "task-arithmetic": [], "ties": [], "dare-ties": []}
LIMIT_TRAIN = 2000
KEPT_BAR = 0.97


def train_domain(work: Path, domain: str, seed: int) -> Path:
    run = work / f"lora-{domain}-{seed}"
    if not (run / "metrics.json").exists():
        run_timed([TUNELAB, "train", "--model", "minilm", "--data", domain, "--strategy", "lora", "--seed", str(seed),
                   "--limit-train", str(LIMIT_TRAIN), "--output", str(run), "--quiet", "--overwrite"],
                  run.with_suffix(".log"))
        log(f"{NAME}: lora {domain} seed {seed}: accuracy {read_json(run / 'metrics.json')['test']['accuracy']:.3f}")
    return run


def merge(work: Path, runs: dict[str, Path], method: str, seed: int) -> dict[str, Any]:
    bundle = work / f"merged-{method}-{seed}"
    run_timed([TUNELAB, "compose", "merge", *(f"{domain}={run}" for domain, run in runs.items()), "--method", method,
               *METHODS[method], "--output", str(bundle), "--overwrite"], bundle.with_suffix(".log"))
    report = read_json(bundle / "merge.json")
    tasks = {domain: {key: task[key]["accuracy"] for key in ("merged", "single_task", "base_and_head")}
             | {"kept": task["kept"]} for domain, task in report["tasks"].items()}
    each = ", ".join(f"{domain} {task['kept']:.3f}" for domain, task in tasks.items())
    log(f"{NAME}: {method} seed {seed}: keeps {report['mean_kept']:.3f} on average ({each})")
    return {"method": method, "seed": seed, "settings": report["merge"], "mean_kept": report["mean_kept"],
            "tasks": tasks}


def run_benchmark(seeds: list[int], work: Path) -> dict[str, Any]:
    rows = []
    for seed in seeds:
        runs = {domain: train_domain(work, domain, seed) for domain in DOMAINS}
        rows.extend(merge(work, runs, method, seed) for method in METHODS)
    summary = {}
    for method in METHODS:
        chosen = [row for row in rows if row["method"] == method]
        summary[method] = {"mean_kept": median([row["mean_kept"] for row in chosen]),
                           **{domain: {key: median([row["tasks"][domain][key] for row in chosen])
                                       for key in ("merged", "single_task", "base_and_head", "kept")}
                              for domain in DOMAINS}}
    best = max(METHODS, key=lambda method: summary[method]["mean_kept"])
    bars = {f"merged_keeps_{KEPT_BAR:.0%}_on_average_{method}": summary[method]["mean_kept"] >= KEPT_BAR
            for method in METHODS}
    result = {"benchmark": NAME, "quick": len(seeds) < len(SEEDS), "seeds": seeds, "machine": machine(),
              "settings": {"model": "minilm", "strategy": "lora (defaults)", "limit_train": LIMIT_TRAIN,
                           "domains": DOMAINS}, "summary": summary, "best_method": best, "bars": bars,
              "pass": bars[f"merged_keeps_{KEPT_BAR:.0%}_on_average_{best}"], "rows": rows}
    log(f"{NAME}: wrote {write_result(NAME, result, result['quick'])}")
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one seed")
    parser.add_argument("--work", type=Path, default=None, help="where the runs are kept (default: a temporary "
                                                                 "folder); finished runs there are reused")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="tunelab-bench-composition-"))
    work.mkdir(parents=True, exist_ok=True)
    run_benchmark(SEEDS[:1] if args.quick else SEEDS, work)
