"""Strategy names -> strategies. The CLI, the trainer and later `compare` look strategies up only here."""

from __future__ import annotations

from pydantic import BaseModel, ValidationError

from tunelab.errors import TunelabError
from tunelab.strategies.adapter import BottleneckAdapters
from tunelab.strategies.base import Strategy
from tunelab.strategies.full import FullFineTuning
from tunelab.strategies.ia3 import Ia3
from tunelab.strategies.linear_probe import LinearProbe
from tunelab.strategies.lora import Lora
from tunelab.strategies.p_tuning import PTuning
from tunelab.strategies.prefix import PrefixTuning
from tunelab.strategies.prompt_tuning import PromptTuning

STRATEGIES: dict[str, Strategy] = {
    strategy.name: strategy for strategy in [FullFineTuning(), LinearProbe(), Lora(), Ia3(), BottleneckAdapters(),
                                                    PrefixTuning(), PromptTuning(), PTuning()]
}


def get_strategy(name: str) -> Strategy:
    if name not in STRATEGIES:
        raise TunelabError(f"unknown strategy '{name}'; choose one of {', '.join(STRATEGIES)}")
    return STRATEGIES[name]


def check_serves_task(strategy: Strategy, task: str) -> None:
    """Fail before any data or weights load when the strategy cannot adapt a model for `task`."""
    if task == "generation" and not strategy.serves_generation:
        usable = [name for name, candidate in STRATEGIES.items() if candidate.serves_generation]
        raise TunelabError(f"strategy {strategy.name} does not apply to generation; use one of {', '.join(usable)}")


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
