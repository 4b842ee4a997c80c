"""Readable terminal tables for runs, datasets and models."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from rich.table import Table
from rich.text import Text

from tunelab.compare.claims import Claim
from tunelab.runs import METRICS_FILE, RESOURCES_FILE, read_json, read_run_config, require_run
from tunelab.task_catalog import recipe_for
from tunelab.units import human_bytes, human_count


def on_disk(resources: dict[str, Any]) -> str:
    """The delta's size, and its share of a full model copy (runs written before issue 3 lack the latter)."""
    delta, full = resources["delta_bytes"], resources.get("full_copy_bytes")
    return f"{human_bytes(delta)} ({delta / full:.2%} of full)" if full else human_bytes(delta)


def latency(resources: dict[str, Any]) -> str:
    """Per-example latency at batch 1; runs trained through TRL (`rlhf sft`) do not measure it."""
    value = resources.get("latency_ms_per_example")
    return "-" if value is None else f"{value:.1f} ms"


def quality_columns(metrics: dict[str, Any], task: str) -> tuple[str, str]:
    """The two quality columns of a run of `task`: accuracy and macro-F1, Pearson and Spearman, SQuAD exact match
    and F1, entity F1 and token accuracy, or the test loss and perplexity beside the untrained model's."""
    return recipe_for(task).quality_columns(metrics)


def named_scores(task: str, metrics: dict) -> str:
    """A run's two summary scores on one line, a bare number with its score's name (accuracy 0.917)."""
    return " · ".join(f"{label} {value}" if value[:1].isdigit() else value
                      for label, value in zip(recipe_for(task).quality_names, quality_columns(metrics, task),
                                              strict=True))


def runs_table(run_dirs: list[Path], title: str = "runs") -> Table:
    """One row per run: strategy, its task's two test scores (`quality_columns`, named when every run has the same
    task), and the costs; a run that did not learn is marked."""
    for run_dir in run_dirs:
        require_run(run_dir)
    runs = [(run_dir, read_run_config(run_dir), read_json(run_dir / METRICS_FILE), read_json(run_dir / RESOURCES_FILE))
            for run_dir in run_dirs]
    tasks = {config.task for _, config, _, _ in runs}
    scores = recipe_for(tasks.pop()).quality_names if len(tasks) == 1 else ("test score", "second score")
    unlearned = any(metrics.get("learned") is False for _, _, metrics, _ in runs)
    table = Table(title=title, caption="! did not learn: no better than its baseline (see the warning, or "
                                       "metrics.json)" if unlearned else None)
    for column in ("run", "strategy", "train n", *scores, "trainable", "train time", "peak mem", "on disk",
                   "latency"):
        table.add_column(column, justify="left" if column in ("run", "strategy") else "right")
    for run_dir, config, metrics, resources in runs:
        first, second = quality_columns(metrics, config.task)
        table.add_row(
            run_dir.name, config.strategy.name, str(metrics["train_examples"]),
            Text(f"! {first}", style="bold red") if metrics.get("learned") is False else first, second,
            f"{human_count(resources['trainable_parameters'])} ({resources['trainable_share'] * 100:.3g}%)",
            f"{resources['train_s']:.1f} s", human_bytes(resources["peak_memory_bytes"]),
            on_disk(resources), latency(resources),
        )
    return table


def blackbox_table(run_dirs: list[Path], title: str = "black-box runs") -> Table:
    """One row per black-box run: its method and shots, test accuracy beside its template's zero-shot accuracy on
    the same test split, and what the search cost in calls, tokens and time."""
    table = Table(title=title)
    for column in ("run", "method", "shots", "test accuracy", "zero-shot", "calls", "tokens sent", "search time"):
        table.add_column(column, justify="left" if column in ("run", "method") else "right")
    for run_dir in run_dirs:
        metrics, search = read_json(run_dir / METRICS_FILE), read_json(run_dir / RESOURCES_FILE)["search"]
        table.add_row(run_dir.name, metrics["method"], str(metrics["shots"]), f"{metrics['test']['accuracy']:.3f}",
                      f"{metrics['zero_shot']['accuracy']:.3f}", str(search["calls"]),
                      human_count(search["tokens_in"]), f"{search['wall_s']:.0f} s")
    return table


def grid_table(summary: pd.DataFrame, title: str) -> Table:
    """A compare grid summarised over seeds: one row per (strategy, training-set size)."""
    from tunelab.compare.page import BLACKBOX_NOTE, SUMMARY_HEADER, summary_rows

    table = Table(title=title, caption=BLACKBOX_NOTE if summary["calls_mean"].notna().any() else None)
    for column in SUMMARY_HEADER:
        table.add_column(column, justify="left" if column == "strategy" else "right")
    for row in summary_rows(summary):
        table.add_row(*row)
    return table


def search_table(result: dict[str, Any], title: str) -> Table:
    """A search's Pareto set and hand defaults, re-evaluated over seeds."""
    from tunelab.search.page import SEARCH_HEADER, search_rows

    table = Table(title=title)
    for index, column in enumerate(SEARCH_HEADER):
        table.add_column(column, justify="left" if index in (0, 1, 8) else "right")
    for row in search_rows(result):
        table.add_row(*row)
    return table


def claims_table(claims: list[Claim], note: str = "") -> Table:
    colours = {"holds": "green", "does not hold": "red"}
    table = Table(title="the article's claims, measured", caption=note)
    for column in ("claim", "train n", "verdict", "evidence"):
        table.add_column(column, justify="right" if column == "train n" else "left")
    for claim in claims:
        table.add_row(claim.statement, str(claim.train_size),
                      Text(claim.verdict, style=colours.get(claim.verdict, "yellow")), claim.evidence)
    return table
