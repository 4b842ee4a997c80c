"""What a search optimises: one quality (a validation metric of the epoch a trial kept; the test split stays unseen
until the Pareto set is re-evaluated) and any of the costs a run measures."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunelab.errors import TunelabError
from tunelab.runs import METRICS_FILE, RESOURCES_FILE, read_json
from tunelab.units import human_bytes, human_count

# cost name -> (resources.json field, what it is)
COSTS = {
    "trainable-params": ("trainable_parameters", "trainable parameters"),
    "delta-bytes": ("delta_bytes", "bytes stored per task"),
    "latency": ("latency_ms_per_example", "ms per example"),
    "peak-memory": ("peak_memory_bytes", "peak memory while training"),
    "train-time": ("train_s", "seconds of training"),
}
LOWER_IS_BETTER_QUALITY = ("loss",)


def format_cost(name: str, value: float) -> str:
    """A cost as a person reads it: 74.5K parameters, 308.0 KB, 7.9 ms, 32.6 s."""
    if name == "trainable-params":
        return human_count(int(value))
    if name in ("delta-bytes", "peak-memory"):
        return human_bytes(int(value))
    return f"{value:.1f} {'ms' if name == 'latency' else 's'}"


@dataclass(frozen=True)
class Objective:
    name: str  # as the user wrote it: accuracy, macro-f1, trainable-params, ...

    @property
    def is_cost(self) -> bool:
        return self.name in COSTS

    @property
    def direction(self) -> str:
        return "minimize" if self.is_cost or self.name in LOWER_IS_BETTER_QUALITY else "maximize"

    @property
    def metric_key(self) -> str:
        return COSTS[self.name][0] if self.is_cost else self.name.replace("-", "_")

    def better(self, a: float, b: float) -> bool:
        return a < b if self.direction == "minimize" else a > b

    def read(self, run: Path) -> float:
        """The objective's value in a finished run directory."""
        if self.is_cost:
            return float(read_json(run / RESOURCES_FILE)[self.metric_key])
        validation = read_json(run / METRICS_FILE).get("validation") or {}
        if self.metric_key not in validation:
            names = ", ".join(name.replace("_", "-") for name in validation if name != "epoch") or "none"
            raise TunelabError(f"search objective {self.name}: the run measured no validation {self.name}; this "
                               f"task's validation metrics are: {names}")
        return float(validation[self.metric_key])


def parse_objectives(text: str) -> list[Objective]:
    """`accuracy,trainable-params` -> objectives; exactly one quality (the first name that is not a cost)."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    if len(set(names)) != len(names):
        raise TunelabError(f"--objectives names one twice: {text}")
    objectives = [Objective(name) for name in names]
    qualities = [objective.name for objective in objectives if not objective.is_cost]
    if len(qualities) != 1:
        raise TunelabError(f"--objectives takes one validation metric (e.g. accuracy, macro-f1, f1, pearson) and any "
                           f"of the costs {', '.join(COSTS)}; got {text!r}")
    return objectives


def quality(objectives: list[Objective]) -> Objective:
    return next(objective for objective in objectives if not objective.is_cost)


def dominates(a: list[float], b: list[float], objectives: list[Objective]) -> bool:
    """Pareto dominance: `a` no worse on every objective and better on one."""
    pairs = list(zip(a, b, objectives, strict=True))
    return all(not objective.better(y, x) for x, y, objective in pairs) and \
        any(objective.better(x, y) for x, y, objective in pairs)


def pareto_front(points: dict[Any, list[float]], objectives: list[Objective]) -> list[Any]:
    """The keys of the points no other point dominates, in their given order."""
    return [key for key, values in points.items()
            if not any(dominates(other, values, objectives) for other_key, other in points.items() if other_key != key)]
