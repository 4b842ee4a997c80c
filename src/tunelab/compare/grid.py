"""A comparison grid: every (strategy, training-set size, seed) cell is an ordinary run directory.

Each cell trains in its own `tunelab train` process, so its peak memory is its own and a crash costs one cell. The
processes are forked from a fork server that imported tunelab, torch, transformers and peft once: those imports
were most of a small cell's cost beyond training (about 5 s of it on 2 cores, where loading MiniLM and tokenizing
its splits take under half a second), so a grid pays them once. The server runs no torch operation, so every fork
starts as clean as a new process. Where there is no fork server (Windows), cells start as new processes.

An interrupted grid resumes where it stopped: a cell whose run directory exists is finished (runs are committed
atomically), so it is skipped. The grid's settings live in `compare.yaml`; resuming with other settings is refused
rather than mixing two grids in one report.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import runpy
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from tunelab.config import RunConfig, StrategyConfig, TrainingConfig, build_config, to_yaml
from tunelab.errors import TunelabError
from tunelab.runs import METRICS_FILE, open_resumable, read_json, write_json, write_text_atomic
from tunelab.strategies.catalog import entry
from tunelab.strategies.registry import configure

# Imported once, in the fork server, by name: a cell runs `python -m tunelab train` (which imports these), and the
# grid, a layer below them, never imports them itself.
CELL_PRELOAD = ["tunelab.cli", "tunelab.api", "tunelab.report", "tunelab.recipes.classification"]
PR_SET_PDEATHSIG = 1  # prctl(2)
GRID_FILE = "compare.yaml"
FAILURES_FILE = "failures.json"
CELLS, CONFIGS, LOGS = "cells", "configs", "logs"


class GridSpec(BaseModel):
    """What a grid measures. `base` is the run config every cell shares (model, data, training settings)."""

    model_config = ConfigDict(extra="forbid")

    base: dict[str, Any] = Field(default_factory=dict)
    strategies: list[str]
    train_sizes: list[int]
    seeds: list[int]
    epochs: float | None = Field(None, gt=0, description="every cell's epochs; default: each strategy's own")
    min_steps: int = Field(0, ge=0, description="at least this many optimizer steps per cell: small training "
                                                "sets get more epochs (the defaults were set on 2,000 examples)")
    prompt_model: str | None = Field(None, description="the model of the prompt-based strategies' cells (a causal "
                                                       "LM or a masked LM with its head); default: the base model")


@dataclass(frozen=True)
class Cell:
    strategy: str
    train_size: int
    seed: int

    @property
    def name(self) -> str:
        return f"{self.strategy}-n{self.train_size}-s{self.seed}"


def plan(spec: GridSpec) -> list[Cell]:
    """Seed by seed, so that an interrupted grid already holds complete comparisons for its first seeds."""
    return [Cell(strategy, size, seed) for seed in spec.seeds for size in spec.train_sizes
            for strategy in spec.strategies]


def cell_epochs(spec: GridSpec, cell: Cell, batch_size: int) -> float:
    """The grid's epochs (or the strategy's default), raised until the cell makes `min_steps` optimizer steps."""
    strategy = configure(StrategyConfig(name=cell.strategy), TrainingConfig(epochs=spec.epochs))
    return strategy.budgeted(cell.train_size, batch_size, spec.min_steps).epochs


def cell_model(spec: GridSpec, strategy: str) -> dict[str, str]:
    """The model override of a strategy's cells: the prompt model for the prompt-based ones, when there is one."""
    return {"model": spec.prompt_model} if spec.prompt_model and entry(strategy).prompt_based else {}


def cell_config(spec: GridSpec, cell: Cell, folder: Path) -> RunConfig:
    """The cell's run: the base config with its strategy (and model), training-set size, seed and budget. Model
    selection sees at most as many validation examples as there are training examples: a user with 64 labels does
    not hold out a thousand more."""
    config = build_config(spec.base, {"strategy.name": cell.strategy, "data.limit_train": cell.train_size,
                                      "data.limit_validation": cell.train_size, "training.seed": cell.seed,
                                      "output": str(folder / CELLS / cell.name), **cell_model(spec, cell.strategy)})
    epochs = cell_epochs(spec, cell, config.training.batch_size)
    if epochs:  # a strategy that trains nothing (zero-shot) keeps no epochs
        config.training.epochs = epochs
    return config


def is_finished(folder: Path, cell: Cell) -> bool:
    return (folder / CELLS / cell.name / METRICS_FILE).exists()


def read_spec(folder: Path) -> GridSpec:
    if not (folder / GRID_FILE).exists():
        raise TunelabError(f"{folder} is not a tunelab compare grid (no {GRID_FILE}); pass the --output of "
                           f"`tunelab compare`")
    return GridSpec.model_validate(yaml.safe_load((folder / GRID_FILE).read_text(encoding="utf-8")))


def prepare_folder(folder: Path, spec: GridSpec) -> None:
    """Create the grid folder, or check that an existing one holds this very grid (then it resumes)."""
    open_resumable(folder, GRID_FILE, spec.model_dump(), "compare grid")
    for part in (CELLS, CONFIGS, LOGS):
        (folder / part).mkdir(parents=True, exist_ok=True)


def validate(spec: GridSpec) -> None:
    """Refuse a bad grid before the first cell trains: unknown strategies, a bad base config, empty axes."""
    for axis in ("strategies", "train_sizes", "seeds"):
        if not getattr(spec, axis):
            raise TunelabError(f"compare: no {axis.replace('_', ' ')} given")
    for name in spec.strategies:
        entry(name)  # a one-line error naming the strategies there are
    if min(spec.train_sizes) < 1:
        raise TunelabError("compare: --train-sizes must be positive counts of examples, e.g. 64,512")
    base = build_config(spec.base)
    if base.task != "classification":
        raise TunelabError(f"compare measures classification grids; task '{base.task}' is not supported yet")


def _error_line(log: Path, code: int | None) -> str:
    """The one-line reason a cell's `tunelab train` gave, or how it ended and where to look when it crashed."""
    lines = log.read_text(encoding="utf-8", errors="replace").splitlines()
    errors = [line.removeprefix("error: ") for line in lines if line.startswith("error: ")]
    ended = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
    return errors[-1] if errors else f"crashed ({ended}); see {log}"


def _die_with_parent() -> None:
    """Linux: the kernel kills this process when its parent (the fork server) exits, so a grid or a search killed
    with SIGKILL leaves no orphan still training and writing."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _train_cell(config_path: str, log_path: str, environment: dict[str, str], threads: int | None) -> None:
    """A cell's process: `tunelab train CONFIG --quiet` as `python -m tunelab` runs it, with the grid's environment
    as it is now (the fork server's is as it was when it started), its output in the cell's log, on `threads`
    CPU threads when several cells train at once."""
    _die_with_parent()
    os.environ.clear()
    os.environ.update({**environment, "COLUMNS": "200"})
    if threads:
        import torch  # already imported by the fork server's preload; the grid itself stays torch-free

        torch.set_num_threads(threads)
    with open(log_path, "w", encoding="utf-8") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
    sys.argv = ["tunelab", "train", config_path, "--quiet"]
    runpy.run_module("tunelab", run_name="__main__")


def _cell_processes() -> multiprocessing.context.BaseContext:
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(CELL_PRELOAD)
    return context


def train_in_process(config: RunConfig, config_path: Path, log: Path, threads: int | None = None) -> tuple[int, str]:
    """Train `config` in a process of its own (its config written to `config_path`, its output to `log`):
    (exit code, the reason it failed or "")."""
    write_text_atomic(config_path, to_yaml(config))
    process = _cell_processes().Process(target=_train_cell,
                                        args=(str(config_path), str(log), dict(os.environ), threads))
    process.start()
    process.join()
    return process.exitcode, "" if process.exitcode == 0 else _error_line(log, process.exitcode)


def run_cell(folder: Path, spec: GridSpec, cell: Cell) -> tuple[int, str]:
    """Train one cell in a process of its own: (exit code, the reason it failed or "")."""
    return train_in_process(cell_config(spec, cell, folder), folder / CONFIGS / f"{cell.name}.yaml",
                            folder / LOGS / f"{cell.name}.log")


@dataclass
class GridOutcome:
    trained: list[Cell]
    skipped: list[Cell]  # finished before this invocation
    failed: dict[str, str]  # cell name -> reason


def _progress(enabled: bool, console: Console) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TextColumn("left"), TimeRemainingColumn(), console=console, disable=not enabled)


def _cell_line(folder: Path, cell: Cell) -> str:
    test = read_json(folder / CELLS / cell.name / METRICS_FILE)["test"]
    return f"{cell.strategy} n={cell.train_size} seed {cell.seed}: accuracy {test['accuracy']:.3f}"


def run_grid(folder: Path, spec: GridSpec, console: Console, progress: bool = True) -> GridOutcome:
    """Train every unfinished cell. A strategy refused with a one-line error (exit code 2: the model cannot take
    it) is not tried on its other cells in this invocation; a crash costs only its cell. Failures are kept in
    failures.json; the next invocation tries them again."""
    validate(spec)
    prepare_folder(folder, spec)
    cells = plan(spec)
    outcome = GridOutcome([], [cell for cell in cells if is_finished(folder, cell)], {})
    refused: dict[str, str] = {}
    todo = [cell for cell in cells if cell not in outcome.skipped]
    with _progress(progress, console) as bar:
        task = bar.add_task("grid", total=len(cells), completed=len(outcome.skipped))
        try:
            for cell in todo:
                bar.update(task, description=f"training {cell.name}")
                code, reason = (2, refused[cell.strategy]) if cell.strategy in refused else run_cell(folder, spec, cell)
                if code == 0:
                    outcome.trained.append(cell)
                    bar.console.print(f"  done   {_cell_line(folder, cell)}")
                else:
                    outcome.failed[cell.name] = reason
                    if code == 2:
                        refused[cell.strategy] = reason
                    bar.console.print(f"  failed {cell.name}: {reason}", markup=False)
                write_json(folder / FAILURES_FILE, outcome.failed)
                bar.advance(task)
            bar.update(task, description="grid")
        except KeyboardInterrupt:
            finished = sum(is_finished(folder, cell) for cell in cells)
            raise TunelabError(f"interrupted with {finished} of {len(cells)} cells finished; run the same "
                               f"command again to resume") from None
    return outcome
