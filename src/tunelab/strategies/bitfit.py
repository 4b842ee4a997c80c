"""BitFit (Ben Zaken et al. 2022): only the bias terms of the backbone train, with the task's head; every weight
matrix stays frozen. The delta is those biases and the head, which fold back into the model as they are."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel
from torch import nn

from tunelab.strategies.base import (
    DELTA_FILE,
    NoOptions,
    PartialTraining,
    freeze_all_but,
    load_tensors,
    mark_applied,
    save_tensors,
)


def bias_names(model: nn.Module) -> tuple[str, ...]:
    """The backbone's bias parameters by full name, and the head's parameters: what BitFit trains."""
    return tuple(name for name, _ in model.named_parameters()
                 if name.startswith("head.") or (name.startswith("backbone.") and name.endswith(".bias")))


class BitFit(PartialTraining):
    name = "bitfit"
    Options = NoOptions

    def trains_on_features(self, options: BaseModel) -> bool:
        return False

    def apply(self, model: nn.Module, options: BaseModel) -> None:
        mark_applied(model, self.name)
        freeze_all_but(model, bias_names(model))

    def save_delta(self, model: nn.Module, options: BaseModel, folder: Path) -> list[Path]:
        return [save_tensors(model, bias_names(model), folder / DELTA_FILE, self.name)]

    def load_delta(self, model: nn.Module, options: BaseModel, folder: Path) -> None:
        load_tensors(model, bias_names(model), folder / DELTA_FILE)
