"""Every task in one frozen row: its name, what it does, whether it has labels, and the module of its recipe
(imported on first use), free of every other import, so that the strategy catalog, the config and the advisor can
check task names cheaply.

Adding a task: its recipe module under `tunelab.recipes` and its row here.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING

from tunelab.errors import TunelabError

if TYPE_CHECKING:
    from tunelab.recipes.base import Recipe


@dataclass(frozen=True)
class TaskEntry:
    name: str
    summary: str
    module: str  # under tunelab.recipes; the module's `RECIPE` is the task's recipe
    labelled: bool = False  # examples carry one class label each, so few-shot (`--shots K` per label) applies


TASK_CATALOG = (
    TaskEntry("classification", "one label per text (or per row of a multi-field template)", "classification",
              labelled=True),
    TaskEntry("regression", "one number per text, e.g. a rating or a similarity score", "regression"),
    TaskEntry("token-classification", "a tag per word: named entities with their character spans",
              "token_classification"),
    TaskEntry("question-answering", "the answer span to a question in a passage (SQuAD 1.1 and 2.0)",
              "question_answering"),
    TaskEntry("generation", "a causal LM's answer to a prompt or a chat turn", "generation"),
)
TASKS = tuple(row.name for row in TASK_CATALOG)
assert len(set(TASKS)) == len(TASKS), "task names are unique"


def check_task(task: str) -> None:
    if task not in TASKS:
        raise TunelabError(f"unknown task '{task}'; choose one of {', '.join(TASKS)}")


def task_entry(task: str) -> TaskEntry:
    check_task(task)
    return next(row for row in TASK_CATALOG if row.name == task)


@cache
def recipe_for(task: str) -> Recipe:
    """The recipe of a task, its module imported the first time it is asked for."""
    return importlib.import_module(f"tunelab.recipes.{task_entry(task).module}").RECIPE


def check_shots(task: str, shots: int | None) -> None:
    """`--shots` draws K examples per label, which only the labelled tasks have."""
    if shots is not None and not task_entry(task).labelled:
        raise TunelabError(f"--shots draws K examples per label, and {task} has no labels: use --limit-train N")
