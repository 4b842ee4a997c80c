"""Which strategy serves which task, as read from the strategy catalog: `train` checks a pair before anything
loads. Kept free of torch so that the advisor can import it cheaply."""

from __future__ import annotations

from tunelab.errors import TunelabError
from tunelab.strategies.catalog import entry, strategies_for
from tunelab.tasks.names import TASKS, check_task

__all__ = ["TASKS", "check_serves_task", "check_shots", "check_task", "strategies_for"]


def check_serves_task(strategy: str, task: str) -> None:
    """Fail before any data or weights load when the strategy cannot adapt a model for `task`."""
    check_task(task)
    reason = entry(strategy).not_served.get(task)
    if reason is not None:
        raise TunelabError(f"strategy {strategy} does not apply to {task}: {reason}; use one of "
                           f"{', '.join(strategies_for(task))}")


def check_shots(task: str, shots: int | None) -> None:
    """`--shots` draws K examples per label, which only classification has."""
    if shots is not None and task != "classification":
        raise TunelabError(f"--shots draws K examples per label, and {task} has no labels: use --limit-train N")
