"""Prompt-based fine-tuning (PET, Schick & Schütze 2021; LM-BFF, Gao et al. 2021): the classifier is the
language model filling the template's label slot, and training lowers the cross-entropy over the label words'
scores. No head is added, so a few examples go a long way. What trains is a weight strategy's choice (`tune`):
every weight (the papers' setting), a LoRA delta, IA3 or bottleneck adapters; soft tokens in the template train
with it."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from tunelab.errors import TunelabError
from tunelab.strategies.base import Catalogued, PromptBased, Strategy, parse_options
from tunelab.strategies.catalog import CATALOG, PET_TUNABLE

TUNABLE: dict[str, Strategy] = {name: CATALOG[name].load() for name in PET_TUNABLE}
# Learning rates for the few-shot regime, with the pet row's epochs. full's 1e-5 (LM-BFF's) beat 4e-5, and lora's
# 1e-3 was tried, on SmolLM2 with 32 examples per label (benchmarks/results/few_shot_lr_sweep.json); the other tuned
# strategies keep their own learning rates, not swept for this regime.
FEW_SHOT_LEARNING_RATES = {"full": 1e-5, "lora": 1e-3}


class PetOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tune: Literal[PET_TUNABLE] = Field("full", description="what trains: every weight, or a lora/ia3/adapter delta")
    tune_options: dict[str, Any] = Field(default_factory=dict, description="options of the tuned strategy, e.g. "
                                                                           "{r: 16} for lora")

    @model_validator(mode="after")
    def _tuned_options_fit(self) -> PetOptions:
        parse_options(TUNABLE[self.tune], self.tune_options)  # a one-line TunelabError naming the option
        return self


class PatternExploitingTraining(PromptBased, Catalogued):
    name = "pet"
    Options = PetOptions

    def _tuned(self, options: PetOptions) -> tuple[Strategy, BaseModel]:
        strategy = TUNABLE[options.tune]
        return strategy, parse_options(strategy, options.tune_options)

    def training_defaults(self, options: PetOptions) -> tuple[float, float]:
        return FEW_SHOT_LEARNING_RATES.get(options.tune, CATALOG[options.tune].learning_rate), self.entry.epochs

    def apply(self, model: nn.Module, options: PetOptions) -> None:
        strategy, tuned = self._tuned(options)
        strategy.apply(model, tuned)

    def save_delta(self, model: nn.Module, options: PetOptions, folder: Path) -> list[Path]:
        strategy, tuned = self._tuned(options)
        return strategy.save_delta(model, tuned, folder)

    def load_delta(self, model: nn.Module, options: PetOptions, folder: Path) -> None:
        strategy, tuned = self._tuned(options)
        strategy.load_delta(model, tuned, folder)

    def merge(self, model: nn.Module) -> None:
        raise TunelabError("pet runs are not merged: the classifier is the template and label words as much as the "
                           "weights, and only the run directory holds them")
