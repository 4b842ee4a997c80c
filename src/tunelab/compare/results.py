"""A grid's finished cells as one table, and that table summarised over seeds.

A black-box cell's row holds what its run measured: test accuracy, its search's wall time and the calls it made; the
columns of a trained model (macro-F1, trainable parameters, memory, bytes on disk, latency) are empty (NaN)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from tunelab.compare.grid import CELLS, FAILURES_FILE, GridSpec, blackbox_method, is_finished, plan, read_spec
from tunelab.config import read_yaml
from tunelab.runs import BLACKBOX_FILE, METRICS_FILE, RESOURCES_FILE, read_json, read_run_config
from tunelab.strategies.catalog import CATALOG

CELL_COLUMNS = ("strategy", "model", "family", "train_size", "seed", "train_examples", "accuracy", "macro_f1",
                "trainable_parameters", "trainable_share", "train_s", "peak_memory_bytes", "delta_bytes",
                "full_copy_bytes", "latency_ms", "learned", "calls")
SEARCH_COLUMNS = ("strategy", "train_size", "seed", "calls", "validation_accuracy")
BLACKBOX_FAMILY = "black-box"


@dataclass
class GridResults:
    folder: Path
    spec: GridSpec
    cells: pd.DataFrame  # one row per finished cell
    failures: dict[str, str]  # cell name -> reason, from the last `tunelab compare`
    planned: int
    searches: pd.DataFrame  # each finished black-box cell's search: validation accuracy after each round's calls


def _cell_row(path: Path, strategy: str, train_size: int, seed: int, metrics: dict) -> dict:
    cell = {"strategy": strategy, "train_size": train_size, "seed": seed}
    resources = read_json(path / RESOURCES_FILE)
    if blackbox_method(strategy):
        return {**cell, **_blackbox_row(path, metrics, resources)}
    return {
        **cell, "model": read_run_config(path).model, "family": CATALOG[strategy].family,
        "train_examples": metrics["train_examples"], "accuracy": metrics["test"]["accuracy"],
        "macro_f1": metrics["test"]["macro_f1"], "trainable_parameters": resources["trainable_parameters"],
        "trainable_share": resources["trainable_share"], "train_s": resources["train_s"],
        "peak_memory_bytes": resources["peak_memory_bytes"], "delta_bytes": resources["delta_bytes"],
        "full_copy_bytes": resources["full_copy_bytes"], "latency_ms": resources["latency_ms_per_example"],
        "learned": metrics.get("learned", True),  # runs before the check recorded nothing
    }


def _blackbox_row(path: Path, metrics: dict, resources: dict) -> dict:
    """A black-box run learns from its shots per label, and has learned when it beats the template alone (runs
    before that check recorded nothing); its cost is the search's calls and wall time."""
    record = read_yaml(path / BLACKBOX_FILE)
    return {"model": record["config"]["model"], "family": BLACKBOX_FAMILY,
            "train_examples": metrics["shots"] * len(record["verbalizer"]), "accuracy": metrics["test"]["accuracy"],
            "train_s": resources["search"]["wall_s"], "learned": metrics.get("learned", True),
            "calls": resources["search"]["calls"]}


def load_grid(folder: Path) -> GridResults:
    spec = read_spec(folder)
    cells = plan(spec)
    rows, searches = [], []
    for cell in cells:
        if not is_finished(folder, cell):
            continue
        metrics = read_json(folder / CELLS / cell.name / METRICS_FILE)
        rows.append(_cell_row(folder / CELLS / cell.name, cell.strategy, cell.train_size, cell.seed, metrics))
        if blackbox_method(cell.strategy):
            searches += [{"strategy": cell.strategy, "train_size": cell.train_size, "seed": cell.seed,
                          "calls": point["calls"], "validation_accuracy": point["validation_accuracy"]}
                         for point in metrics["curve"]]
    failures = read_json(folder / FAILURES_FILE) if (folder / FAILURES_FILE).exists() else {}
    return GridResults(folder, spec, pd.DataFrame(rows, columns=list(CELL_COLUMNS)), failures, len(cells),
                       pd.DataFrame(searches, columns=list(SEARCH_COLUMNS)))


def failures_by_reason(failures: dict[str, str]) -> dict[str, list[str]]:
    """The same refusal for six cells is one line with six names, not six lines."""
    grouped: dict[str, list[str]] = {}
    for cell, reason in failures.items():
        grouped.setdefault(reason, []).append(cell)
    return grouped


def summarise(cells: pd.DataFrame) -> pd.DataFrame:
    """One row per (strategy, training-set size): mean and standard deviation over seeds (std is NaN for one
    seed), in the grid's strategy order."""
    grouped = cells.groupby(["strategy", "train_size"], sort=False)
    summary = grouped.agg(
        model=("model", "first"), family=("family", "first"), seeds=("seed", "count"),
        train_examples=("train_examples", "median"),
        accuracy_mean=("accuracy", "mean"), accuracy_std=("accuracy", "std"), macro_f1_mean=("macro_f1", "mean"),
        trainable_parameters=("trainable_parameters", "median"), trainable_share=("trainable_share", "median"),
        train_s_mean=("train_s", "mean"), peak_memory_bytes=("peak_memory_bytes", "mean"),
        delta_bytes=("delta_bytes", "median"), full_copy_bytes=("full_copy_bytes", "median"),
        latency_ms=("latency_ms", "mean"), calls_mean=("calls", "mean"),
        unlearned=("learned", lambda learned: int((~learned.astype(bool)).sum())),
    ).reset_index()
    return summary.sort_values("train_size", kind="stable").reset_index(drop=True)
