"""What every strategy provides, and the parameter bookkeeping they share.

A strategy owns parameter-name prefixes: freezing, counting and saving the trained delta all derive
from them, so the training code never special-cases a strategy.
"""

from __future__ import annotations

from typing import Protocol

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from tunelab.errors import TunelabError

APPLIED_MARKER = "_tunelab_strategy"


class NoOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Strategy(Protocol):
    name: str
    summary: str
    Options: type[BaseModel]
    default_learning_rate: float
    default_epochs: float

    def apply(self, model: nn.Module, options: BaseModel) -> None:
        """Change `model` in place for this strategy (freeze, inject modules). Applying twice is an error."""

    def trainable_prefixes(self, options: BaseModel) -> tuple[str, ...]:
        """Parameter-name prefixes this strategy trains and saves as its delta."""

    def trains_on_features(self, options: BaseModel) -> bool:
        """True when the backbone is frozen and the head can train on pre-computed sentence vectors."""


def mark_applied(model: nn.Module, name: str) -> None:
    applied = getattr(model, APPLIED_MARKER, None)
    if applied is not None:
        raise TunelabError(f"strategy '{applied}' is already applied to this model; build a fresh model for '{name}'")
    setattr(model, APPLIED_MARKER, name)


def freeze_all_but(model: nn.Module, prefixes: tuple[str, ...]) -> None:
    matched = False
    for name, parameter in model.named_parameters():
        parameter.requires_grad = name.startswith(prefixes)
        matched |= parameter.requires_grad
    if not matched:
        raise TunelabError(f"no parameter matches {prefixes}: this model cannot take the strategy")


def delta_state_dict(model: nn.Module, prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """The tensors a strategy trained: what a run directory stores instead of a full model copy."""
    return {name: tensor.detach().contiguous() for name, tensor in model.state_dict().items()
            if name.startswith(prefixes)}


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    parameters = list(model.parameters())
    return sum(p.numel() for p in parameters if p.requires_grad), sum(p.numel() for p in parameters)
