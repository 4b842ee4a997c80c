"""Composition on MiniLM over four sentiment domains of the embedded data (movie, tweets, amazon and nyt snippets:
the same two labels, four kinds of text), 3 seeds.

- merge (`results/composition.json`): for each seed, one LoRA run per domain (tunelab's defaults, 2,000 training
  examples at most), then every merge method over the four, each task keeping its head; every task scored on its
  whole test split merged, single-task and base+head (`tunelab compose merge`). The bar: the merged bundle keeps at
  least 97% of each task's single-task accuracy on average (median over the seeds), with every task stated.
- few-shot (`results/composition_few_shot.json`): leave one domain out; with 16 labelled examples per label of it
  (and 16 more for validation), `compose hub` over the other three domains' LoRA runs, against the best of those
  runs alone with a head fitted on the same shots (chosen on the test split: a bound the composition must reach), a
  LoRA trained on the shots, and `fusion` over the other three domains' adapter runs. The bars: the composition at
  least matches each, on the mean over the four held-out domains (median over the seeds).

Runs are kept in `--work` (default: a temporary folder) and a finished run is not trained again, so a second
invocation with the same folder only does what is missing.
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
SHOTS = 16


def train(run: Path, options: list[str]) -> Path:
    """`tunelab train` into `run` unless a finished run is there already."""
    if not (run / "metrics.json").exists():
        run_timed([TUNELAB, "train", "--model", "minilm", *options, "--output", str(run), "--quiet", "--overwrite"],
                  run.with_suffix(".log"))
        log(f"{NAME}: {run.name}: accuracy {read_json(run / 'metrics.json')['test']['accuracy']:.3f}")
    return run


def train_domain(work: Path, domain: str, seed: int, strategy: str = "lora") -> Path:
    return train(work / f"{strategy}-{domain}-{seed}", ["--data", domain, "--strategy", strategy, "--seed", str(seed),
                                                        "--limit-train", str(LIMIT_TRAIN)])


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


def merge_benchmark(seeds: list[int], work: Path) -> dict[str, Any]:
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


def held_out(work: Path, target: str, seed: int) -> dict[str, Any]:
    """One held-out domain and seed: the composition, the sources alone, a LoRA on the shots, fusion."""
    others = [domain for domain in DOMAINS if domain != target]
    hub = work / f"hub-{target}-{seed}"
    if not (hub / "metrics.json").exists():
        run_timed([TUNELAB, "compose", "hub", *(f"{d}={train_domain(work, d, seed)}" for d in others), "--data",
                   target, "--shots", str(SHOTS), "--seed", str(seed), "--output", str(hub), "--overwrite"],
                  hub.with_suffix(".log"))
    composed = read_json(hub / "metrics.json")
    alone = {name: test["accuracy"] for name, test in composed["hub"]["alone"].items() if name != "base_and_head"}
    few_shot = train(work / f"lora{SHOTS}-{target}-{seed}", ["--data", target, "--strategy", "lora", "--shots",
                                                             str(SHOTS), "--seed", str(seed)])
    adapters = ",".join(str(train_domain(work, domain, seed, "adapter")) for domain in others)
    fused = train(work / f"fusion-{target}-{seed}", ["--data", target, "--strategy", "fusion", "--option",
                                                     f"sources={adapters}", "--shots", str(SHOTS), "--seed",
                                                     str(seed)])
    row = {"target": target, "seed": seed, "composed": composed["test"]["accuracy"],
           "weights": composed["hub"]["weights"], "evaluations": composed["training"]["evaluations"],
           "search_s": read_json(hub / "resources.json")["train_s"],
           "base_and_head": composed["hub"]["alone"]["base_and_head"]["accuracy"], "sources_alone": alone,
           "best_single_source": max(alone.values()), f"lora_{SHOTS}_shots": read_json(few_shot / "metrics.json")[
               "test"]["accuracy"], "fusion": read_json(fused / "metrics.json")["test"]["accuracy"]}
    log(f"{NAME}: {target} seed {seed}: composed {row['composed']:.3f}, best source alone "
        f"{row['best_single_source']:.3f}, lora on the shots {row[f'lora_{SHOTS}_shots']:.3f}, fusion "
        f"{row['fusion']:.3f}, base {row['base_and_head']:.3f}")
    return row


def few_shot_benchmark(seeds: list[int], work: Path) -> dict[str, Any]:
    rows = [held_out(work, target, seed) for seed in seeds for target in DOMAINS]
    sides = ["composed", "best_single_source", f"lora_{SHOTS}_shots", "fusion", "base_and_head"]
    per_seed = {side: [sum(row[side] for row in rows if row["seed"] == seed) / len(DOMAINS) for seed in seeds]
                for side in sides}
    summary = {f"{side}_mean_accuracy": median(values) for side, values in per_seed.items()}
    summary |= {f"{target}_{side}": median([row[side] for row in rows if row["target"] == target])
                for target in DOMAINS for side in sides}
    bars = {f"composed_at_least_{side}": summary["composed_mean_accuracy"] >= summary[f"{side}_mean_accuracy"]
            for side in sides[1:4]}
    result = {"benchmark": f"{NAME}_few_shot", "quick": len(seeds) < len(SEEDS), "seeds": seeds,
              "machine": machine(), "settings": {"model": "minilm", "shots_per_label": SHOTS, "domains": DOMAINS,
                                                 "search": "CMA-ES, budget 80, l1 0.05", "sources_limit_train":
                                                 LIMIT_TRAIN},
              "per_seed_means": per_seed, "summary": summary, "bars": bars, "pass": all(bars.values()), "rows": rows}
    log(f"{NAME}: wrote {write_result(f'{NAME}_few_shot', result, result['quick'])}")
    return result


def run_benchmark(repeats: int = 3, quick: bool = False, work: Path | None = None,
                  parts: tuple[str, ...] = ("merge", "few-shot")) -> dict[str, Any]:
    seeds = SEEDS[:1] if quick else SEEDS[:repeats]
    work = work or Path(tempfile.mkdtemp(prefix="tunelab-bench-composition-"))
    work.mkdir(parents=True, exist_ok=True)
    results = {}
    if "merge" in parts:
        results["merge"] = merge_benchmark(seeds, work)
    if "few-shot" in parts:
        results["few_shot"] = few_shot_benchmark(seeds, work)
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one seed")
    parser.add_argument("--work", type=Path, default=None, help="where the runs are kept (default: a temporary "
                                                                 "folder); finished runs there are reused")
    parser.add_argument("--part", choices=["merge", "few-shot"], action="append", help="only these parts")
    args = parser.parse_args()
    run_benchmark(quick=args.quick, work=args.work, parts=tuple(args.part or ("merge", "few-shot")))
