"""Strategy names -> strategies, built from the catalog: a strategy's module is imported the first time it is asked
for, so the CLI, the trainer and `compare` load only what they use."""

from __future__ import annotations

from tunelab.errors import TunelabError
from tunelab.strategies.base import Strategy, parse_options
from tunelab.strategies.catalog import PROMPT_BASED, entry

__all__ = ["check_prompt_settings", "get_strategy", "parse_options"]


def get_strategy(name: str) -> Strategy:
    return entry(name).load()


def check_prompt_settings(strategy: Strategy, prompt_settings_given: bool) -> None:
    """Templates and label words mean something only to the prompt-based strategies; say so rather than ignore."""
    if prompt_settings_given and not strategy.prompt_based:
        raise TunelabError(f"template and label-word settings apply to the prompt-based strategies "
                           f"({', '.join(PROMPT_BASED)}); {strategy.name} trains a new head instead")
