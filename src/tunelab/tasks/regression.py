"""Sentence regression: a numeric target per text, read by the same backbone + pooling + head as classification,
with one output and mean squared error.

Targets are standardised with the training split's mean and standard deviation before training (the run keeps
both in `targets.json`): the new head then starts at the mean, its outputs live on the scale of every other
strategy's default learning rate whatever the units of the data, and predictions are mapped back to those units.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import pearsonr, spearmanr
from transformers import EvalPrediction

from tunelab.errors import TunelabError

TARGETS_FILE = "targets.json"


def numeric_targets(examples: pd.DataFrame, source: str) -> pd.DataFrame:
    """`examples` with its `label` column as floats; a value that is not a number names its row."""
    values = pd.to_numeric(examples["label"], errors="coerce")
    bad = values.isna() | ~np.isfinite(values.fillna(0.0))
    if bad.any():
        row = int(bad.to_numpy().argmax())
        raise TunelabError(f"{source}: row {row + 1} has target {examples['label'].iloc[row]!r}, not a number; "
                           f"regression needs a numeric label column (fix or remove the {int(bad.sum())} such rows)")
    return examples.assign(label=values.astype(float))


@dataclass(frozen=True)
class TargetScale:
    """How targets map to what the head learns: (value - mean) / std, and back."""

    mean: float
    std: float
    width = 1  # outputs of the head

    @classmethod
    def fit(cls, values: Sequence[float]) -> TargetScale:
        values = np.asarray(values, dtype=np.float64)
        std = float(values.std())
        if not math.isfinite(std) or std == 0.0:
            raise TunelabError(f"regression needs targets that vary; every training target is {values[0]:g}")
        return cls(float(values.mean()), std)

    def encode(self, values: Sequence[float], source: str) -> list[float]:
        return [(float(value) - self.mean) / self.std for value in values]

    def decode(self, outputs: np.ndarray) -> np.ndarray:
        """(N, 1) head outputs -> (N,) predictions in the data's units."""
        return outputs[:, 0] * self.std + self.mean

    def metrics(self, outputs: np.ndarray, values: Sequence[float], source: str) -> dict:
        return regression_metrics(self.decode(outputs), np.asarray(values, dtype=np.float64))

    def validation_metrics(self, prediction: EvalPrediction) -> dict[str, float]:
        """What the Trainer computes each epoch (on the standardised scale, which leaves a correlation unchanged)."""
        return {"pearson": _correlation(pearsonr, prediction.predictions[:, 0], prediction.label_ids)}

    def save(self, folder: Path) -> None:
        (folder / TARGETS_FILE).write_text(json.dumps(asdict(self), indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, folder: Path) -> TargetScale:
        return cls(**json.loads((folder / TARGETS_FILE).read_text(encoding="utf-8")))


def _correlation(measure: Callable, first: np.ndarray, second: np.ndarray) -> float:
    """A constant series has no correlation; scipy would warn and return nan, here it is 0."""
    return float(measure(first, second).statistic) if first.std() > 0 and second.std() > 0 else 0.0


def regression_metrics(predictions: np.ndarray, targets: np.ndarray) -> dict:
    """Pearson and Spearman correlation, mean absolute error and root mean squared error."""
    errors = predictions - targets
    return {
        "pearson": _correlation(pearsonr, predictions, targets),
        "spearman": _correlation(spearmanr, predictions, targets),
        "mae": float(np.abs(errors).mean()),
        "rmse": float(np.sqrt((errors ** 2).mean())),
        "examples": int(len(targets)),
    }

