"""Composition on MiniLM over four sentiment domains of the embedded data (movie, tweets, amazon and nyt snippets:
the same two labels, four kinds of text), 3 seeds.

- merge (`results/composition.json`): for each seed, one LoRA run per domain (tunelab's defaults, 2,000 training
  examples at most), then every merge method over the four, each task keeping its head; every task scored on its
  whole test split merged, single-task and base+head (`tunelab compose merge`). The bar: the merged bundle keeps at
  least 97% of each task's single-task accuracy on average (median over the seeds), with every task stated.
- few-shot (`results/composition_few_shot.json`): leave one domain out; with 16 labelled examples per label of it
  (and 16 more for validation), `compose hub` over the other three domains' LoRA runs, against the best of those
  runs alone with a head fitted on the same shots (chosen on the test split: a bound; and chosen on the shots, as a
  user could), a LoRA trained on the shots, and `fusion` over the other three domains' adapter runs. The bars: the
  composition at least matches each, on the mean over the four held-out domains (median over the seeds).

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


def composed_row(work: Path, target: str, seed: int) -> dict[str, Any]:
    """One held-out domain and seed: the composition, the sources alone (and the base), a LoRA on the shots."""
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
    row = {"target": target, "seed": seed, "composed": composed["test"]["accuracy"],
           "weights": composed["hub"]["weights"], "evaluations": composed["training"]["evaluations"],
           "search_s": read_json(hub / "resources.json")["train_s"],
           "base_and_head": composed["hub"]["alone"]["base_and_head"]["accuracy"], "sources_alone": alone,
           "best_single_source": max(alone.values()),
           "single_source_chosen_on_shots": alone[min(composed["hub"]["alone_on_shots"].items(),
                                                      key=lambda item: item[1]["loss"])[0]],
           f"lora_{SHOTS}_shots": read_json(few_shot / "metrics.json")["test"]["accuracy"]}
    log(f"{NAME}: {target} seed {seed}: composed {row['composed']:.3f}, best source alone "
        f"{row['best_single_source']:.3f} (chosen on the shots {row['single_source_chosen_on_shots']:.3f}), lora "
        f"on the shots {row[f'lora_{SHOTS}_shots']:.3f}, base "
        f"{row['base_and_head']:.3f}")
    return row


def fusion_accuracy(work: Path, target: str, seed: int) -> float:
    """`fusion` on the held-out domain's shots over the other three domains' adapter runs."""
    adapters = ",".join(str(train_domain(work, domain, seed, "adapter")) for domain in DOMAINS if domain != target)
    fused = train(work / f"fusion-{target}-{seed}", ["--data", target, "--strategy", "fusion", "--option",
                                                     f"sources={adapters}", "--shots", str(SHOTS), "--seed",
                                                     str(seed)])
    return read_json(fused / "metrics.json")["test"]["accuracy"]


def few_shot_result(rows: list[dict[str, Any]], seeds: list[int]) -> dict[str, Any]:
    """Medians over the seeds where a side has all four held-out domains (fusion may have fewer than the rest)."""
    sides = ["composed", "best_single_source", "single_source_chosen_on_shots", f"lora_{SHOTS}_shots", "fusion",
             "base_and_head"]
    per_seed, summary = {}, {}
    for side in sides:
        complete = [seed for seed in seeds
                    if sum(1 for row in rows if row["seed"] == seed and side in row) == len(DOMAINS)]
        per_seed[side] = {seed: sum(row[side] for row in rows if row["seed"] == seed) / len(DOMAINS)
                          for seed in complete}
        if complete:
            summary[f"{side}_mean_accuracy"] = median(list(per_seed[side].values()))
            summary |= {f"{target}_{side}": median([row[side] for row in rows if row["target"] == target and
                                                    row["seed"] in complete]) for target in DOMAINS}
    bars = {}
    for side in sides[1:5]:
        shared = sorted(set(per_seed["composed"]) & set(per_seed[side]))
        if shared:  # on the seeds both sides have
            bars[f"composed_at_least_{side}"] = (median([per_seed["composed"][seed] for seed in shared])
                                                 >= median([per_seed[side][seed] for seed in shared]))
    return {"benchmark": f"{NAME}_few_shot", "quick": len(seeds) < len(SEEDS), "seeds": seeds,
            "seeds_per_side": {side: sorted(values) for side, values in per_seed.items()}, "machine": machine(),
            "settings": {"model": "minilm", "shots_per_label": SHOTS, "domains": DOMAINS,
                         "search": "CMA-ES, budget 80, l1 0.05", "sources_limit_train": LIMIT_TRAIN},
            "per_seed_means": {side: {str(seed): value for seed, value in values.items()}
                               for side, values in per_seed.items()},
            "summary": summary, "bars": bars, "pass": bool(bars) and all(bars.values()), "rows": rows}


def few_shot_benchmark(seeds: list[int], work: Path) -> dict[str, Any]:
    """The composition and its cheap baselines for every seed first, then fusion (which trains adapter sources),
    writing the result after each row, so that an interrupted run still reports what it measured."""
    rows = []
    for seed in seeds:
        for target in DOMAINS:
            rows.append(composed_row(work, target, seed))
            write_result(f"{NAME}_few_shot", few_shot_result(rows, seeds), len(seeds) < len(SEEDS))
    for row in rows:
        row["fusion"] = fusion_accuracy(work, row["target"], row["seed"])
        log(f"{NAME}: {row['target']} seed {row['seed']}: fusion {row['fusion']:.3f}")
        write_result(f"{NAME}_few_shot", few_shot_result(rows, seeds), len(seeds) < len(SEEDS))
    result = few_shot_result(rows, seeds)
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
