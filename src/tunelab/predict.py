"""Predictions from a trained classifier: label probabilities for raw texts."""

from __future__ import annotations

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from tunelab.tasks.classification import LabelMap, SequenceClassifier


class Predictor:
    def __init__(self, model: SequenceClassifier, tokenizer: PreTrainedTokenizerBase, label_map: LabelMap,
                 max_length: int):
        self.model, self.tokenizer, self.label_map, self.max_length = model, tokenizer, label_map, max_length

    @torch.no_grad()
    def logits(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """(N, C) logits, computed in batches padded to their own longest text."""
        self.model.eval()
        device = next(self.model.parameters()).device
        chunks = []
        for start in range(0, len(texts), batch_size):
            batch = self.tokenizer(texts[start:start + batch_size], truncation=True, max_length=self.max_length,
                                   padding=True, return_tensors="pt").to(device)
            output = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            chunks.append(output.logits.float().cpu().numpy())
        return np.concatenate(chunks) if chunks else np.zeros((0, len(self.label_map.labels)))

    def predict(self, texts: list[str]) -> list[tuple[str, dict[str, float]]]:
        """For each text: the predicted label and the probability of every label."""
        probabilities = torch.softmax(torch.from_numpy(self.logits(texts)), dim=-1).numpy()
        labels = self.label_map.labels
        return [(labels[int(row.argmax())], dict(zip(labels, map(float, row), strict=True))) for row in probabilities]
