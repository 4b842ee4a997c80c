"""Zero-shot classification: the pre-trained language model is asked through the template, and the label whose
words it finds likeliest wins (GPT-3's in-context setting with no examples; PET's starting point). Nothing
trains, so the run holds no delta: the template and label words in its config are the whole classifier."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel
from torch import nn

from tunelab.errors import TunelabError
from tunelab.strategies.base import Catalogued, NoOptions, PromptBased, mark_applied


class ZeroShot(PromptBased, Catalogued):
    name = "zero-shot"
    Options = NoOptions

    def apply(self, model: nn.Module, options: BaseModel) -> None:
        mark_applied(model, self.name)
        if model.head.vectors.numel():
            raise TunelabError("zero-shot cannot use {soft} tokens: they start untrained; train them with pet or "
                               "soft-template, or write the template in words")
        model.requires_grad_(False)

    def save_delta(self, model: nn.Module, options: BaseModel, folder: Path) -> list[Path]:
        return []

    def load_delta(self, model: nn.Module, options: BaseModel, folder: Path) -> None:
        """Nothing was trained: the base model is the classifier."""

    def merge(self, model: nn.Module) -> None:
        """Nothing to fold."""
