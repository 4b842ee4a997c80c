"""What a task's recipe provides: its data, its model, how it fits, what predicts with it, how it is scored and how
its results print. The run around it (seed, staging, peak memory, latency, the delta, the commit) is the same for
every task and lives in `tunelab.recipes.runs`.

Adding a task: a module under `tunelab.recipes` whose `RECIPE` implements `Recipe`, and its row in
`tunelab.task_catalog`.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from rich.console import RenderableType
from torch import nn
from transformers import EvalPrediction, PreTrainedTokenizerBase

from tunelab.config import RunConfig
from tunelab.data.checks import DataChecks
from tunelab.data.splits import Splits
from tunelab.engines import engine
from tunelab.errors import TunelabError
from tunelab.precision import resolve_precision
from tunelab.ranks import per_process
from tunelab.strategies.registry import ConfiguredStrategy
from tunelab.tasks.classification import LABELS_FILE, LabelMap
from tunelab.training.memory import (
    Probe,
    is_out_of_memory,
    micro_batch,
    micro_batch_facts,
    training_out_of_memory,
)
from tunelab.training.resume import CheckpointEvery, checkpoint_step, latest_checkpoint
from tunelab.training.trainer import (
    build_trainer,
    check_engaged,
    checkpoint_activations,
    gathered_trainable,
    length_grouping,
    training_arguments,
)


@dataclass
class Prepared:
    """A task's data, ready to train on."""

    config: RunConfig  # with what the data decides spelled out (a prompt's template and label words, no_answer)
    splits: Splits
    targets: Any  # what the outputs mean (label map, regression scale, tag map), saved with the run; or None
    selected_on: str  # the validation metric that picks the epoch kept (a Trainer metric name, or loss)
    facts: dict[str, Any] = field(default_factory=dict)  # about the data, for metrics.json (the tag scheme)


@dataclass
class Fitted:
    timings: dict[str, float]
    test: dict[str, Any] | None = None  # test metrics measured while fitting, where that is cheaper; else scored after
    facts: dict[str, Any] = field(default_factory=dict)  # about the fit, for metrics.json (windows, base scores)
    log: dict[str, Any] = field(default_factory=dict)  # the Trainer's record, merged into metrics.json
    gathered: dict[str, torch.Tensor] | None = None  # the trained tensors whole, where the engine split them


@dataclass
class TrainerFit:
    trainer: Any
    timings: dict[str, float]
    log: dict[str, Any]  # `validation`: the kept epoch's metrics (what a search ranks on); `loss_curve`: (step, loss)
    gathered: dict[str, torch.Tensor] | None = None  # on the first process, where the engine split the weights


def kept_epoch_validation(trainer: Any) -> dict[str, Any]:
    """The validation metrics of the epoch the Trainer kept (its best on `metric_for_best_model`), named without
    the `eval_` prefix, with that epoch; the last evaluation where the Trainer kept none."""
    evaluations = [entry for entry in trainer.state.log_history if "eval_loss" in entry]
    if not evaluations:
        return {}
    kept = next((entry for entry in evaluations if entry["step"] == trainer.state.best_global_step), evaluations[-1])
    timings = ("_runtime", "_per_second")
    return {"epoch": kept.get("epoch"), **{name.removeprefix("eval_"): value for name, value in kept.items()
                                          if name.startswith("eval_") and not name.endswith(timings)}}


def fit_with_trainer(model: nn.Module, config: RunConfig, strategy: ConfiguredStrategy, checkpoints: Path,
                     progress: bool, best_metric: str, train: torch.utils.data.Dataset,
                     validation: torch.utils.data.Dataset, collator: Callable | None,
                     compute_metrics: Callable[[EvalPrediction], dict] | None) -> TrainerFit:
    """Every task's fit: a Trainer that evaluates each epoch and restores the best one on `best_metric`; returns the
    trained Trainer (for the tasks that predict with it), the training time and its log (the kept epoch's validation
    metrics, the training loss curve, the micro-batches it computed in). With `training.checkpoint_every`, it also
    checkpoints every N steps and resumes from the newest complete checkpoint in `checkpoints`, if any. Running out
    of memory while training is one line with a micro-batch that would fit; in evaluation, it is left to the
    caller, which knows the inference batch."""
    training = config.training
    if training.gradient_checkpointing:
        checkpoint_activations(model)
    share = per_process(training.batch_size, "--batch-size")
    probe = Probe.of(model, train, collator, resolve_precision(training.precision))
    micro = micro_batch(probe, training.micro_batch_size, share)
    args = training_arguments(config, strategy, checkpoints, progress, best_metric, micro, model)
    every = training.checkpoint_every
    trainer = build_trainer(model, args, train, validation, collator, compute_metrics,
                            length_grouping(training.group_by_length, config.strategy.name),
                            strategy.callbacks(model) + ([CheckpointEvery(every)] if every else []))
    check_engaged(trainer, training.distributed)
    resume = latest_checkpoint(checkpoints) if every else None
    start = time.perf_counter()
    try:
        trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    except (torch.OutOfMemoryError, RuntimeError) as error:
        if not (is_out_of_memory(error) and model.training):
            raise
    else:
        log = {"validation": kept_epoch_validation(trainer),
               "loss_curve": [[entry["step"], entry["loss"]] for entry in trainer.state.log_history if "loss" in entry],
               "training": micro_batch_facts(micro, share, training.micro_batch_size == "auto")}
        timings = {"train_s": time.perf_counter() - start}
        split = engine(training.distributed).splits_weights
        return TrainerFit(trainer, timings, log, gathered_trainable(trainer) if split else None)
    trainer.accelerator.free_memory()  # the failed run's optimizer state, before memory is measured for the estimate
    trainer.optimizer = trainer.lr_scheduler = None
    raise training_out_of_memory(probe, share, micro, kept_checkpoint(checkpoints) if every else "")


def kept_checkpoint(checkpoints: Path) -> str:
    """What the error line adds when the run so far is kept to resume."""
    step = checkpoint_step(checkpoints.parent)
    return "" if step is None else f" (the run so far, to step {step}, is kept: the same command with it resumes)"


def refuse_context(context: str | None, task: str) -> None:
    """Only a question-answering run reads its questions against a passage."""
    if context is not None:
        raise TunelabError(f"this is a {task} run; --context is for question-answering runs")


class Recipe(ABC):
    """One task, from data to printed results."""

    task: str
    best_metric: str  # the validation metric that picks the epoch kept, unless the task lets a user choose
    quality_names: tuple[str, str]  # what `quality_columns` shows, for the summary's header

    def check_training(self, config: RunConfig) -> None:
        """Refuse, before anything loads, training settings the task cannot honour: class weights and a chosen
        selection metric are for classification."""
        training = config.training
        if training.class_weights != "none" or training.select_on != "auto":
            raise TunelabError(f"{self.task} keeps the epoch with the best validation {self.best_metric}: "
                               f"--class-weights and --select-on apply to classification")

    def selected_on(self, config: RunConfig, splits: Splits) -> str:
        """The validation metric that picks the epoch kept."""
        return self.best_metric

    def data_checks(self, prepared: Prepared, tokenizer: PreTrainedTokenizerBase) -> DataChecks | None:
        """Rows, balance and lengths of the data, with warnings, before anything trains; None where not measured."""
        return None

    def baseline(self, prepared: Prepared) -> dict[str, Any] | None:
        """The test scores of a model that learnt nothing from the texts (the majority class, the training mean)."""
        return None

    def did_not_learn(self, test: dict[str, Any], baseline: dict[str, Any]) -> str | None:
        """What went wrong and what to try, when the test scores are no better than the baseline's; else None."""
        return None

    @abstractmethod
    def prepare(self, config: RunConfig) -> Prepared:
        """Load and split the config's data, and decide what the data decides."""

    @abstractmethod
    def build(self, config: RunConfig, strategy: ConfiguredStrategy,
              targets: Any) -> tuple[nn.Module, PreTrainedTokenizerBase]:
        """The task's model on the config's base model, the strategy applied, and its tokenizer."""

    @abstractmethod
    def fit(self, model: nn.Module, tokenizer: PreTrainedTokenizerBase, prepared: Prepared,
            strategy: ConfiguredStrategy, checkpoints: Path, progress: bool) -> Fitted:
        """Train on the training split, keeping the best epoch on the validation split."""

    @abstractmethod
    def predictor(self, model: nn.Module, tokenizer: PreTrainedTokenizerBase, targets: Any,
                  config: RunConfig) -> Any:
        """What predicts with a trained model: texts, sentences or questions in, the task's answers out."""

    @abstractmethod
    def score(self, predictor: Any, examples: pd.DataFrame, source: str) -> dict[str, Any]:
        """The task's metrics on labelled examples (`source` names them in errors)."""

    @abstractmethod
    def latency_ms(self, predictor: Any, test: pd.DataFrame) -> float:
        """Median milliseconds to predict one test example at a time."""

    @abstractmethod
    def read_examples(self, config: RunConfig, targets: Any, source: str, text_column: str,
                      label_column: str) -> pd.DataFrame:
        """Every labelled row of `source`, read as a run of this config reads its data."""

    @abstractmethod
    def predict(self, predictor: Any, inputs: list[str], context: str | None) -> list[dict[str, Any]]:
        """One JSON-ready record per input: what `tunelab predict --json` prints and a server would return."""

    @abstractmethod
    def predictions_view(self, records: list[dict[str, Any]], title: str) -> RenderableType:
        """`predict`'s records as a person reads them."""

    @abstractmethod
    def quality_columns(self, metrics: dict[str, Any]) -> tuple[str, str]:
        """A run's two test scores in `tunelab summary`, from its metrics.json."""

    @abstractmethod
    def evaluation_view(self, metrics: dict[str, Any], title: str) -> RenderableType:
        """What `tunelab eval` shows of `score`'s metrics."""

    def test(self, predictor: Any, prepared: Prepared, folder: Path) -> dict[str, Any]:
        """The test split's metrics of a run being written to `folder`; a task may also save its predictions."""
        return self.score(predictor, prepared.splits.test, "test split")

    def test_examples(self, config: RunConfig) -> pd.DataFrame:
        """The test split of a trained run's config."""
        return self.prepare(config).splits.test

    def save_targets(self, targets: Any, folder: Path) -> None:
        if targets is not None:
            targets.save(folder)

    def load_targets(self, folder: Path) -> Any:
        return LabelMap.load(folder) if (folder / LABELS_FILE).exists() else None
