"""What every strategy provides, and the parameter bookkeeping they share.

A strategy changes the model in `apply` and writes what it trained with `save_delta`; the training code
never special-cases a strategy. Strategies that only unfreeze part of the model own parameter-name
prefixes, from which freezing and saving derive (`freeze_all_but`, `save_tensors`, `load_tensors`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

import torch
from pydantic import BaseModel, ConfigDict, ValidationError
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import TrainerCallback

from tunelab.errors import TunelabError
from tunelab.strategies.catalog import StrategyEntry, entry

APPLIED_MARKER = "_tunelab_strategy"
DELTA_FILE = "delta.safetensors"


class NoOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Strategy(Protocol):
    name: str
    Options: type[BaseModel]

    @property
    def entry(self) -> StrategyEntry:
        """The strategy's catalog row: summary, family, prompt-based, defaults and the rest."""

    @property
    def prompt_based(self) -> bool:
        """Classifies through a template and label words (PromptClassifier), not a new head."""

    def training_defaults(self, options: BaseModel) -> tuple[float, float]:
        """(learning rate, epochs) to train with when the config sets neither."""

    def apply(self, model: nn.Module, options: BaseModel) -> None:
        """Change `model` in place for this strategy (freeze, inject modules). Applying twice is an error."""

    def trains_on_features(self, options: BaseModel) -> bool:
        """True when the backbone is frozen and the head can train on pre-computed sentence vectors."""

    def save_delta(self, model: nn.Module, options: BaseModel, folder: Path) -> list[Path]:
        """Write what this strategy trained (never the frozen base) into `folder`; returns the files."""

    def load_delta(self, model: nn.Module, options: BaseModel, folder: Path) -> None:
        """Load a saved delta onto a fresh base model that this strategy was just applied to."""

    def merge(self, model: nn.Module) -> None:
        """Fold the trained delta into `model.backbone`'s own weights, leaving a plain transformers model that
        computes the same; raises TunelabError when the delta is extra computation that cannot be folded."""

    def callbacks(self, model: nn.Module, options: BaseModel) -> list[TrainerCallback]:
        """Trainer callbacks the strategy needs while `model` trains (AdaLoRA's rank allocation); usually none."""


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
    """The tensors a strategy trained: what a run directory stores instead of a full model copy.

    A tensor tied to one already taken (an LM head that shares the embedding matrix) is stored once, under its
    first name; loading it restores both, since they share memory."""
    tensors, seen = {}, set()
    for name, tensor in model.state_dict().items():
        where = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if name.startswith(prefixes) and (where not in seen or not tensor.numel()):
            tensors[name] = tensor.detach().contiguous()
            seen.add(where)
    return tensors


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    parameters = list(model.parameters())
    return sum(p.numel() for p in parameters if p.requires_grad), sum(p.numel() for p in parameters)


def save_tensors(model: nn.Module, prefixes: tuple[str, ...], path: Path, strategy: str) -> Path:
    """The tensors under `prefixes`, written atomically as safetensors."""
    partial = path.with_name(path.name + ".partial")
    save_file(delta_state_dict(model, prefixes), str(partial), metadata={"format": "pt", "strategy": strategy})
    os.replace(partial, path)
    return path


def load_tensors(model: nn.Module, prefixes: tuple[str, ...], path: Path) -> None:
    """Load tensors saved by `save_tensors`, refusing a file that does not fit the model exactly."""
    tensors = load_file(str(path))
    mismatched = set(tensors) ^ set(delta_state_dict(model, prefixes))
    if mismatched:
        raise TunelabError(f"{path} does not fit this model (e.g. {sorted(mismatched)[0]}); "
                           f"was the run written for another base model or tunelab version?")
    model.load_state_dict(tensors, strict=False)


def _option_name(location: tuple) -> str:
    """The option a pydantic error is about: field names and list indices, not the union member it tried."""
    return ".".join(str(part) for part in location if isinstance(part, int) or str(part).isidentifier())


def parse_options(strategy: Strategy, options: dict) -> BaseModel:
    try:
        return strategy.Options.model_validate(options)
    except ValidationError as error:
        errors = error.errors()
        where = _option_name(errors[0]["loc"])
        if errors[0]["type"] == "extra_forbidden":
            known = ", ".join(strategy.Options.model_fields) or "none"
            raise TunelabError(f"strategy {strategy.name} has no option '{where}'; its options: {known}") from None
        # A union (e.g. a list or 'all-linear') fails once per member: say every way the value could have fit.
        reasons = " or ".join(dict.fromkeys(e["msg"].removeprefix("Value error, ") for e in errors
                                            if _option_name(e["loc"]) == where))
        subject = f"option '{where}'" if where else "options"  # model-level checks span several options
        raise TunelabError(f"strategy {strategy.name}: {subject}: {reasons}") from None


class Catalogued:
    """A strategy whose facts are its catalog row; training defaults are the row's unless the options change them."""

    name: str

    @property
    def entry(self) -> StrategyEntry:
        return entry(self.name)

    @property
    def prompt_based(self) -> bool:
        return self.entry.prompt_based

    def training_defaults(self, options: BaseModel) -> tuple[float, float]:
        return self.entry.learning_rate, self.entry.epochs

    def callbacks(self, model: nn.Module, options: BaseModel) -> list[TrainerCallback]:
        return []


class PromptBased:
    """What the prompt-based strategies share: they classify through a template and label words
    (`PromptClassifier`), never on cached sentence vectors, and have no generation form."""

    def trains_on_features(self, options: BaseModel) -> bool:
        return False


class PartialTraining(Catalogued):
    """Shared by strategies that train an existing part of the model, named by parameter prefixes."""

    name: str

    def trainable_prefixes(self, options: BaseModel) -> tuple[str, ...]:
        raise NotImplementedError

    def apply(self, model: nn.Module, options: BaseModel) -> None:
        mark_applied(model, self.name)
        freeze_all_but(model, self.trainable_prefixes(options))

    def save_delta(self, model: nn.Module, options: BaseModel, folder: Path) -> list[Path]:
        return [save_tensors(model, self.trainable_prefixes(options), folder / DELTA_FILE, self.name)]

    def load_delta(self, model: nn.Module, options: BaseModel, folder: Path) -> None:
        load_tensors(model, self.trainable_prefixes(options), folder / DELTA_FILE)

    def merge(self, model: nn.Module) -> None:
        """Nothing to fold: the trained weights are the backbone's own (or the backbone never changed)."""
