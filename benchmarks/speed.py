"""Where training time goes: padding, and bf16 against fp32, per strategy, measured in one run.

- Padding: the share of padded positions in movie-snippets training batches (2,000 texts, 32 per batch, at most 128
  tokens) in random order and in `LengthBucketSampler`'s order, over 5 drawn epochs (median).
- Step time: `strategy_step.py` in a fresh process per strategy and setting: fp32 in random order, fp32 in
  length-grouped order, bf16 autocast in random order; ratios are to fp32 random order in the same repeat. On a
  CPU without native bf16 (no avx512_bf16 or AMX) bf16 is emulated and many times slower: there it is timed on
  `full` and `lora` only, over 3 steps, in the first repeat.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from common import BENCHMARKS, log, machine, main_for, median, read_json, run_timed, working_folder, write_result

NAME = "speed"
STRATEGIES = ["full", "linear-probe", "lora", "ia3", "adapter", "prefix", "prompt-tuning", "p-tuning"]
SETTINGS = {"fp32": [], "fp32-grouped": ["--grouped"], "bf16": ["--precision", "bf16"]}
BATCH = 32
EPOCHS_DRAWN = 5


def padding_shares() -> dict[str, float]:
    import numpy as np
    import torch

    from tunelab.batching import LengthBucketSampler, padding_share
    from tunelab.config import build_config
    from tunelab.recipes.classification import RECIPE
    from tunelab.strategies.registry import configure

    config = build_config({"data": {"limit_train": 2000}})
    prepared = RECIPE.prepare(config)
    tokenizer = RECIPE.build(config, configure(config.strategy), prepared.targets)[1]
    lengths = [len(ids) for ids in tokenizer(prepared.splits.train["text"].tolist(), truncation=True,
                                             max_length=128)["input_ids"]]
    torch.manual_seed(0)
    sampler = LengthBucketSampler(lengths, BATCH)
    grouped = [padding_share(lengths, list(sampler), BATCH) for _ in range(EPOCHS_DRAWN)]
    shuffled = [padding_share(lengths, torch.randperm(len(lengths)).tolist(), BATCH) for _ in range(EPOCHS_DRAWN)]
    return {"random": median(shuffled), "grouped": median(grouped), "mean_tokens": float(np.mean(lengths))}


def measure(strategy: str, setting: str, folder: Path, repeat: int, steps: int) -> dict[str, Any]:
    result = folder / f"{strategy}-{setting}-{repeat}.json"
    command = [sys.executable, str(BENCHMARKS / "strategy_step.py"), "--strategy", strategy, "--steps", str(steps),
               *SETTINGS[setting], "--result", str(result)]
    run_timed(command, folder / f"{strategy}-{setting}-{repeat}.log")
    return read_json(result)


def run_benchmark(repeats: int = 3, quick: bool = False, keep: bool = False) -> dict[str, Any]:
    from tunelab.precision import cpu_has_bf16

    native = cpu_has_bf16()
    steps = {"fp32": 3 if quick else 12, "fp32-grouped": 3 if quick else 12,
             "bf16": 3 if quick or not native else 12}
    bf16_strategies = STRATEGIES if native else ["full", "lora"]
    rows = []
    with working_folder(NAME, keep) as folder:
        for repeat in range(repeats):
            row = {strategy: {setting: measure(strategy, setting, folder, repeat, steps[setting])
                              for setting in SETTINGS
                              if setting != "bf16" or (strategy in bf16_strategies and (native or repeat == 0))}
                   for strategy in STRATEGIES}
            rows.append(row)
            log(f"{NAME}: repeat {repeat + 1}/{repeats}: " + ", ".join(
                f"{s} " + "/".join(f"{measured['step_s_mean']:.2f}" for measured in row[s].values())
                for s in STRATEGIES))

    def ratio(strategy: str, setting: str) -> float | None:
        measured = [row[strategy] for row in rows if setting in row[strategy]]
        if not measured:
            return None
        return median([one[setting]["step_s_mean"] / one["fp32"]["step_s_mean"] for one in measured])

    summary = {strategy: {"fp32_step_s": median([row[strategy]["fp32"]["step_s_mean"] for row in rows]),
                          "grouped_vs_random": ratio(strategy, "fp32-grouped"), "bf16_vs_fp32": ratio(strategy, "bf16")}
               for strategy in STRATEGIES}
    result = {"benchmark": NAME, "quick": quick, "repeats": repeats, "steps": steps, "batch_size": BATCH,
              "cpu_has_native_bf16": native, "machine": machine(), "padding_share": padding_shares(),
              "summary": summary, "rows": rows}
    log(f"{NAME}: wrote {write_result(NAME, result, quick)}")
    return result


if __name__ == "__main__":
    main_for(run_benchmark, __doc__.splitlines()[0], 3, "3 timed steps per setting, for a smoke test")
