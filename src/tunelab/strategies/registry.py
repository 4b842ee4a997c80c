"""Strategy names -> strategies. The CLI, the trainer and later `compare` look strategies up only here."""

from __future__ import annotations

from tunelab.errors import TunelabError
from tunelab.strategies.adapter import BottleneckAdapters
from tunelab.strategies.base import Strategy, parse_options
from tunelab.strategies.full import FullFineTuning
from tunelab.strategies.ia3 import Ia3
from tunelab.strategies.linear_probe import LinearProbe
from tunelab.strategies.lora import Lora
from tunelab.strategies.p_tuning import PTuning
from tunelab.strategies.pet import PatternExploitingTraining
from tunelab.strategies.prefix import PrefixTuning
from tunelab.strategies.prompt_tuning import PromptTuning
from tunelab.strategies.soft_template import SoftTemplate
from tunelab.strategies.zero_shot import ZeroShot

__all__ = ["STRATEGIES", "check_prompt_settings", "get_strategy", "parse_options"]

STRATEGIES: dict[str, Strategy] = {
    strategy.name: strategy for strategy in [FullFineTuning(), LinearProbe(), Lora(), Ia3(), BottleneckAdapters(),
                                             PrefixTuning(), PromptTuning(), PTuning(), ZeroShot(),
                                             PatternExploitingTraining(), SoftTemplate()]
}


def get_strategy(name: str) -> Strategy:
    if name not in STRATEGIES:
        raise TunelabError(f"unknown strategy '{name}'; choose one of {', '.join(STRATEGIES)}")
    return STRATEGIES[name]


def check_prompt_settings(strategy: Strategy, prompt_settings_given: bool) -> None:
    """Templates and label words mean something only to the prompt-based strategies; say so rather than ignore."""
    if prompt_settings_given and not strategy.prompt_based:
        prompt_based = [name for name, candidate in STRATEGIES.items() if candidate.prompt_based]
        raise TunelabError(f"template and label-word settings apply to the prompt-based strategies "
                           f"({', '.join(prompt_based)}); {strategy.name} trains a new head instead")
