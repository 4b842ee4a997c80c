"""Black-box tuning on SmolLM2, movie-snippets, K shots per label, several seeds:
- bbt in this process within 4,000 calls, against the default template's zero-shot accuracy on the same test split
  and against soft-template (P-tuning) and pet, trained with gradients on the same shots;
- search through an OpenAI-compatible endpoint (`tunelab serve --base smollm2`, spoken to as any OpenAI server:
  completions with echo and logprobs) within 1,000 calls, from a weak template ("{text} Overall, it was a {label}").
The bars: bbt's mean test accuracy >= zero-shot + 2 points and within 3 points of soft-template; search >= its
template's zero-shot + 10 points. Every run is an ordinary `tunelab blackbox` (or `train`) command; a run already in
the working folder is reused, so a long benchmark can be resumed (`--work DIR`). With `--concurrent`, the seeds' bbt
searches run at once, one thread each (the JSON says so, and a call's time is then a call's time under that load).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from common import OFFLINE_ENV, TUNELAB, failure, log, machine, read_json, run_timed, write_result
from serving import start

NAME = "blackbox"
WEAK_TEMPLATE = "{text} Overall, it was a {label}"


def blackbox_run(folder: Path, name: str, options: list[str]) -> dict[str, Any]:
    run = folder / name
    if not (run / "metrics.json").exists():
        run_timed([TUNELAB, "blackbox", *options, "--output", str(run)], folder / f"{name}.log")
    metrics, resources = read_json(run / "metrics.json"), read_json(run / "resources.json")
    return {"test_accuracy": metrics["test"]["accuracy"], "zero_shot_accuracy": metrics["zero_shot"]["accuracy"],
            "validation_accuracy": metrics["validation_accuracy"], "calls": resources["search"]["calls"],
            "tokens_in": resources["search"]["tokens_in"], "search_wall_s": resources["search"]["wall_s"],
            "curve": metrics["curve"]}


def run_concurrently(folder: Path, commands: dict[str, list[str]]) -> None:
    """Each `tunelab blackbox` command whose run is not in `folder` yet, all at once, one thread each; raise with a
    log's tail if one fails."""
    single_thread = {**OFFLINE_ENV, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    started = []
    for name, options in commands.items():
        if not (folder / name / "metrics.json").exists():
            command = [TUNELAB, "blackbox", *options, "--output", str(folder / name)]
            with (folder / f"{name}.log").open("w", encoding="utf-8") as out:
                process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=single_thread)
            started.append((command, process, folder / f"{name}.log"))
    for command, process, log_file in started:
        if process.wait() != 0:
            raise RuntimeError(failure(command, process.returncode, log_file))


def trained_run(folder: Path, strategy: str, seed: int, shots: int, limit_eval: int | None) -> float:
    """Test accuracy of `strategy` trained with gradients on the same shots (same seed, so the same examples)."""
    run = folder / f"{strategy}-{seed}"
    if not (run / "metrics.json").exists():
        run_timed([TUNELAB, "train", "--model", "smollm2", "--data", "movie-snippets", "--strategy", strategy,
                   "--shots", str(shots), "--seed", str(seed), "--output", str(run), "--quiet",
                   *(["--limit-eval", str(limit_eval)] if limit_eval else [])], folder / f"{strategy}-{seed}.log")
    return read_json(run / "metrics.json")["test"]["accuracy"]


def bbt_summary(rows: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, bool]]:
    """The seeds' rows, their means and medians (pet's over the seeds that have it), and the two bbt bars judged on
    the means."""
    keys = ("test_accuracy", "zero_shot_accuracy", "soft_template_accuracy", "pet_accuracy", "validation_accuracy",
            "calls", "search_wall_s")
    measured = {key: [row[key] for row in rows if key in row] for key in keys}
    mean = {key: statistics.fmean(values) for key, values in measured.items() if values}
    median = {key: statistics.median(values) for key, values in measured.items() if values}
    return {"rows": rows, "mean": mean, "median": median}, {
        "bbt_at_least_zero_shot_plus_2": mean["test_accuracy"] >= mean["zero_shot_accuracy"] + 0.02,
        "bbt_within_3_of_soft_template": mean["test_accuracy"] >= mean["soft_template_accuracy"] - 0.03}


def write_bbt(result: dict[str, Any], rows: list[dict[str, Any]], seeds: int, quick: bool) -> None:
    """The result as it stands, so that a long benchmark stopped early keeps the seeds it measured."""
    result["bbt"], bars = bbt_summary(rows)
    result["bars"].update(bars)
    result["bbt"]["seeds_done"] = f"{len(rows)} of {seeds}"
    write_result(NAME, result, quick)


def run_benchmark(seeds: list[int], quick: bool, work: Path, parts: list[str], concurrent: bool) -> dict[str, Any]:
    shots = 16
    bbt_budget, search_budget = (42, 20) if quick else (4000, 1000)
    limit_eval = 50 if quick else None
    common = ["--model", "smollm2", "--data", "movie-snippets", "--shots", str(shots),
              *(["--limit-eval", str(limit_eval)] if limit_eval else [])]
    result: dict[str, Any] = {"benchmark": NAME, "quick": quick, "machine": machine(),
                              "settings": {"model": "smollm2", "data": "movie-snippets", "shots": shots,
                                           "bbt_budget": bbt_budget, "search_budget": search_budget,
                                           "weak_template": WEAK_TEMPLATE, "seeds": seeds, "limit_eval": limit_eval,
                                           "concurrent_bbt_searches": len(seeds) if concurrent else 1},
                              "bars": {}}
    if "bbt" in parts:
        bbt = {f"bbt-{seed}": ["--method", "bbt", *common, "--budget", str(bbt_budget), "--seed", str(seed)]
               for seed in seeds}
        if concurrent:
            run_concurrently(work, bbt)
        rows = []
        for seed in seeds:  # the bars' sides first, seed by seed; pet, a reference beside them, after all seeds
            row = blackbox_run(work, f"bbt-{seed}", bbt[f"bbt-{seed}"])
            row["soft_template_accuracy"] = trained_run(work, "soft-template", seed, shots, limit_eval)
            rows.append({"seed": seed, **row})
            log(f"{NAME}: bbt seed {seed}: {row['test_accuracy']:.3f} (zero-shot {row['zero_shot_accuracy']:.3f}, "
                f"soft-template {row['soft_template_accuracy']:.3f}) in {row['calls']} calls")
            write_bbt(result, rows, len(seeds), quick)
        for row in rows:
            row["pet_accuracy"] = trained_run(work, "pet", row["seed"], shots, limit_eval)
            write_bbt(result, rows, len(seeds), quick)
    if "search" in parts:
        server, url, _ = start([TUNELAB, "serve", "--base", "smollm2", "--max-inputs", "128"], work / "serve.log")
        try:
            rows = [{"seed": seed, **blackbox_run(work, f"search-{seed}", [
                "--method", "search", *common, "--endpoint", url, "--api", "openai", "--budget", str(search_budget),
                "--template", WEAK_TEMPLATE, "--seed", str(seed)])} for seed in seeds]
        finally:
            server.terminate()
            server.wait(timeout=60)
        gains = [row["test_accuracy"] - row["zero_shot_accuracy"] for row in rows]
        result["search"] = {"rows": rows, "mean_gain": statistics.fmean(gains),
                            "mean_test_accuracy": statistics.fmean(row["test_accuracy"] for row in rows)}
        result["bars"]["search_gains_10_points"] = statistics.fmean(gains) >= 0.10
    result["pass"] = all(result["bars"].values())
    log(f"{NAME}: {result['bars']}")
    log(f"{NAME}: wrote {write_result(NAME, result, quick)}")
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="42,43,44")
    parser.add_argument("--parts", default="bbt,search")
    parser.add_argument("--quick", action="store_true", help="one seed, tiny budgets, 50 test examples")
    parser.add_argument("--work", type=Path, default=None, help="where the runs are kept; finished runs are reused")
    parser.add_argument("--concurrent", action="store_true", help="the seeds' bbt searches at once, one thread each")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="tunelab-bench-blackbox-"))
    work.mkdir(parents=True, exist_ok=True)
    chosen = [int(seed) for seed in args.seeds.split(",")][:1 if args.quick else None]
    run_benchmark(chosen, args.quick, work, args.parts.split(","), args.concurrent)
