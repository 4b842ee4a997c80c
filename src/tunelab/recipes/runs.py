"""The run around every task's recipe: train one (checks, seed, staging, peak memory, fit, test, latency, the delta,
the commit), load a trained one back, evaluate it. Nothing here knows a task; `recipe_for` does."""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import transformers
from rich.console import RenderableType
from rich.markup import escape
from torch import nn

from tunelab.config import Precision, PromptConfig, RunConfig
from tunelab.engines import check_engine
from tunelab.errors import TunelabError
from tunelab.precision import in_precision, resolve_precision
from tunelab.ranks import is_main, wait_for_each_other, world_size
from tunelab.recipes.base import Prepared, Recipe
from tunelab.resources import PeakMemory, run_resources
from tunelab.runs import (
    CHECKPOINTS,
    StagedRun,
    read_run_config,
    require_run,
    verify_manifest,
    write_json,
    write_run,
)
from tunelab.strategies.catalog import check_serves_task
from tunelab.strategies.registry import ConfiguredStrategy, check_prompt_settings, configure
from tunelab.task_catalog import check_shots, recipe_for
from tunelab.training.memory import check_micro_batch, inference_memory
from tunelab.training.resume import RESUME_FILE, Resume, prepare_resume, resumable
from tunelab.training.trainer import release_engine

DATA_CHECKS_FILE = "data_checks.json"  # what the data looked like when the run trained


@dataclass
class RunResult:
    path: Path
    metrics: dict[str, Any]
    resources: dict[str, Any]
    predictor: Any  # the task's predictor around the in-memory model (Predictor, Tagger, Answerer, Generator)


def configure_run(config: RunConfig, processes: int | None = None) -> ConfiguredStrategy:
    """The run's strategy, resolved once, after every check that can fail before anything loads (`processes`: those
    that will train it, default this run's)."""
    if config.output is None:
        raise TunelabError("no output directory: pass --output DIR")
    check_serves_task(config.strategy.name, config.task)
    processes = processes or world_size()
    check_engine(config.training.distributed, config.strategy.name, processes, config.training.gradient_checkpointing)
    strategy = configure(config.strategy, config.training)
    check_shots(config.task, config.data.shots)
    check_prompt_settings(strategy.strategy, config.prompt != PromptConfig())
    recipe_for(config.task).check_training(config)
    resolve_precision(config.training.precision)
    check_micro_batch(config, processes)
    return strategy


def with_validated_options(config: RunConfig, strategy: ConfiguredStrategy) -> RunConfig:
    """The config with the options it sets as they were validated (typed; a fusion's source paths absolute), so
    that the run reloads the same way from any working directory."""
    given = strategy.options.model_dump(mode="json", include=set(config.strategy.options))
    return config.model_copy(update={"strategy": config.strategy.model_copy(update={"options": given})})


def budget(strategy: ConfiguredStrategy, config: RunConfig, examples: int) -> ConfiguredStrategy:
    """The strategy's default epochs raised to `training.min_steps` optimizer steps on `examples`; epochs the config
    sets are kept as they are (a user may want a short run)."""
    training = config.training
    return strategy if training.epochs else strategy.budgeted(examples, training.batch_size, training.min_steps)


def train_run(config: RunConfig, overwrite: bool = False, progress: bool = True,
              announce: Callable[[RenderableType], None] | None = None, resume: Resume = "auto") -> RunResult:
    """Train `config.strategy` on `config.data` for `config.task` and write a complete run directory to
    `config.output`: staged in a hidden folder and renamed into place only when complete. `announce` receives the
    data checks before training and, after it, a warning when the run did not learn. Under torchrun every process
    calls it; rank 0 writes the run and the others return a result without metrics.

    With `training.checkpoint_every`, an interrupted run's checkpoints stay in the staging folder and the same call
    resumes them (`resume`: auto; `require`, an error when there is nothing to resume; `restart`, discard them)."""
    say = announce or (lambda message: None)
    strategy = configure_run(config)
    config = with_validated_options(config, strategy)
    staged = StagedRun(Path(config.output), overwrite, resumable=resumable(config.training.checkpoint_every))
    recipe = recipe_for(config.task)
    prepared = recipe.prepare(config)
    config = prepared.config
    strategy = budget(strategy, config, len(prepared.splits.train))
    transformers.set_seed(config.training.seed)
    model, tokenizer = recipe.build(config, strategy, prepared.targets)
    checks = recipe.data_checks(prepared, tokenizer)
    if checks is not None:
        say(checks.table(f"{config.data.source}: the data"))
        for warning in checks.warnings:
            say(f"[yellow]warning:[/yellow] {escape(warning)}")
    with staged if is_main() else nullcontext():
        if is_main() and config.training.checkpoint_every:
            prepare_resume(staged, config, prepared.splits.train, resume, say)
        with inference_memory(config.training.eval_batch_size, "--eval-batch-size"):
            with PeakMemory() as memory:
                fitted = recipe.fit(model, tokenizer, prepared, strategy, staged.path / CHECKPOINTS, progress)
            release_engine()
            if not is_main():  # under torchrun the other processes only train; rank 0 measures and writes the run
                wait_for_each_other()
                return RunResult(staged.final, {}, {}, None)
            if fitted.gathered is not None:  # each process held a part of the weights: rank 0 needs them whole
                model = rebuilt(recipe, config, strategy, prepared.targets, fitted.gathered)
            model.eval()
            predictor = recipe.predictor(in_precision(model, resolve_precision(config.training.precision)),
                                         tokenizer, prepared.targets, config)
            test = fitted.test if fitted.test is not None else recipe.test(predictor, prepared, staged.path)
            latency = recipe.latency_ms(predictor, prepared.splits.test)
        log = dict(fitted.log)
        metrics = {"task": config.task, "test": test, **fitted.facts, **prepared.facts,
                   "train_examples": len(prepared.splits.train),
                   "validation_examples": len(prepared.splits.validation),
                   "training": {**training_facts(strategy, prepared), **log.pop("training", {})}, **log,
                   **verdict(recipe, prepared, test, say)}
        if checks is not None:
            write_json(staged.path / DATA_CHECKS_FILE, checks.as_dict())
        recipe.save_targets(prepared.targets, staged.path)
        resources = run_resources(model, fitted.timings, memory, strategy.save_delta(model, staged.path), latency)
        committed = commit(staged, config, metrics, resources)
    wait_for_each_other()
    return RunResult(committed, metrics, resources, predictor)


def rebuilt(recipe: Recipe, config: RunConfig, strategy: ConfiguredStrategy, targets: Any,
            trained: dict[str, Any]) -> nn.Module:
    """The run's model built again from the same seed, with the trained tensors gathered whole after an engine
    that split the weights (FSDP, ZeRO-3): the model that engine trained, whole in one process."""
    transformers.set_seed(config.training.seed)
    model, _ = recipe.build(config, strategy, targets)
    loaded = model.load_state_dict(trained, strict=False)
    untrained = [name for name, parameter in model.named_parameters()
                 if parameter.requires_grad and name in loaded.missing_keys]
    if loaded.unexpected_keys or untrained:
        raise TunelabError(f"the gathered weights do not fit the model: unexpected {loaded.unexpected_keys[:3]}, "
                           f"missing {untrained[:3]}")
    return model


def training_facts(strategy: ConfiguredStrategy, prepared: Prepared) -> dict[str, Any]:
    """How the run trained, as decided from its data and the hardware: epochs, optimizer steps, learning rate,
    selection metric, precision."""
    training = prepared.config.training
    steps = math.ceil(len(prepared.splits.train) / training.batch_size) * strategy.epochs
    return {"epochs": strategy.epochs, "optimizer_steps": math.ceil(steps), "learning_rate": strategy.learning_rate,
            "selected_on": prepared.selected_on, "precision": resolve_precision(training.precision)}


def verdict(recipe: Recipe, prepared: Prepared, test: dict[str, Any],
            say: Callable[[RenderableType], None]) -> dict[str, Any]:
    """The baseline that learns nothing and whether the run beat it, for the tasks that have one; a run that did
    not learn is announced with what to try."""
    baseline = recipe.baseline(prepared)
    if baseline is None:
        return {}
    problem = recipe.did_not_learn(test, baseline)
    if problem is not None:
        say(f"[yellow]warning:[/yellow] {escape(problem)}")
    return {"baseline": baseline, "learned": problem is None}


def commit(staged: StagedRun, config: RunConfig, metrics: dict[str, Any], resources: dict[str, Any]) -> Path:
    """What every run ends with, its delta saved: the Trainer's checkpoints removed unless kept (the delta holds
    what was learned; checkpoints may be full copies), the config, metrics and costs written, and the staged folder
    renamed into place. A process killed in between leaves a staged run that the next one trains again (the same
    way, to the same result)."""
    if not config.training.keep_checkpoints:
        shutil.rmtree(staged.path / CHECKPOINTS, ignore_errors=True)
    (staged.path / RESUME_FILE).unlink(missing_ok=True)
    write_run(staged.path, config, metrics, resources)
    return staged.commit()


@dataclass
class LoadedRun:
    config: RunConfig
    targets: Any  # what the model's outputs mean (labels, tags, a regression scale); None for the tasks without
    model: nn.Module
    tokenizer: Any

    @property
    def recipe(self) -> Recipe:
        return recipe_for(self.config.task)

    def predictor(self) -> Any:
        return self.recipe.predictor(self.model, self.tokenizer, self.targets, self.config)


def load_run(path: Path, precision: Precision = "auto", batch_size: int | None = None) -> LoadedRun:
    """Rebuild a trained model from its run directory (base model + saved delta), to predict in `precision` on this
    machine (whatever the run trained in), in batches of `batch_size` (default: the run's evaluation batch)."""
    require_run(path)
    verify_manifest(path)
    config = read_run_config(path)
    if batch_size is not None:
        config = config.model_copy(update={"training": config.training.model_copy(
            update={"eval_batch_size": batch_size})})
    recipe = recipe_for(config.task)
    strategy = configure(config.strategy, config.training)
    targets = recipe.load_targets(path)
    model, tokenizer = recipe.build(config, strategy, targets)
    strategy.load_delta(model, path)
    model.eval()
    return LoadedRun(config, targets, in_precision(model, resolve_precision(precision)), tokenizer)


def evaluate_run(run_dir: Path, source: str | None = None, text_column: str = "text", label_column: str = "label",
                 limit: int | None = None, precision: Precision = "auto",
                 batch_size: int | None = None) -> dict[str, Any]:
    """Metrics of a trained run on a dataset: its own test split by default, else every row of `source`; in batches
    of `batch_size` (default: the run's evaluation batch)."""
    run = load_run(run_dir, precision, batch_size)
    recipe = run.recipe
    if source is None:
        examples, name = recipe.test_examples(run.config), f"{run.config.data.source} (test split)"
    else:
        examples = recipe.read_examples(run.config, run.targets, source, text_column, label_column)
        name = source
    if limit is not None:
        examples = examples.iloc[:limit]
    with inference_memory(run.config.training.eval_batch_size, "--batch-size"):
        return recipe.score(run.predictor(), examples, name)
