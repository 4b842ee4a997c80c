"""A user's own small, imbalanced data: `full` and `lora` with their defaults on MiniLM, against the majority baseline.

Two check sets built from the embedded data, each a file to train on (tunelab splits off its own validation and
test rows: 75% of it trains) and a held-out file at the same balance to score:
- `tweets`: tweets3 at a 64/27/9 negative/neutral/positive balance, 600 rows (450 train) and 600 held out;
- `long`: movie snippets of one polarity joined into ~150-word texts (about 590 per polarity exist), at 75/25
  negative/positive, 500 rows (375 train) and 280 held out.
The bars: both strategies beat the majority baseline's macro-F1 by at least 0.10 on both sets (median of 3 seeds),
and a run starved on purpose (`--epochs 0.2`) ends with the "did not learn" warning.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pandas as pd
from common import TUNELAB, log, machine, main_for, median, read_json, run_timed, working_folder, write_result

NAME = "small_data"
SEEDS = [42, 43, 44]
STRATEGIES = ["full", "lora"]
SETS = {"tweets": {"balance": {"negative": 0.64, "neutral": 0.27, "positive": 0.09}, "rows": 600, "held_out": 600},
        "long": {"balance": {"negative": 0.75, "positive": 0.25}, "rows": 500, "held_out": 280}}
LONG_WORDS = 150


def _draw(frame: pd.DataFrame, shares: dict[str, float], rows: int, seed: int) -> pd.DataFrame:
    parts = [frame[frame["label"] == label].sample(round(rows * share), random_state=seed)
             for label, share in shares.items()]
    drawn = pd.concat(parts).sample(frac=1.0, random_state=seed)[["text", "label"]]
    return drawn.assign(text=drawn["text"].str.split().str.join(" "))  # a stray carriage return would split a row


def _joined(snippets: pd.DataFrame, seed: int) -> pd.DataFrame:
    """Snippets of one polarity, shuffled, joined until a text reaches LONG_WORDS words: each is used once."""
    rng = random.Random(seed)
    rows = []
    for label, group in snippets.groupby("label"):
        texts = group["text"].tolist()
        rng.shuffle(texts)
        current: list[str] = []
        for text in texts:
            current.append(text)
            if sum(len(part.split()) for part in current) >= LONG_WORDS:
                rows.append({"text": " ".join(current), "label": label})
                current = []
    return pd.DataFrame(rows)


def build_sets(folder: Path) -> dict[str, dict[str, Path]]:
    from tunelab.assets.datasets import CATALOG

    sources = {"tweets": CATALOG["tweets3"].load(), "long": _joined(CATALOG["movie-snippets"].load(), 0)}
    sets = {}
    for name, frame in sources.items():
        shape = SETS[name]
        held_out = _draw(frame, shape["balance"], shape["held_out"], seed=1)
        train = _draw(frame.drop(held_out.index), shape["balance"], shape["rows"], seed=0)
        sets[name] = {"train": folder / f"{name}-train.csv", "held_out": folder / f"{name}-held-out.csv"}
        train.to_csv(sets[name]["train"], index=False)
        held_out.to_csv(sets[name]["held_out"], index=False)
    return sets


def majority_macro_f1(train: Path, held_out: Path) -> dict[str, Any]:
    majority = pd.read_csv(train)["label"].value_counts().idxmax()
    labels = pd.read_csv(held_out)["label"]
    share = float((labels == majority).mean())
    return {"predicts": majority, "accuracy": share, "macro_f1": 2 * share / (1 + share) / labels.nunique()}


def train_and_score(folder: Path, name: str, files: dict[str, Path], strategy: str, seed: int,
                    extra: list[str] = ()) -> dict[str, Any]:
    from tunelab.api import evaluate

    run = folder / f"{name}-{strategy}-{seed}{'-starved' if extra else ''}"
    timed = run_timed([TUNELAB, "train", "--model", "minilm", "--data", str(files["train"]), "--strategy", strategy,
                       "--seed", str(seed), "--output", str(run), "--quiet", *extra], run.with_suffix(".log"))
    scored = evaluate(run, str(files["held_out"]))
    metrics = read_json(run / "metrics.json")
    log_text = run.with_suffix(".log").read_text(encoding="utf-8")
    return {"held_out": {key: scored[key] for key in ("accuracy", "macro_f1")},
            "learned": metrics["learned"], "training": metrics["training"],
            "warned": "the run did not learn" in " ".join(log_text.split()),
            "data_warnings": read_json(run / "data_checks.json")["warnings"], **timed.summary()}


def run_benchmark(repeats: int = 3, quick: bool = False, keep: bool = False) -> dict[str, Any]:
    seeds = SEEDS[:1] if quick else SEEDS[:repeats]
    with working_folder(NAME, keep) as folder:
        sets = build_sets(folder)
        rows, baselines = [], {name: majority_macro_f1(files["train"], files["held_out"]) for name, files in
                               sets.items()}
        for name, files in sets.items():
            for seed in seeds:
                for strategy in STRATEGIES:
                    row = {"set": name, "strategy": strategy, "seed": seed,
                           **train_and_score(folder, name, files, strategy, seed)}
                    log(f"{NAME}: {name} {strategy} seed {seed}: macro-F1 {row['held_out']['macro_f1']:.3f} "
                        f"(majority {baselines[name]['macro_f1']:.3f})")
                    rows.append(row)
        starved = train_and_score(folder, "tweets", sets["tweets"], "lora", SEEDS[0], ["--epochs", "0.2"])
    summary = {f"{name}_{strategy}_macro_f1": median([row["held_out"]["macro_f1"] for row in rows
                                                      if row["set"] == name and row["strategy"] == strategy])
               for name in sets for strategy in STRATEGIES}
    margins = {key: value - baselines[key.split("_")[0]]["macro_f1"] for key, value in summary.items()}
    bars = {**{f"{key}_beats_majority_by_0.10": margin >= 0.10 for key, margin in margins.items()},
            "starved_run_warns": starved["warned"] and starved["learned"] is False}
    result = {"benchmark": NAME, "quick": quick, "seeds": seeds, "machine": machine(), "baselines": baselines,
              "summary": summary, "margins_over_majority": margins, "starved": starved, "bars": bars,
              "pass": all(bars.values()), "rows": rows}
    log(f"{NAME}: wrote {write_result(NAME, result, quick)}")
    return result


if __name__ == "__main__":
    main_for(run_benchmark, __doc__.splitlines()[0], 3, "one seed")
