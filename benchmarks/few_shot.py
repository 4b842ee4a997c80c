"""Few-shot prompt-based fine-tuning against head-based fine-tuning of the same model with the same examples and
budget (SmolLM2, movie-snippets, K examples per label, several seeds), with zero-shot as the starting point.

Modes (each a plain `tunelab train` with the mode's strategy and its defaults; `name@lr` overrides the learning
rate, for sweeps):
  zero-shot      the template and label words, nothing trained (deterministic: run once)
  pet            prompt-based fine-tuning of every weight (PET / LM-BFF)
  head           full fine-tuning with a new linear head on the last token (standard fine-tuning)
  soft-template  P-tuning: the template's words become trained vectors, the LM frozen
  pet-lora       prompt-based, a LoRA delta trains
  head-lora      a LoRA delta and a new head

Issue 4's bars: zero-shot >= 0.80 with the default template; pet beats head by >= 5 points (mean over seeds);
soft-template against the manual template (pet) is reported. Each mode's training time per example (seconds per
example per epoch) and inference latency (ms per example at batch size 1) are recorded.
"""

from __future__ import annotations

import statistics
from typing import Any

from common import TUNELAB, log, machine, main_for, read_json, run_timed, working_folder, write_result

NAME = "few_shot"
SEEDS = [42, 43, 44, 45, 46]
MODES = {
    "zero-shot": ["--strategy", "zero-shot"],
    "pet": ["--strategy", "pet"],
    "head": ["--strategy", "full"],
    "soft-template": ["--strategy", "soft-template"],
    "pet-lora": ["--strategy", "pet", "--tune", "lora"],
    "head-lora": ["--strategy", "lora"],
}


def _spread(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values), "median": statistics.median(values)}


def run_mode(mode: str, seed: int, settings: dict[str, Any], folder) -> dict[str, Any]:
    name, _, learning_rate = mode.partition("@")
    options = [*MODES[name], "--seed", str(seed), "--model", settings["model"], "--data", settings["data"],
               "--max-length", str(settings["max_length"]), "--batch-size", str(settings["batch_size"])]
    if name != "zero-shot":
        options += ["--shots", str(settings["shots"]), "--epochs", str(settings["epochs"])]
    if settings.get("limit_eval"):
        options += ["--limit-eval", str(settings["limit_eval"])]
    if learning_rate:
        options += ["--lr", learning_rate]
    run_dir = folder / f"{mode}-{seed}"
    timed = run_timed([TUNELAB, "train", *options, "--output", str(run_dir), "--quiet"], folder / f"{mode}-{seed}.log")
    metrics, resources = read_json(run_dir / "metrics.json"), read_json(run_dir / "resources.json")
    seen = metrics["train_examples"] * (settings["epochs"] if name != "zero-shot" else 0)
    return {"accuracy": metrics["test"]["accuracy"], "test_examples": metrics["test"]["examples"],
            "train_s": resources["train_s"], "train_s_per_example": resources["train_s"] / seen if seen else 0.0,
            "latency_ms_per_example": resources["latency_ms_per_example"],
            "trainable_share": resources["trainable_share"], "delta_bytes": resources["delta_bytes"],
            "peak_memory_bytes": resources["peak_memory_bytes"], "wall_s": timed.wall_s}


def run_benchmark(repeats: int = 5, quick: bool = False, keep: bool = False, modes: str = ",".join(MODES),
                  shots: int = 32, epochs: float = 10, limit_eval: int | None = None,
                  seeds: str = ",".join(map(str, SEEDS))) -> dict[str, Any]:
    """`repeats` is the number of seeds (each seed draws its own K examples per label)."""
    seeds_used = [int(seed) for seed in seeds.split(",")][:repeats]
    settings = {"model": "smollm2", "data": "movie-snippets", "shots": shots, "epochs": epochs, "batch_size": 8,
                "max_length": 64, "limit_eval": 100 if quick else limit_eval}
    if quick:
        settings.update(shots=4, epochs=1)
    chosen = modes.split(",")
    rows: dict[str, list[dict[str, Any]]] = {mode: [] for mode in chosen}
    with working_folder(NAME, keep) as folder:
        for seed in seeds_used:
            for mode in chosen:
                if mode == "zero-shot" and rows[mode]:
                    continue  # nothing trains and nothing is sampled: every seed gives the same answer
                row = {"seed": seed, **run_mode(mode, seed, settings, folder)}
                rows[mode].append(row)
                log(f"{NAME}: seed {seed} {mode}: accuracy {row['accuracy']:.4f}, train {row['train_s']:.1f} s")
    summary = {mode: {"accuracy": _spread([row["accuracy"] for row in mode_rows]),
                      "train_s_per_example": statistics.median(row["train_s_per_example"] for row in mode_rows),
                      "latency_ms_per_example": statistics.median(row["latency_ms_per_example"] for row in mode_rows),
                      "trainable_share": mode_rows[0]["trainable_share"], "delta_bytes": mode_rows[0]["delta_bytes"]}
               for mode, mode_rows in rows.items()}
    by_name = {mode.partition("@")[0]: summary[mode]["accuracy"]["mean"] for mode in reversed(chosen)}
    checks = {}
    if "zero-shot" in by_name:
        checks["zero_shot_ge_0.80"] = by_name["zero-shot"] >= 0.80
    if {"pet", "head"} <= by_name.keys():
        checks["pet_beats_head_by_5pts"] = by_name["pet"] - by_name["head"] >= 0.05
    result = {"benchmark": NAME, "quick": quick, "seeds": seeds_used, "settings": settings,
              "machine": machine(), "summary": summary, "bars": checks, "pass": all(checks.values()), "rows": rows}
    path = write_result(NAME if modes == ",".join(MODES) else f"{NAME}.{modes.replace(',', '+')}", result, quick)
    log(f"{NAME}: wrote {path}")
    return result


if __name__ == "__main__":
    main_for(run_benchmark, __doc__.splitlines()[0], 5, "4 shots, 1 epoch, 100 test examples", extra={
        "--modes": {"default": ",".join(MODES), "help": "comma-separated modes; name@lr overrides the learning rate"},
        "--shots": {"type": int, "default": 32}, "--epochs": {"type": float, "default": 10},
        "--limit-eval": {"type": int, "default": None, "help": "score only the first N test examples"},
        "--seeds": {"default": ",".join(map(str, SEEDS)), "help": "comma-separated training seeds"}})
