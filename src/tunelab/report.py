"""Readable terminal tables for runs, datasets and models."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from rich.table import Table
from rich.text import Text

from tunelab.compare.claims import Claim
from tunelab.config import build_config, read_yaml
from tunelab.runs import CONFIG_FILE, METRICS_FILE, RESOURCES_FILE, read_json, require_run
from tunelab.units import human_bytes, human_count


def on_disk(resources: dict[str, Any]) -> str:
    """The delta's size, and its share of a full model copy (runs written before issue 3 lack the latter)."""
    delta, full = resources["delta_bytes"], resources.get("full_copy_bytes")
    return f"{human_bytes(delta)} ({delta / full:.2%} of full)" if full else human_bytes(delta)


def latency(resources: dict[str, Any]) -> str:
    """Per-example latency at batch 1; runs trained through TRL (`rlhf sft`) do not measure it."""
    value = resources.get("latency_ms_per_example")
    return "-" if value is None else f"{value:.1f} ms"


def quality_columns(metrics: dict[str, Any]) -> tuple[str, str]:
    """The two quality columns: accuracy and macro-F1, or for generation the test loss and perplexity, each
    with the untrained model's value beside it."""
    test = metrics["test"]
    if "perplexity" in test:
        base = metrics["base_test"]
        return (f"loss {test['loss']:.3f} (base {base['loss']:.3f})",
                f"ppl {test['perplexity']:.2f} (base {base['perplexity']:.2f})")
    return f"{test['accuracy']:.3f}", f"{test['macro_f1']:.3f}"


def runs_table(run_dirs: list[Path], title: str = "runs") -> Table:
    """One row per run: strategy, test scores (accuracy and macro-F1, or loss and perplexity), and the costs."""
    table = Table(title=title)
    for column in ("run", "strategy", "train n", "accuracy | loss", "macro-F1 | ppl", "trainable", "train time",
                   "peak mem", "on disk", "latency"):
        table.add_column(column, justify="left" if column in ("run", "strategy") else "right")
    for run_dir in run_dirs:
        require_run(run_dir)
        config = build_config(read_yaml(run_dir / CONFIG_FILE))
        metrics: dict[str, Any] = read_json(run_dir / METRICS_FILE)
        resources: dict[str, Any] = read_json(run_dir / RESOURCES_FILE)
        table.add_row(
            run_dir.name, config.strategy.name, str(metrics["train_examples"]), *quality_columns(metrics),
            f"{human_count(resources['trainable_parameters'])} ({resources['trainable_share'] * 100:.3g}%)",
            f"{resources['train_s']:.1f} s", human_bytes(resources["peak_memory_bytes"]),
            on_disk(resources), latency(resources),
        )
    return table


def grid_table(summary: pd.DataFrame, title: str) -> Table:
    """A compare grid summarised over seeds: one row per (strategy, training-set size)."""
    from tunelab.compare.page import SUMMARY_HEADER, summary_rows

    table = Table(title=title)
    for column in SUMMARY_HEADER:
        table.add_column(column, justify="left" if column == "strategy" else "right")
    for row in summary_rows(summary):
        table.add_row(*row)
    return table


def claims_table(claims: list[Claim]) -> Table:
    colours = {"holds": "green", "does not hold": "red"}
    table = Table(title="the article's claims, measured")
    for column in ("claim", "train n", "verdict", "evidence"):
        table.add_column(column, justify="right" if column == "train n" else "left")
    for claim in claims:
        table.add_row(claim.statement, str(claim.train_size),
                      Text(claim.verdict, style=colours.get(claim.verdict, "yellow")), claim.evidence)
    return table


def metrics_table(metrics: dict[str, Any], title: str) -> Table:
    """Per-class precision/recall/F1 with accuracy and macro-F1 in the caption."""
    table = Table(title=title, caption=f"accuracy {metrics['accuracy']:.3f} · macro-F1 {metrics['macro_f1']:.3f} · "
                                       f"{metrics['examples']} examples")
    for column in ("label", "precision", "recall", "F1", "support"):
        table.add_column(column, justify="left" if column == "label" else "right")
    for label, row in metrics["per_class"].items():
        table.add_row(label, f"{row['precision']:.3f}", f"{row['recall']:.3f}", f"{row['f1-score']:.3f}",
                      f"{row['support']:.0f}")
    return table
