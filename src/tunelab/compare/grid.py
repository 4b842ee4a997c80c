"""A comparison grid: every (strategy, training-set size, seed) cell is an ordinary run directory.

Each cell is a job for an executor (`compare/executors.py`): a `tunelab train` process of its own, on this machine
one cell at a time, or as Ray tasks on a cluster, several at once, each asking for its resources.

An interrupted grid resumes where it stopped: a cell whose run directory exists is finished (runs are committed
atomically), so it is skipped. The grid's settings live in `compare.yaml`; resuming with other settings is refused
rather than mixing two grids in one report.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from tunelab.compare.executors import LOCAL, Executor, ExecutorChoice, Job, Outcome, open_executor
from tunelab.config import RunConfig, StrategyConfig, TrainingConfig, build_config
from tunelab.errors import TunelabError
from tunelab.runs import METRICS_FILE, open_resumable, read_json, write_json
from tunelab.strategies.catalog import entry
from tunelab.strategies.registry import configure

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


def cell_job(folder: Path, spec: GridSpec, cell: Cell) -> Job:
    """Train one cell: its run config, where its config and its output are written."""
    return Job(cell_config(spec, cell, folder), folder / CONFIGS / f"{cell.name}.yaml",
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


def _describe(cells: list[Cell]) -> str:
    return cells[0].name if len(cells) == 1 else f"{len(cells)} cells"


@dataclass
class _Training:
    """A grid's invocation as it trains: the cells it settles, as they print and as failures.json keeps them."""

    folder: Path
    spec: GridSpec
    bar: Progress
    task: Any
    outcome: GridOutcome

    def settle(self, cell: Cell, code: int, reason: str) -> None:
        if code == 0:
            self.outcome.trained.append(cell)
            self.bar.console.print(f"  done   {_cell_line(self.folder, cell)}")
        else:
            self.outcome.failed[cell.name] = reason
            self.bar.console.print(f"  failed {cell.name}: {reason}", markup=False)
        write_json(self.folder / FAILURES_FILE, self.outcome.failed)
        self.bar.advance(self.task)

    def run(self, todo: deque[Cell], executor: Executor) -> None:
        """Keep the executor as busy as it can be, starting cells in plan order. A strategy refused with a one-line
        error (exit code 2: the model cannot take it) is not started on its other cells; a crash costs one cell."""
        order = {cell: index for index, cell in enumerate(plan(self.spec))}
        refused: dict[str, str] = {}
        pending: dict[Future[Outcome], Cell] = {}
        while todo or pending:
            while todo and len(pending) < executor.capacity():
                cell = todo.popleft()
                if cell.strategy in refused:
                    self.settle(cell, 2, refused[cell.strategy])
                    continue
                self.bar.update(self.task, description=f"training {_describe([*pending.values(), cell])}")
                pending[executor.submit(cell_job(self.folder, self.spec, cell))] = cell
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in sorted(done, key=lambda future: order[pending[future]]):
                cell, (code, reason) = pending.pop(future), future.result()
                if code == 2:
                    refused[cell.strategy] = reason
                self.settle(cell, code, reason)
        self.bar.update(self.task, description="grid")


def run_grid(folder: Path, spec: GridSpec, console: Console, progress: bool = True,
             executor: ExecutorChoice = LOCAL) -> GridOutcome:
    """Train every unfinished cell with `executor` (connected before the folder is touched). Failures are kept in
    failures.json; the next invocation tries them again."""
    validate(spec)
    with open_executor(executor) as running:
        if running.describe():
            console.print(running.describe(), highlight=False, markup=False)
        prepare_folder(folder, spec)
        cells = plan(spec)
        outcome = GridOutcome([], [cell for cell in cells if is_finished(folder, cell)], {})
        todo = deque(cell for cell in cells if cell not in outcome.skipped)
        with _progress(progress, console) as bar:
            task = bar.add_task("grid", total=len(cells), completed=len(outcome.skipped))
            try:
                _Training(folder, spec, bar, task, outcome).run(todo, running)
            except KeyboardInterrupt:
                finished = sum(is_finished(folder, cell) for cell in cells)
                raise TunelabError(f"interrupted with {finished} of {len(cells)} cells finished; run the same "
                                   f"command again to resume") from None
    return outcome
