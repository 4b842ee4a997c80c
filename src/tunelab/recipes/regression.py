"""Regression: a sentence recipe whose head has one output, trained on standardised targets and read back in the
data's units."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.console import RenderableType
from rich.markup import escape
from rich.table import Table

from tunelab.config import RunConfig
from tunelab.data.splits import Splits
from tunelab.errors import TunelabError
from tunelab.predict import Predictor
from tunelab.recipes.base import Prepared, refuse_context
from tunelab.recipes.classification import SentenceRecipe
from tunelab.tasks.regression import TargetScale, numeric_targets


class RegressionRecipe(SentenceRecipe):
    task = "regression"
    best_metric = "pearson"  # the validation correlation, which ignores the scale
    quality_names = ("Pearson", "Spearman")

    def check_training(self, config: RunConfig) -> None:
        training = config.training
        if training.class_weights != "none" or training.select_on not in ("auto", "loss"):
            raise TunelabError("regression keeps the epoch with the best validation Pearson correlation (or "
                               "--select-on loss); --class-weights and the other --select-on choices are for "
                               "classification")

    def selected_on(self, config: RunConfig, splits: Splits) -> str:
        return "loss" if config.training.select_on == "loss" else self.best_metric

    def baseline(self, prepared: Prepared) -> dict[str, Any]:
        """Always the training split's mean target: its test errors."""
        mean = float(prepared.splits.train["label"].mean())
        errors = prepared.splits.test["label"].to_numpy(dtype=float) - mean
        return {"predicts": round(mean, 4), "mae": float(np.abs(errors).mean()),
                "rmse": float(np.sqrt((errors ** 2).mean()))}

    def did_not_learn(self, test: dict[str, Any], baseline: dict[str, Any]) -> str | None:
        if test["rmse"] < baseline["rmse"]:
            return None
        return (f"the run did not learn: its test RMSE {test['rmse']:.3f} is no better than always predicting the "
                f"training mean {baseline['predicts']:g} (RMSE {baseline['rmse']:.3f}). Try more optimizer steps "
                f"(--epochs, or --set training.min_steps=N), a higher learning rate (--lr), or another strategy")

    def read_examples(self, config: RunConfig, targets: Any, source: str, text_column: str,
                      label_column: str) -> pd.DataFrame:
        return numeric_targets(super().read_examples(config, targets, source, text_column, label_column), source)

    def targets_of(self, examples: pd.DataFrame, splits: Splits, config: RunConfig) -> TargetScale:
        """The training targets' mean and spread, which the head learns to predict in units of."""
        return TargetScale.fit(splits.train["label"])

    def load_targets(self, folder: Path) -> TargetScale:
        return TargetScale.load(folder)

    def predict(self, predictor: Predictor, inputs: list[str], context: str | None) -> list[dict[str, Any]]:
        refuse_context(context, self.task)
        return [{"text": text, "value": value}
                for text, value in zip(inputs, predictor.predict_values(inputs), strict=True)]

    def predictions_view(self, records: list[dict[str, Any]], title: str) -> RenderableType:
        table = Table(title=escape(title))
        table.add_column("text")
        table.add_column("value", justify="right")
        for record in records:
            table.add_row(escape(record["text"]), f"[bold]{record['value']:+.3f}[/bold]")
        return table

    def quality_columns(self, metrics: dict[str, Any]) -> tuple[str, str]:
        return f"Pearson {metrics['test']['pearson']:.3f}", f"Spearman {metrics['test']['spearman']:.3f}"

    def evaluation_view(self, metrics: dict[str, Any], title: str) -> RenderableType:
        """The scores on one line, in the data's units."""
        return (f"{escape(title)}: Pearson {metrics['pearson']:.3f} · Spearman {metrics['spearman']:.3f} · "
                f"MAE {metrics['mae']:.3f} · RMSE {metrics['rmse']:.3f} · {metrics['examples']} examples")


RECIPE = RegressionRecipe()
