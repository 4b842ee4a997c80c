"""The search space, define-by-run: a trial picks a strategy family, then only that family's structure (LoRA's rank
and which layers, an adapter's placement and size, a prefix's length, ...) and a learning rate around the
strategy's own default. The default space is below; a YAML file narrows it (`families`, fewer choices) or extends
it (any other option of a family's strategy, e.g. `lora: {dropout: [0.0, 0.1]}`).

A parameter is a list of choices, a range `{low, high, log}` (integers when both ends are), or, for `layers`,
`per-layer`: AutoPEFT's on/off switch for each block. `when: {option: value}` samples a parameter only when
another option of the family took that value (a parallel adapter's scaling).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna

from tunelab.config import read_yaml
from tunelab.errors import TunelabError
from tunelab.strategies.catalog import entry
from tunelab.strategies.registry import get_strategy

PER_LAYER = "per-layer"
LEARNING_RATE = "learning_rate"
LR_SPREAD = 5.0  # the default learning-rate range: the strategy's own default divided and multiplied by this
TARGETS_DEFAULT = "default"  # target_modules choice: the strategy's own default targets

DEFAULT_SPACE: dict[str, dict[str, Any]] = {
    "lora": {"r": [1, 2, 4, 8, 16, 32], "alpha": [4, 8, 16, 32, 64], "target_modules": [TARGETS_DEFAULT, "all-linear"],
             "layers": PER_LAYER},
    # every target_r choice is at most every init_r choice: AdaLoRA refuses a budget above its starting rank
    "adalora": {"init_r": [8, 12, 16], "target_r": [2, 4, 8], "target_modules": [TARGETS_DEFAULT, "all-linear"]},
    "ia3": {},
    "adapter": {"variant": ["houlsby", "pfeiffer", "parallel"], "bottleneck_size": [4, 8, 16, 32, 64, 128],
                "scaling": {"choices": [1.0, 4.0], "when": {"variant": "parallel"}}, "layers": PER_LAYER},
    "prefix": {"virtual_tokens": [5, 10, 20, 40], "projection": [False, True]},
    "prompt-tuning": {"virtual_tokens": [5, 10, 20, 40]},
}


@dataclass(frozen=True)
class TrialPlan:
    """What a trial trains: a strategy with options and a learning rate (None: the strategy's default)."""

    strategy: str
    options: dict[str, Any] = field(default_factory=dict)
    learning_rate: float | None = None

    def describe(self) -> str:
        options = " ".join(f"{name}={value}" for name, value in self.options.items())
        rate = f" lr={self.learning_rate:.2g}" if self.learning_rate else ""
        return f"{self.strategy} {options}{rate}".replace("  ", " ").strip()


def _check_parameter(family: str, name: str, spec: Any) -> None:
    where = f"search space: {family}.{name}"
    if name == "layers" and spec == PER_LAYER:
        return
    if isinstance(spec, dict) and "when" in spec:
        spec = {key: value for key, value in spec.items() if key != "when"}
        if set(spec) == {"choices"}:
            spec = spec["choices"]
    if isinstance(spec, list):
        if not spec:
            raise TunelabError(f"{where}: give at least one choice")
        return
    if isinstance(spec, dict) and {"low", "high"} <= set(spec) <= {"low", "high", "log"}:
        if not spec["low"] < spec["high"]:
            raise TunelabError(f"{where}: low must be below high")
        return
    raise TunelabError(f"{where}: expected a list of choices, a range {{low, high, log}}, or per-layer for layers")


def check_space(space: dict[str, dict[str, Any]]) -> None:
    """Every family a strategy the search can train, every parameter an option of it (or the learning rate)."""
    if not space:
        raise TunelabError("search space: no strategy family left to search")
    for family, parameters in space.items():
        row = entry(family)
        if row.prompt_based or row.composes or row.trains != "some":
            raise TunelabError(f"search space: {family} is not a parameter-efficient strategy the search can vary; "
                               f"choose from {', '.join(DEFAULT_SPACE)}")
        options = get_strategy(family).Options.model_fields
        for name, spec in parameters.items():
            if name != LEARNING_RATE and name not in options:
                raise TunelabError(f"search space: {family} has no option '{name}'; its options are "
                                   f"{', '.join(options)} (and learning_rate)")
            _check_parameter(family, name, spec)


def read_space(path: Path | None) -> dict[str, dict[str, Any]]:
    """The default space, narrowed or extended by a YAML file: `families: [...]` keeps those families (in the
    default space or not), and `FAMILY: {option: spec}` replaces or adds that family's parameters."""
    space = copy.deepcopy(DEFAULT_SPACE)
    if path is not None:
        tree = read_yaml(path)
        families = tree.pop("families", None)
        for family, parameters in tree.items():
            if not isinstance(parameters, dict):
                raise TunelabError(f"search space {path}: {family} must map option names to choices or ranges")
            space[family] = {**space.get(family, {}), **parameters}
        if families is not None:
            if not isinstance(families, list):
                raise TunelabError(f"search space {path}: families must be a list, e.g. [lora, adapter]")
            space = {family: space.get(family, {}) for family in families}
    check_space(space)
    return space


def _suggest(trial: optuna.Trial, name: str, spec: Any) -> Any:
    if isinstance(spec, list):
        return trial.suggest_categorical(name, spec)
    if isinstance(spec, dict) and "choices" in spec:
        return trial.suggest_categorical(name, spec["choices"])
    low, high, log = spec["low"], spec["high"], bool(spec.get("log", False))
    if isinstance(low, int) and isinstance(high, int) and not isinstance(low, bool):
        return trial.suggest_int(name, low, high, log=log)
    return trial.suggest_float(name, float(low), float(high), log=log)


def _layers(trial: optuna.Trial, family: str, depth: int) -> list[int] | None:
    """Each block on or off; every block on is None (the strategy's default), none on keeps the top block."""
    chosen = [index for index in range(depth) if trial.suggest_categorical(f"{family}.layer{index}", [True, False])]
    if len(chosen) == depth:
        return None
    return chosen or [depth - 1]


def _option_value(name: str, value: Any) -> Any:
    if name == "target_modules" and isinstance(value, str):
        return None if value == TARGETS_DEFAULT else value if value == "all-linear" else value.split(",")
    return value


def suggest(trial: optuna.Trial, space: dict[str, dict[str, Any]], depth: int) -> TrialPlan:
    """The trial's plan, sampling only the parameters of the family it picks (and those whose `when` holds)."""
    family = trial.suggest_categorical("family", list(space))
    default_rate = entry(family).learning_rate
    options: dict[str, Any] = {}
    rate_spec = {"low": default_rate / LR_SPREAD, "high": default_rate * LR_SPREAD, "log": True}
    learning_rate = None
    for name, spec in {LEARNING_RATE: rate_spec, **space[family]}.items():
        condition = spec.get("when", {}) if isinstance(spec, dict) else {}
        if any(options.get(option) != value for option, value in condition.items()):
            continue
        if name == LEARNING_RATE:
            learning_rate = _suggest(trial, f"{family}.{name}", spec)
        elif spec == PER_LAYER:
            layers = _layers(trial, family, depth)
            if layers is not None:
                options[name] = layers
        else:
            options[name] = _option_value(name, _suggest(trial, f"{family}.{name}", spec))
    return TrialPlan(family, {name: value for name, value in options.items() if value is not None}, learning_rate)
