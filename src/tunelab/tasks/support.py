"""Which strategy serves which task: one table, read by `train` (an unsupported pair fails before anything
loads), the advisor and the README. Kept free of torch so that the advisor can import it cheaply.

A cell is None where the strategy applies, else the reason it does not, said to the user as it stands.
"""

from __future__ import annotations

from tunelab.errors import TunelabError

TASKS = ("classification", "regression", "token-classification", "question-answering", "generation")

_HEAD_TASKS = ("classification", "regression", "token-classification", "question-answering")
_LABEL_WORDS = "it scores label words, so it classifies sentences only"
_PREPENDS = "its virtual tokens are wired for encoding, not for sampling one token at a time"

# strategy -> task -> None (applies) or why not. Every task a head reads (sentence, token or span) takes every
# weight-level and virtual-token strategy: P-tuning v2 (Liu et al. 2022) showed deep prompts on NER and QA too.
SUPPORT: dict[str, dict[str, str | None]] = {
    "full": dict.fromkeys(TASKS),
    "linear-probe": {**dict.fromkeys(_HEAD_TASKS), "generation": "it trains only a new head, and generation has none"},
    "lora": dict.fromkeys(TASKS),
    "ia3": dict.fromkeys(TASKS),
    "adapter": dict.fromkeys(TASKS),
    "prefix": {**dict.fromkeys(_HEAD_TASKS), "generation": _PREPENDS},
    "prompt-tuning": {**dict.fromkeys(_HEAD_TASKS), "generation": _PREPENDS},
    "p-tuning": {**dict.fromkeys(_HEAD_TASKS), "generation": _PREPENDS},
    "zero-shot": {task: None if task == "classification" else _LABEL_WORDS for task in TASKS},
    "pet": {task: None if task == "classification" else _LABEL_WORDS for task in TASKS},
    "soft-template": {task: None if task == "classification" else _LABEL_WORDS for task in TASKS},
}


def strategies_for(task: str) -> list[str]:
    return [name for name, tasks in SUPPORT.items() if tasks[task] is None]


def check_task(task: str) -> None:
    if task not in TASKS:
        raise TunelabError(f"unknown task '{task}'; choose one of {', '.join(TASKS)}")


def check_serves_task(strategy: str, task: str) -> None:
    """Fail before any data or weights load when the strategy cannot adapt a model for `task`."""
    check_task(task)
    reason = SUPPORT[strategy][task]
    if reason is not None:
        raise TunelabError(f"strategy {strategy} does not apply to {task}: {reason}; use one of "
                           f"{', '.join(strategies_for(task))}")


def check_shots(task: str, shots: int | None) -> None:
    """`--shots` draws K examples per label, which only classification has."""
    if shots is not None and task != "classification":
        raise TunelabError(f"--shots draws K examples per label, and {task} has no labels: use --limit-train N")


def support_table() -> str:
    """The table as Markdown, the way the README shows it (a test keeps the two equal)."""
    lines = ["| strategy | " + " | ".join(TASKS) + " |", "|---|" + "---|" * len(TASKS)]
    lines += [f"| `{name}` | " + " | ".join("yes" if tasks[task] is None else "no" for task in TASKS) + " |"
              for name, tasks in SUPPORT.items()]
    return "\n".join(lines)
