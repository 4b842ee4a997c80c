"""Predictions from a trained sentence model: label probabilities (classification) or a value (regression) for raw
texts, or rows of a multi-field template."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from tunelab.batching import padded_batches
from tunelab.tasks.classification import LabelMap
from tunelab.tasks.inputs import input_encoder
from tunelab.tasks.regression import TargetScale


class Predictor:
    def __init__(self, model: nn.Module, tokenizer: PreTrainedTokenizerBase, targets: LabelMap | TargetScale,
                 max_length: int, batch_size: int = 64):
        """`targets` says what the outputs mean: the labels' logits, or a standardised regression target;
        `batch_size`: examples per forward (the run's evaluation batch)."""
        self.model, self.tokenizer, self.targets, self.batch_size = model, tokenizer, targets, batch_size
        self.encoder = input_encoder(model, tokenizer, max_length)

    @torch.no_grad()
    def logits(self, texts: list[str] | pd.DataFrame, batch_size: int | None = None) -> np.ndarray:
        """(N, C) logits, in batches of `batch_size` (default: the predictor's) formed in order of length, so that
        little of each is padding."""
        rows = texts if isinstance(texts, pd.DataFrame) else pd.DataFrame({"text": list(texts)})
        self.model.eval()
        logits = np.zeros((len(rows), self.targets.width), dtype=np.float32)
        for chosen, batch in padded_batches(self.model, self.tokenizer, self.encoder(rows),
                                           batch_size or self.batch_size):
            output = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            logits[chosen] = output.logits.float().cpu().numpy()
        return logits

    def score(self, examples: pd.DataFrame, source: str) -> dict:
        """The task's metrics on labelled `examples` (`source` says where they came from, for errors)."""
        return self.targets.metrics(self.logits(examples), examples["label"].tolist(), source)

    def predict(self, texts: list[str]) -> list[tuple[str, dict[str, float]]]:
        """For each text: the predicted label and the probability of every label."""
        return labelled(self.targets, self.logits(texts))

    def predict_values(self, texts: list[str]) -> list[float]:
        """Regression: the predicted value of each text, in the data's units."""
        return [float(value) for value in self.targets.decode(self.logits(texts))]


def labelled(labels: LabelMap, logits: np.ndarray) -> list[tuple[str, dict[str, float]]]:
    """(N, C) logits -> for each row, the predicted label and the probability of every label."""
    probabilities = torch.softmax(torch.from_numpy(logits), dim=-1).numpy()
    return [(labels.labels[int(row.argmax())], dict(zip(labels.labels, map(float, row), strict=True)))
            for row in probabilities]
