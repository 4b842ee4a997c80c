"""Linear probe: training the head on cached sentence vectors against running the frozen encoder every step.

The point of `cache_features` (linear-probe's default) is that each text goes through the encoder once instead of
once per epoch; with the strategy's 30 epochs it should be at least 10x faster at the same accuracy. The cached
run's train_s includes the feature extraction of all three splits, so the comparison is end to end.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from common import alternating, log, machine, main_for, median, tunelab_train, working_folder, write_result

NAME = "probe_cache"
SETTINGS = {"limit_train": 2000, "limit_eval": None, "epochs": None}  # epochs, lr, batch: the strategy's defaults
QUICK = {"limit_train": 128, "limit_eval": 200, "epochs": 2}
MIN_SPEEDUP = 10.0
VARIANTS = {"cached": [], "uncached": ["--option", "cache_features=false"]}


def run_variant(folder: Path, variant: str, repeat: int, settings: dict[str, Any]) -> dict[str, Any]:
    options = ["--model", "minilm", "--data", "movie-snippets", "--strategy", "linear-probe",
               "--limit-train", str(settings["limit_train"]), *VARIANTS[variant]]
    if settings["limit_eval"] is not None:
        options += ["--limit-eval", str(settings["limit_eval"])]
    if settings["epochs"] is not None:
        options += ["--epochs", str(settings["epochs"])]
    name = f"{variant}-{repeat}"
    timed, run = tunelab_train(folder / name, options, folder / f"{name}.log")
    return {**run, **timed.summary()}


def run_benchmark(repeats: int = 1, quick: bool = False, keep: bool = False) -> dict[str, Any]:
    settings = QUICK if quick else SETTINGS
    host = machine()  # before the runs, so that its load average is the machine's, not ours
    rows = []
    with working_folder(NAME, keep) as folder:
        def run_side(variant: str, repeat: int) -> dict[str, Any]:
            log(f"{NAME}: repeat {repeat + 1}/{repeats}: {variant} ...")
            return run_variant(folder, variant, repeat, settings)

        for row in alternating(repeats, ("cached", "uncached"), run_side):
            row["speedup"] = row["uncached"]["train_s"] / row["cached"]["train_s"]
            rows.append(row)
            repeat = row["repeat"]
            log(f"{NAME}: repeat {repeat + 1}/{repeats}: train_s cached {row['cached']['train_s']:.1f} "
                f"(of which features {row['cached']['feature_extraction_s']:.1f}) uncached "
                f"{row['uncached']['train_s']:.1f}; speed-up {row['speedup']:.1f}x; accuracy cached "
                f"{row['cached']['test_accuracy']:.4f} uncached {row['uncached']['test_accuracy']:.4f}")

    def of(variant: str, key: str) -> float:
        return median([row[variant][key] for row in rows])

    summary = {"cached_train_s": of("cached", "train_s"), "cached_feature_extraction_s":
               of("cached", "feature_extraction_s"), "uncached_train_s": of("uncached", "train_s"),
               "speedup": median([row["speedup"] for row in rows]),
               "cached_accuracy": of("cached", "test_accuracy"), "uncached_accuracy": of("uncached", "test_accuracy"),
               "cached_wall_s": of("cached", "wall_s"), "uncached_wall_s": of("uncached", "wall_s"),
               "cached_peak_memory_bytes": of("cached", "peak_memory_bytes"),
               "uncached_peak_memory_bytes": of("uncached", "peak_memory_bytes")}
    summary["pass"] = bool(summary["speedup"] >= MIN_SPEEDUP)
    result = {"benchmark": NAME, "quick": quick, "repeats": repeats,
              "settings": {**settings, "strategy": "linear-probe", "model": "minilm", "data": "movie-snippets",
                           "lr_batch_seed": "strategy and config defaults (see `tunelab strategies`)"},
              "machine": host, "summary": summary, "rows": rows}
    path = write_result(NAME, result, quick)
    log(f"{NAME}: wrote {path}")
    return result


if __name__ == "__main__":
    main_for(run_benchmark, __doc__.splitlines()[0], 1, "tiny smoke test: 128 train examples, 2 epochs")
