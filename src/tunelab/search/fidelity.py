"""Cheap early stopping across trials: asynchronous successive halving (ASHA, Li et al. 2020) on the training rows.

Optuna refuses pruning in multi-objective studies, so the fidelities are ours: every trial first trains on 1/eta of
the rows for the same epochs (1/eta of the steps), and goes on to the full rows only if that low-rung result is in
the top 1/eta of all low-rung results so far, or on their Pareto front of the objectives (a cheap configuration can
be worth finishing though it is not among the most accurate). The others end as pruned, with their low-rung values
kept. A trial decides as soon as its own low rung is done (asynchronously), so parallel workers never wait.
"""

from __future__ import annotations

import math
from typing import Any

from tunelab.search.objectives import Objective, pareto_front, quality


def low_rows(rows: int, eta: int) -> int:
    """The low rung's training rows: 1/eta of the full rows, at least 2 per class on the smallest data."""
    return max(8, rows // eta)


def promoted(key: Any, low_rung: dict[Any, list[float]], objectives: list[Objective], eta: int) -> bool:
    """Whether the trial `key` (one of the low rung's results) goes on to the full rows."""
    index = objectives.index(quality(objectives))
    direction = quality(objectives).direction
    ranked = sorted(low_rung, key=lambda other: low_rung[other][index], reverse=direction == "maximize")
    top = ranked[:math.ceil(len(ranked) / eta)]
    return key in top or key in pareto_front(low_rung, objectives)
