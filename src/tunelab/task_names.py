"""The task names, free of every import, so that the strategy catalog and the advisor can check them cheaply."""

from __future__ import annotations

from tunelab.errors import TunelabError

TASKS = ("classification", "regression", "token-classification", "question-answering", "generation")


def check_task(task: str) -> None:
    if task not in TASKS:
        raise TunelabError(f"unknown task '{task}'; choose one of {', '.join(TASKS)}")


def check_shots(task: str, shots: int | None) -> None:
    """`--shots` draws K examples per label, which only classification has."""
    if shots is not None and task != "classification":
        raise TunelabError(f"--shots draws K examples per label, and {task} has no labels: use --limit-train N")
