"""MeZO against backpropagation at the same number of forward passes: SmolLM2, movie-snippets, K shots per label.

- `tunelab blackbox --method mezo --tune lora` within F calls: a call is one forward over every training shot (or
  every validation shot), so F forward passes and no backward one.
- Its gradient counterpart: the same LoRA (rank 8, alpha 16, on the attention's query and value) trained by
  backpropagation on the same loss (the label words' cross-entropy after the same template), `tunelab train
  --strategy pet --tune lora`, a batch of every training shot, E epochs: each epoch is one forward and one backward
  over the training shots and one forward over the validation shots, so 2E forward passes and E backward ones, with
  E = F / 2. Both in fp32.
- mezo again at a budget several times F, to see where more forward passes take it.
- The template's zero-shot accuracy on the same test split (from the mezo run).
Test accuracy on the first --limit-eval test examples; peak RSS of each process (wait4). Every run is an ordinary
command; a run already in the working folder is reused (`--work DIR`), so a long benchmark can be resumed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from common import TUNELAB, log, machine, read_json, run_timed, write_result

NAME = "mezo"
SHOTS = 16
EVAL_EVERY = 5  # mezo's steps a round: a round is 11 calls


def timed_run(folder: Path, name: str, command: list[str]) -> dict[str, Any]:
    """Run `command` into `folder/name` unless it finished before; its wall time and peak RSS, kept beside it."""
    run, timing = folder / name, folder / f"{name}.timed.json"
    if not (run / "metrics.json").exists():
        timed = run_timed([*command, "--output", str(run)], folder / f"{name}.log")
        timing.write_text(json.dumps(timed.summary()), encoding="utf-8")
    return {"run": run, **read_json(timing)}


def mezo_run(folder: Path, seed: int, budget: int, common: list[str], eval_every: int) -> dict[str, Any]:
    done = timed_run(folder, f"mezo-{budget}-{seed}", [
        TUNELAB, "blackbox", "--method", "mezo", "--tune", "lora", *common, "--budget", str(budget), "--patience", "0",
        "--eval-every", str(eval_every), "--seed", str(seed)])
    metrics, search = read_json(done["run"] / "metrics.json"), read_json(done["run"] / "resources.json")["search"]
    return {"test_accuracy": metrics["test"]["accuracy"], "zero_shot_accuracy": metrics["zero_shot"]["accuracy"],
            "validation_accuracy": metrics["validation_accuracy"], "forward_passes": search["calls"],
            "backward_passes": 0, "steps": metrics["curve"][-1]["steps"] if metrics["curve"] else 0,
            "search_wall_s": search["wall_s"], "wall_s": done["wall_s"], "peak_rss_bytes": done["peak_rss_bytes"],
            "curve": metrics["curve"]}


def backprop_run(folder: Path, seed: int, epochs: int, common: list[str]) -> dict[str, Any]:
    done = timed_run(folder, f"backprop-{epochs}-{seed}", [
        TUNELAB, "train", "--strategy", "pet", "--tune", "lora", *common, "--epochs", str(epochs), "--batch-size",
        str(2 * SHOTS), "--precision", "fp32", "--seed", str(seed), "--quiet"])
    metrics, resources = read_json(done["run"] / "metrics.json"), read_json(done["run"] / "resources.json")
    return {"test_accuracy": metrics["test"]["accuracy"], "forward_passes": 2 * epochs, "backward_passes": epochs,
            "steps": epochs,  # one optimizer step an epoch: the batch holds every training shot
            "train_s": resources["train_s"], "wall_s": done["wall_s"], "peak_rss_bytes": done["peak_rss_bytes"],
            "peak_memory_bytes": resources.get("peak_memory_bytes")}


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    mean = lambda side: statistics.fmean(row[side]["test_accuracy"] for row in rows)  # noqa: E731
    return {"seeds": [row["seed"] for row in rows], "zero_shot_accuracy": statistics.fmean(
        row["mezo"]["zero_shot_accuracy"] for row in rows), "mezo_accuracy": mean("mezo"),
        "backprop_accuracy": mean("backprop"), "mezo_long_accuracy": mean("mezo_long") if all(
            "mezo_long" in row for row in rows) else None}


def run_benchmark(seeds: list[int], forwards: int, long_forwards: int, limit_eval: int, long_seeds: int,
                  quick: bool, work: Path) -> dict[str, Any]:
    """`forwards` for each side (mezo's rounds of 2 x eval_every + 1 calls fill it: 12 holds one round of five steps),
    `long_forwards` for mezo alone on the first `long_seeds` seeds. A seed's runs go side by side."""
    eval_every = 1 if quick else EVAL_EVERY
    common = ["--model", "smollm2", "--data", "movie-snippets", "--shots", str(SHOTS), "--limit-eval",
              str(limit_eval)]
    result: dict[str, Any] = {"benchmark": NAME, "quick": quick, "machine": machine(), "settings": {
        "model": "smollm2", "data": "movie-snippets", "shots": SHOTS, "forward_passes": forwards,
        "long_forward_passes": long_forwards if long_seeds else None, "limit_eval": limit_eval, "seeds": seeds,
        "rank": 8,
        "backprop": "tunelab train --strategy pet --tune lora (batch = every training shot, fp32)",
        "mezo": f"tunelab blackbox --method mezo --tune lora (its defaults for a LoRA), --eval-every {eval_every}"},
        "rows": []}
    for index, seed in enumerate(seeds):
        with ThreadPoolExecutor(3) as pool:  # a seed's runs side by side: the CPU is shared anyway
            running = {"mezo": pool.submit(mezo_run, work, seed, forwards, common, eval_every),
                       "backprop": pool.submit(backprop_run, work, seed, forwards // 2, common)}
            if index < long_seeds:
                running["mezo_long"] = pool.submit(mezo_run, work, seed, long_forwards, common, eval_every)
            row = {"seed": seed, **{side: future.result() for side, future in running.items()}}
        result["rows"].append(row)
        result["summary"] = summarise(result["rows"])
        log(f"{NAME}: seed {seed}: zero-shot {row['mezo']['zero_shot_accuracy']:.3f}, mezo "
            f"{row['mezo']['test_accuracy']:.3f}, backprop {row['backprop']['test_accuracy']:.3f} at {forwards} "
            f"forward passes" + (f"; mezo {row['mezo_long']['test_accuracy']:.3f} at {long_forwards}"
                                 if "mezo_long" in row else ""))
        write_result(NAME, result, quick)  # after every seed: an interrupted benchmark keeps what finished
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="42,43,44")
    parser.add_argument("--forwards", type=int, default=12, help="forward passes each side may make")
    parser.add_argument("--long-forwards", type=int, default=33, help="mezo's larger budget")
    parser.add_argument("--long-seeds", type=int, default=3, help="seeds (the first ones) mezo also runs long")
    parser.add_argument("--limit-eval", type=int, default=150, help="test examples scored")
    parser.add_argument("--quick", action="store_true", help="one seed, tiny budgets, 64 test examples")
    parser.add_argument("--work", type=Path, default=None, help="where the runs are kept; finished runs are reused")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="tunelab-bench-mezo-"))
    work.mkdir(parents=True, exist_ok=True)
    chosen = [int(seed) for seed in args.seeds.split(",")][:1 if args.quick else None]
    if args.quick:
        run_benchmark(chosen, 6, 9, 64, 1, True, work)
    else:
        run_benchmark(chosen, args.forwards, args.long_forwards, args.limit_eval, args.long_seeds, False, work)
