"""Every strategy with tunelab's own defaults on MiniLM / movie-snippets (2,000 training examples), over several
seeds: test accuracy next to full fine-tuning's in the same seed, trainable share, and training time.

The bars are issue 3's: lora >= 99% of full's accuracy with < 1% of the parameters trainable; adapter (houlsby)
>= 98% with 0.5-8% trainable; prefix, prompt-tuning and p-tuning >= the majority-class baseline + 10 points;
and no strategy takes longer to train than full does.

`--precision fp32` (the default) writes `strategy_accuracy.json`; `--precision bf16` writes
`strategy_accuracy_bf16.json` with, per strategy, the accuracy difference to the fp32 result's run of the same seed
(the same rows and seed, so the difference is the precision's plus the noise of another arithmetic): this is what
`precision: auto` is decided on.
"""

from __future__ import annotations

from typing import Any

from common import RESULTS, log, machine, main_for, median, read_json, tunelab_train, working_folder, write_result

NAME = "strategy_accuracy"
STRATEGIES = ["full", "linear-probe", "lora", "ia3", "adapter", "prefix", "prompt-tuning", "p-tuning"]
SEEDS = [42, 43, 44, 45, 46]
PROMPT_METHODS = ["prefix", "prompt-tuning", "p-tuning"]


def majority_accuracy(limit_eval: int | None) -> float:
    """The accuracy of always answering the test split's most frequent label."""
    from tunelab.config import build_config
    from tunelab.recipes.classification import RECIPE

    splits = RECIPE.prepare(build_config({"data": {"limit_eval": limit_eval}})).splits
    return float(splits.test["label"].value_counts(normalize=True).max())


def bars(summary: dict[str, Any], majority: float) -> dict[str, bool]:
    lora, adapter = summary["lora"], summary["adapter"]
    return {
        "lora_accuracy_vs_full_ge_0.99": lora["accuracy_vs_full"] >= 0.99,
        "lora_trainable_lt_1pct": lora["trainable_share"] < 0.01,
        "adapter_accuracy_vs_full_ge_0.98": adapter["accuracy_vs_full"] >= 0.98,
        "adapter_trainable_0.5_to_8pct": 0.005 <= adapter["trainable_share"] <= 0.08,
        **{f"{name}_beats_majority_by_10pts": summary[name]["accuracy"] >= majority + 0.10 for name in PROMPT_METHODS},
        "no_strategy_slower_than_full": all(summary[name]["train_s_vs_full"] <= 1.0 for name in STRATEGIES),
    }


def against_fp32(rows: list[dict[str, Any]], quick: bool) -> dict[str, Any]:
    """Per strategy, bf16's test accuracy minus fp32's on the same seed (from the fp32 result), and their median."""
    fp32 = {row["seed"]: row for row in read_json(RESULTS / f"{NAME}{'.quick' if quick else ''}.json")["rows"]}
    pairs = [(row, fp32[row["seed"]]) for row in rows if row["seed"] in fp32]
    if not pairs:
        return {}
    compared = {}
    for strategy in STRATEGIES:
        differences = [row[strategy]["test_accuracy"] - other[strategy]["test_accuracy"] for row, other in pairs]
        compared[strategy] = {"differences": differences, "median_difference": median(differences),
                              "fp32_accuracy": median([other[strategy]["test_accuracy"] for _, other in pairs])}
    return compared


def run_benchmark(repeats: int = 3, quick: bool = False, keep: bool = False, precision: str = "fp32") -> dict[str, Any]:
    """`repeats` is the number of seeds."""
    settings: dict[str, Any] = {"limit_train": 128, "limit_eval": 200, "epochs": 1} if quick else {"limit_train": 2000}
    settings |= {"precision": precision, "group_by_length": "off"}  # random order: the precision is all that differs
    host = machine()
    majority = majority_accuracy(settings.get("limit_eval"))
    log(f"{NAME}: majority-class accuracy {majority:.4f}")
    rows: list[dict[str, Any]] = []
    with working_folder(NAME, keep) as folder:
        for seed in SEEDS[:repeats]:
            row: dict[str, Any] = {"seed": seed}
            for strategy in STRATEGIES:
                options = ["--strategy", strategy, "--seed", str(seed), "--quiet",
                           *(item for key, value in settings.items() for item in (f"--{key.replace('_', '-')}",
                                                                                   str(value)))]
                name = f"{strategy}-{seed}"
                timed, run = tunelab_train(folder / name, options, folder / f"{name}.log")
                resources = read_json(folder / name / "resources.json")
                row[strategy] = {**run, "trainable_share": resources["trainable_share"],
                                 "delta_bytes": resources["delta_bytes"], "wall_s": timed.wall_s}
                log(f"{NAME}: seed {seed} {strategy}: accuracy {run['test_accuracy']:.4f}, "
                    f"train {run['train_s']:.1f} s")
            rows.append(row)
    summary: dict[str, Any] = {}
    for strategy in STRATEGIES:
        summary[strategy] = {
            "accuracy": median([row[strategy]["test_accuracy"] for row in rows]),
            "accuracy_vs_full": median([row[strategy]["test_accuracy"] / row["full"]["test_accuracy"] for row in rows]),
            "train_s": median([row[strategy]["train_s"] for row in rows]),
            "train_s_vs_full": median([row[strategy]["train_s"] / row["full"]["train_s"] for row in rows]),
            "trainable_share": rows[0][strategy]["trainable_share"],
            "delta_bytes": rows[0][strategy]["delta_bytes"],
        }
    checks = bars(summary, majority)
    result = {"benchmark": NAME, "quick": quick, "seeds": SEEDS[:repeats], "settings": settings,
              "majority_accuracy": majority, "machine": host, "summary": summary, "bars": checks,
              "pass": all(checks.values()), "rows": rows}
    if precision != "fp32":
        result["vs_fp32"] = against_fp32(rows, quick)
    path = write_result(NAME if precision == "fp32" else f"{NAME}_{precision}", result, quick)
    log(f"{NAME}: wrote {path}")
    return result


if __name__ == "__main__":
    main_for(run_benchmark, __doc__.splitlines()[0], 3, "128 train examples, 1 epoch, 200 test examples",
             {"--precision": {"choices": ["fp32", "bf16"], "default": "fp32"}})
