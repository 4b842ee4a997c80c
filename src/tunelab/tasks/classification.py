"""Sequence classification: label map, model (backbone + pooling + linear head), loss and metrics."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import accuracy_score, classification_report, f1_score
from torch import nn
from transformers import EvalPrediction
from transformers.modeling_outputs import SequenceClassifierOutput

from tunelab.assets.models import Pooling
from tunelab.errors import TunelabError
from tunelab.modeling import head_dropout, pool, weighted_cross_entropy

LABELS_FILE = "labels.json"  # the label order, saved with the run


class LabelMap:
    """Label names <-> ids, in a fixed order saved with the run."""

    def __init__(self, labels: Sequence[str]):
        self.labels = list(labels)
        self.ids = {label: index for index, label in enumerate(self.labels)}

    @classmethod
    def from_values(cls, values: Sequence[str], preferred: Sequence[str] = ()) -> LabelMap:
        present = set(values)
        if len(present) < 2:
            raise TunelabError(f"classification needs at least 2 labels, the data has {len(present)}")
        ordered = [label for label in preferred if label in present]
        return cls(ordered + sorted(present - set(ordered)))

    @property
    def width(self) -> int:
        """Outputs of the head: one logit per label."""
        return len(self.labels)

    def metrics(self, outputs: np.ndarray, values: Sequence[str], source: str) -> dict:
        return classification_metrics(outputs, np.array(self.encode(values, source)), self)

    def validation_metrics(self, prediction: EvalPrediction) -> dict[str, float]:
        """What the Trainer computes each epoch; `training.select_on` picks the one that keeps an epoch."""
        predictions, truth = prediction.predictions.argmax(axis=-1), prediction.label_ids
        return {"accuracy": float((predictions == truth).mean()),
                "macro_f1": float(f1_score(truth, predictions, labels=list(range(self.width)), average="macro",
                                           zero_division=0))}

    def balanced_weights(self, values: Sequence[str]) -> torch.Tensor:
        """n / (classes x count) per label, from the training split's labels (sklearn's "balanced"); a label absent
        from it counts once."""
        counts = np.bincount(self.encode(values, "training split"), minlength=self.width).clip(min=1)
        return torch.tensor(len(values) / (self.width * counts), dtype=torch.float32)

    def save(self, folder: Path) -> None:
        (folder / LABELS_FILE).write_text(json.dumps(self.labels, indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, folder: Path) -> LabelMap:
        return cls(json.loads((folder / LABELS_FILE).read_text(encoding="utf-8")))

    def encode(self, values: Sequence[str], source: str) -> list[int]:
        unknown = sorted(set(values) - self.ids.keys())
        if unknown:
            raise TunelabError(f"{source} has label(s) {', '.join(map(repr, unknown[:5]))} that the model never "
                               f"saw in training; it knows {', '.join(self.labels)}")
        return [self.ids[value] for value in values]


class SequenceClassifier(nn.Module):
    """backbone -> pooled sentence vector -> dropout -> linear head.

    The head lives outside the backbone so that adapter libraries only ever wrap the backbone, and
    `features=` lets a frozen-encoder strategy train the head on pre-computed sentence vectors.
    """

    class_weights: torch.Tensor | None = None  # per-label loss weights (`--class-weights balanced`), not saved

    def __init__(self, backbone: nn.Module, num_labels: int, pooling: Pooling):
        super().__init__()
        self.backbone = backbone
        self.pooling = pooling
        self.head = nn.Sequential(nn.Dropout(head_dropout(backbone.config)),
                                  nn.Linear(backbone.config.hidden_size, num_labels))

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        # Prompt methods prepend virtual tokens: pool over the text's own positions, which come last.
        return pool(hidden[:, -input_ids.size(1):], attention_mask, self.pooling)  # (B, H)

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                features: torch.Tensor | None = None, labels: torch.Tensor | None = None) -> SequenceClassifierOutput:
        if features is None:
            features = self.embed(input_ids, attention_mask)
        return head_output(self.head, features, labels, self.class_weights)


class FeatureClassifier(nn.Module):
    """The classifier's head alone, trained on pre-computed sentence vectors (frozen-encoder strategies).

    It shares the head module with its SequenceClassifier, so training it trains the classifier.
    """

    def __init__(self, head: nn.Module, class_weights: torch.Tensor | None = None):
        super().__init__()
        self.head, self.class_weights = head, class_weights

    def forward(self, features: torch.Tensor, labels: torch.Tensor | None = None) -> SequenceClassifierOutput:
        return head_output(self.head, features, labels, self.class_weights)


def head_output(head: nn.Module, features: torch.Tensor, labels: torch.Tensor | None,
                class_weights: torch.Tensor | None = None) -> SequenceClassifierOutput:
    """(B, H) sentence vectors -> (B, C) logits, and the loss when labels are given: cross-entropy for label ids
    (each label's loss weighted when `class_weights` are given), mean squared error for float targets (regression:
    one output), as transformers infers its `problem_type`."""
    logits = head(features)
    if labels is None:
        loss = None
    elif labels.is_floating_point():
        loss = nn.functional.mse_loss(logits.squeeze(-1), labels.to(logits.dtype))
    else:
        loss = weighted_cross_entropy(logits, labels, class_weights)
    return SequenceClassifierOutput(loss=loss, logits=logits)



def classification_metrics(logits: np.ndarray, label_ids: np.ndarray, label_map: LabelMap) -> dict:
    """Accuracy, macro-F1 and a per-class precision/recall/F1/support report."""
    predictions = logits.argmax(axis=-1)
    ids = list(range(len(label_map.labels)))
    report = classification_report(label_ids, predictions, labels=ids, target_names=label_map.labels,
                                   output_dict=True, zero_division=0)
    return {
        "accuracy": float(accuracy_score(label_ids, predictions)),
        "macro_f1": float(f1_score(label_ids, predictions, labels=ids, average="macro", zero_division=0)),
        "per_class": {name: {k: float(v) for k, v in report[name].items()} for name in label_map.labels},
        "predicted": {name: int((predictions == index).sum()) for index, name in enumerate(label_map.labels)},
        "examples": int(len(label_ids)),
    }
