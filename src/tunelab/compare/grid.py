"""A comparison grid: every (strategy, training-set size, seed) cell is an ordinary run directory.

Each cell is a job for an executor (`compare/executors.py`): a `tunelab train` process of its own, on this machine
one cell at a time, or as Ray tasks on a cluster, several at once, each asking for its resources. A black-box
method named as a strategy (`blackbox:search`) is a `tunelab blackbox` process instead, on the same data, seed and
labelled examples: a training-set size of N is N // labels shots per label (for the search, and as many again for
validation, as a trained cell of N validates on at most N).

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
from tunelab.config import DataConfig, RunConfig, StrategyConfig, TrainingConfig, build_config
from tunelab.data.loading import load_examples
from tunelab.data.splits import split_examples
from tunelab.errors import TunelabError
from tunelab.runs import BLACKBOX_METHODS, METRICS_FILE, open_resumable, read_json, write_json
from tunelab.strategies.catalog import entry
from tunelab.strategies.registry import configure

GRID_FILE = "compare.yaml"
FAILURES_FILE = "failures.json"
CELLS, CONFIGS, LOGS = "cells", "configs", "logs"
BLACKBOX = "blackbox:"  # a strategy name `blackbox:METHOD` is a `tunelab blackbox --method METHOD` cell
SPLIT_SETTINGS = ("test_size", "validation_size", "split_seed")  # `tunelab blackbox` has no flag for these


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
    blackbox_budget: int | None = Field(None, ge=1, description="calls each black-box cell may make; default: "
                                                                "`tunelab blackbox`'s own")


def blackbox_method(strategy: str) -> str | None:
    """The black-box method a grid's strategy names (`blackbox:search` -> search), or None for a trained strategy."""
    return strategy.removeprefix(BLACKBOX) if strategy.startswith(BLACKBOX) else None


def has_blackbox(spec: GridSpec) -> bool:
    return any(blackbox_method(strategy) for strategy in spec.strategies)


@dataclass(frozen=True)
class Cell:
    strategy: str
    train_size: int
    seed: int

    @property
    def name(self) -> str:
        return f"{self.strategy.replace(':', '-')}-n{self.train_size}-s{self.seed}"


def plan(spec: GridSpec) -> list[Cell]:
    """Seed by seed, so that an interrupted grid already holds complete comparisons for its first seeds."""
    return [Cell(strategy, size, seed) for seed in spec.seeds for size in spec.train_sizes
            for strategy in spec.strategies]


def cell_epochs(spec: GridSpec, cell: Cell, batch_size: int) -> float:
    """The grid's epochs (or the strategy's default), raised until the cell makes `min_steps` optimizer steps."""
    strategy = configure(StrategyConfig(name=cell.strategy), TrainingConfig(epochs=spec.epochs))
    return strategy.budgeted(cell.train_size, batch_size, spec.min_steps).epochs


def cell_model(spec: GridSpec, strategy: str) -> dict[str, str]:
    """The model override of a strategy's cells: the prompt model for the prompt-based ones and the black-box
    methods (which ask a language model), when there is one."""
    asks_an_lm = blackbox_method(strategy) or entry(strategy).prompt_based
    return {"model": spec.prompt_model} if spec.prompt_model and asks_an_lm else {}


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


def blackbox_config(spec: GridSpec, cell: Cell, folder: Path, labels: int) -> RunConfig:
    """The run a black-box cell writes, as `tunelab blackbox` builds it from its flags: the grid's model (or prompt
    model), data, test-set limit, template and label words, with the cell's seed and `train_size // labels` shots
    per label."""
    base = build_config(spec.base)
    data = base.data.model_dump(include={"source", "text_column", "label_column", "limit_eval"})
    return build_config({"model": base.model, **cell_model(spec, cell.strategy), "task": "classification",
                         "strategy": {"name": "zero-shot"}, "data": {**data, "shots": cell.train_size // labels},
                         "training": {"seed": cell.seed},
                         "prompt": base.prompt.model_dump(include={"template", "verbalizer"}, exclude_none=True),
                         "output": str(folder / CELLS / cell.name)})


def blackbox_command(config: RunConfig, method: str, budget: int | None) -> list[str]:
    """The `tunelab blackbox` arguments that write `config`'s run by `method` within `budget` calls."""
    data, prompt = config.data, config.prompt
    flags = {"--method": method, "--model": config.model, "--data": data.source, "--text-column": data.text_column,
             "--label-column": data.label_column, "--shots": data.shots, "--seed": config.training.seed,
             "--limit-eval": data.limit_eval, "--budget": budget, "--template": prompt.template,
             "--output": config.output}
    arguments = ["blackbox", *(str(part) for flag, value in flags.items() if value is not None
                               for part in (flag, value))]
    for label, words in (prompt.verbalizer or {}).items():
        arguments += ["--verbalizer", f"{label}={words if isinstance(words, str) else ','.join(words)}"]
    return arguments


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


def _blackbox_names() -> str:
    return ", ".join(BLACKBOX + method for method in BLACKBOX_METHODS)


def validate(spec: GridSpec) -> None:
    """Refuse a bad grid before the first cell trains: unknown strategies or black-box methods, a bad base config,
    empty axes, black-box settings without black-box cells."""
    for axis in ("strategies", "train_sizes", "seeds"):
        if not getattr(spec, axis):
            raise TunelabError(f"compare: no {axis.replace('_', ' ')} given")
    for name in spec.strategies:
        method = blackbox_method(name)
        if method is None:
            entry(name)  # a one-line error naming the strategies there are
        elif method not in BLACKBOX_METHODS:
            raise TunelabError(f"unknown black-box method '{name}'; choose {_blackbox_names()}")
    if min(spec.train_sizes) < 1:
        raise TunelabError("compare: --train-sizes must be positive counts of examples, e.g. 64,512")
    if spec.blackbox_budget is not None and not has_blackbox(spec):
        raise TunelabError(f"--blackbox-budget is for black-box cells: name one of {_blackbox_names()} in "
                           f"--strategies")
    base = build_config(spec.base)
    if base.task != "classification":
        raise TunelabError(f"compare measures classification grids; task '{base.task}' is not supported yet")
    split = [key for key in SPLIT_SETTINGS if getattr(base.data, key) != DataConfig.model_fields[key].default]
    if split and has_blackbox(spec):
        raise TunelabError(f"black-box cells split the data as `tunelab blackbox` does, which has no data.{split[0]}: "
                           f"leave it at its default, or compare without the black-box methods")


def blackbox_labels(spec: GridSpec) -> int:
    """The data's labels, which turn a training-set size into shots per label. Each size is checked against the
    splits first, so that no black-box cell is refused for want of examples after others ran."""
    data = build_config(spec.base).data
    examples = load_examples(data.source, data.text_column, data.label_column)
    splits = split_examples(examples, data.test_size, data.validation_size, data.split_seed,
                            limit_eval=data.limit_eval)
    labels = examples["label"].nunique()
    fewest = min(rows["label"].value_counts().min() for rows in (splits.train, splits.validation))
    for size in spec.train_sizes:
        shots = size // labels
        if not 1 <= shots <= fewest:
            raise TunelabError(f"--train-sizes {size}: a black-box cell takes {size} // {labels} labels = {shots} "
                               f"examples per label for its search and as many again for validation; the data has "
                               f"room for 1 to {fewest} (sizes {labels} to {labels * fewest})")
    return labels


def cell_job(folder: Path, spec: GridSpec, cell: Cell, labels: int | None = None) -> Job:
    """Run one cell: its run config, where its config (a black-box cell's command line) and its output are
    written. A black-box cell needs the data's `labels` (`blackbox_labels`)."""
    log = folder / LOGS / f"{cell.name}.log"
    method = blackbox_method(cell.strategy)
    if method is None:
        return Job(cell_config(spec, cell, folder), folder / CONFIGS / f"{cell.name}.yaml", log)
    if labels is None:
        raise ValueError("a black-box cell's shots need the data's labels")
    config = blackbox_config(spec, cell, folder, labels)
    return Job(config, folder / CONFIGS / f"{cell.name}.sh", log,
               command=blackbox_command(config, method, spec.blackbox_budget))


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
    labels: int | None  # the data's, for the black-box cells' shots

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
                pending[executor.submit(cell_job(self.folder, self.spec, cell, self.labels))] = cell
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
    labels = blackbox_labels(spec) if has_blackbox(spec) else None
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
                _Training(folder, spec, bar, task, outcome, labels).run(todo, running)
            except KeyboardInterrupt:
                finished = sum(is_finished(folder, cell) for cell in cells)
                raise TunelabError(f"interrupted with {finished} of {len(cells)} cells finished; run the same "
                                   f"command again to resume") from None
    return outcome
