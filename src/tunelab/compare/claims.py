"""The article's qualitative claims, checked against a measured grid: each holds, does not hold, or sits within
the noise of the measurement; none is assumed.

The noise of a difference between two strategies' mean accuracies is two standard errors when both have three or
more seeds, else `NOISE_FLOOR`: the seed-to-seed spread measured on this task (about 2 points on 1,500 test
examples; issue 3's benchmark).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

NOISE_FLOOR = 0.02
WITHIN_OF_FULL = 0.02  # "within 1-2% of full": up to 2 accuracy points below it


@dataclass(frozen=True)
class Claim:
    statement: str
    train_size: int
    verdict: str  # holds | does not hold | within noise | not measured
    evidence: str


def _row(summary: pd.DataFrame, strategy: str, train_size: int) -> pd.Series | None:
    rows = summary[(summary["strategy"] == strategy) & (summary["train_size"] == train_size)]
    return None if rows.empty else rows.iloc[0]


def _unpaired(statement: str, train_size: int, a: pd.Series | None, b: pd.Series | None, first: str,
              second: str) -> Claim | None:
    """Why two rows cannot test a claim (one is missing, or they ran on different models), or None."""
    if a is None or b is None:
        return Claim(statement, train_size, "not measured", f"{first} or {second} missing at n={train_size}")
    if a["model"] != b["model"]:
        return Claim(statement, train_size, "not measured",
                     f"{first} ran on {a['model']} and {second} on {b['model']}: not the same model")
    return None


def noise(a: pd.Series, b: pd.Series) -> float:
    """Two standard errors of the difference of two means over seeds, or the floor with fewer than 3 seeds."""
    if min(a["seeds"], b["seeds"]) < 3:
        return NOISE_FLOOR
    return 2 * math.sqrt(a["accuracy_std"] ** 2 / a["seeds"] + b["accuracy_std"] ** 2 / b["seeds"])


def noise_note(seeds: int, test_examples: int | None) -> str:
    """How far to trust the verdicts of a grid with this many seeds and test examples (None: the whole test split)."""
    tested = f" on {test_examples:,} test examples" if test_examples else ""
    if seeds >= 3:
        return f"{seeds} seeds{tested}: a difference counts when it exceeds two standard errors over seeds."
    return (f"{seeds} seed{'s' if seeds > 1 else ''}{tested}: a difference counts when it exceeds "
            f"{NOISE_FLOOR * 100:.0f} accuracy points, the seed-to-seed spread of 2,000 training examples on the "
            f"whole test split; smaller training and test sets spread more, so treat close verdicts as noise and "
            f"run --seeds 3 to measure the spread.")


def _verdict(margin: float, tolerance: float) -> str:
    """`margin` > 0 supports the claim."""
    return "holds" if margin > tolerance else "does not hold" if margin < -tolerance else "within noise"


def _accuracy(row: pd.Series) -> str:
    spread = "" if math.isnan(row["accuracy_std"]) else f" ± {row['accuracy_std']:.3f}"
    return f"{row['strategy']} {row['accuracy_mean']:.3f}{spread}"


def beats(summary: pd.DataFrame, statement: str, winner: str, loser: str, train_size: int) -> Claim:
    """`winner` is more accurate than `loser` at this training-set size, beyond the noise."""
    a, b = _row(summary, winner, train_size), _row(summary, loser, train_size)
    unpaired = _unpaired(statement, train_size, a, b, winner, loser)
    if unpaired is not None:
        return unpaired
    difference, tolerance = a["accuracy_mean"] - b["accuracy_mean"], noise(a, b)
    return Claim(statement, train_size, _verdict(difference, tolerance),
                 f"{_accuracy(a)} vs {_accuracy(b)}: {difference:+.3f} (noise ±{tolerance:.3f})")


def close_to_full(summary: pd.DataFrame, strategy: str, train_size: int) -> Claim:
    """`strategy` is at most WITHIN_OF_FULL below full fine-tuning, with a small share of trainable weights.

    A bound, not a difference: it holds when the measured gap is within the bound, and fails only when the gap
    exceeds the bound by more than the noise."""
    statement = f"{strategy} comes within 1-2% of full with a small share of parameters"
    a, full = _row(summary, strategy, train_size), _row(summary, "full", train_size)
    unpaired = _unpaired(statement, train_size, a, full, strategy, "full")
    if unpaired is not None:
        return unpaired
    gap, tolerance = full["accuracy_mean"] - a["accuracy_mean"], noise(a, full)
    verdict = "holds" if gap <= WITHIN_OF_FULL else _verdict(WITHIN_OF_FULL - gap, tolerance)
    return Claim(statement, train_size, verdict,
                 f"{_accuracy(a)} vs {_accuracy(full)}: {-gap:+.3f} with {a['trainable_share']:.2%} of the "
                 f"weights trained (noise ±{tolerance:.3f})")


def check_claims(summary: pd.DataFrame) -> list[Claim]:
    """The article's claims that a classification grid can test, at the sizes where they are made."""
    sizes = sorted(int(size) for size in summary["train_size"].unique())
    if not sizes:
        return []
    smallest, largest = sizes[0], sizes[-1]
    claims = [beats(summary, "fine-tuning beats feature extraction", "full", "linear-probe", size)
              for size in sizes]
    claims += [close_to_full(summary, strategy, largest) for strategy in ("lora", "adapter")]
    challengers = summary[(summary["train_size"] == smallest)
                          & summary["family"].isin(["parameter-efficient", "prompt-based"])]["strategy"]
    claims += [beats(summary, "in the smallest data regime, parameter-efficient and prompt-based strategies hold "
                              "up better than full", strategy, "full", smallest) for strategy in challengers]
    return claims
