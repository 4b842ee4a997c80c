"""Strategy names -> strategies, built from the catalog: a strategy's module is imported the first time it is asked
for, so the CLI, the trainer and `compare` load only what they use. `configure` resolves a run's strategy once:
its typed options and the learning rate and epochs it trains with."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

from pydantic import BaseModel
from torch import nn
from transformers import TrainerCallback

from tunelab.config import StrategyConfig, TrainingConfig
from tunelab.errors import TunelabError
from tunelab.strategies.base import Strategy, parse_options
from tunelab.strategies.catalog import PROMPT_BASED, entry

__all__ = ["ConfiguredStrategy", "check_prompt_settings", "configure", "get_strategy", "parse_options"]


def get_strategy(name: str) -> Strategy:
    return entry(name).load()


@dataclass(frozen=True)
class ConfiguredStrategy:
    """A strategy with a run's options parsed and its training schedule decided: the config's learning rate and
    epochs, else the strategy's defaults for these options."""

    strategy: Strategy
    options: BaseModel
    learning_rate: float
    epochs: float

    @property
    def name(self) -> str:
        return self.strategy.name

    @property
    def trains_on_features(self) -> bool:
        return self.strategy.trains_on_features(self.options)

    def budgeted(self, examples: int, batch_size: int, min_steps: int) -> ConfiguredStrategy:
        """The epochs raised until training on `examples` makes at least `min_steps` optimizer steps, in whole
        epochs; a strategy that trains nothing stays as it is. `train` applies it to default epochs, `compare` to
        every cell."""
        if not self.epochs:
            return self
        steps_per_epoch = math.ceil(examples / batch_size)
        return replace(self, epochs=float(max(self.epochs, math.ceil(min_steps / steps_per_epoch))))

    def apply(self, model: nn.Module) -> None:
        self.strategy.apply(model, self.options)

    def save_delta(self, model: nn.Module, folder: Path) -> list[Path]:
        return self.strategy.save_delta(model, self.options, folder)

    def load_delta(self, model: nn.Module, folder: Path) -> None:
        self.strategy.load_delta(model, self.options, folder)

    def callbacks(self, model: nn.Module) -> list[TrainerCallback]:
        return self.strategy.callbacks(model, self.options)


def configure(config: StrategyConfig, training: TrainingConfig | None = None) -> ConfiguredStrategy:
    """The strategy of a config, resolved: a bad option is a one-line error here, before anything loads."""
    strategy = get_strategy(config.name)
    options = parse_options(strategy, config.options)
    training = training or TrainingConfig()
    learning_rate, epochs = strategy.training_defaults(options)
    return ConfiguredStrategy(strategy, options, training.learning_rate or learning_rate, training.epochs or epochs)


def check_prompt_settings(strategy: Strategy, prompt_settings_given: bool) -> None:
    """Templates and label words mean something only to the prompt-based strategies; say so rather than ignore."""
    if prompt_settings_given and not strategy.prompt_based:
        raise TunelabError(f"template and label-word settings apply to the prompt-based strategies "
                           f"({', '.join(PROMPT_BASED)}); {strategy.name} trains a new head instead")
