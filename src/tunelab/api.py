"""The library entry points that the CLI wraps: train a run, evaluate it, predict with it."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import transformers
from pydantic import BaseModel
from transformers import DataCollatorWithPadding

from tunelab.assets.datasets import CATALOG
from tunelab.config import PromptConfig, RunConfig, StrategyConfig
from tunelab.data.loading import load_examples, load_prompt_completions
from tunelab.data.splits import Splits, few_shot, split_examples
from tunelab.errors import TunelabError
from tunelab.export import is_export, load_export
from tunelab.predict import Predictor
from tunelab.runs import (
    LABELS_FILE,
    LoadedRun,
    RunResult,
    StagedRun,
    build_classifier,
    build_generator,
    load_run,
    resolve_prompt,
    template_fields,
    write_json,
    write_run,
)
from tunelab.strategies.base import Strategy, count_parameters
from tunelab.strategies.registry import check_prompt_settings, get_strategy, parse_options
from tunelab.tasks.classification import FeatureClassifier, LabelMap, classification_metrics
from tunelab.tasks.generation import generate, held_out_loss, prompt_ids, tokenize_pairs
from tunelab.tasks.inputs import input_encoder
from tunelab.tasks.support import check_serves_task
from tunelab.training.features import extract_features
from tunelab.training.generation import fit_generator
from tunelab.training.resources import PeakMemory, latency_per_example_ms, run_resources
from tunelab.training.trainer import (
    FeatureDataset,
    build_trainer,
    by_length,
    encode_examples,
    in_original_order,
    training_arguments,
)


def load_generation_splits(config: RunConfig) -> Splits:
    data = config.data
    examples = load_prompt_completions(data.source, data.prompt_column, data.completion_column)
    return split_examples(examples, data.test_size, data.validation_size, data.split_seed,
                          data.limit_train, data.limit_eval, data.limit_validation)


def load_splits(config: RunConfig) -> tuple[Splits, LabelMap]:
    data = config.data
    examples = load_examples(data.source, data.text_column, data.label_column, template_fields(config))
    splits = split_examples(examples, data.test_size, data.validation_size, data.split_seed,
                            data.limit_train, data.limit_eval, data.limit_validation)
    if data.shots is not None:
        splits = few_shot(splits, data.shots, config.training.seed)
    preferred = CATALOG[data.source].labels if data.source in CATALOG else ()
    return splits, LabelMap.from_values(examples["label"].tolist(), preferred)


def _fit(model, tokenizer, splits: Splits, label_map: LabelMap, config: RunConfig, on_features: bool,
         checkpoints: Path, progress: bool) -> tuple[np.ndarray, dict[str, float]]:
    """Train on token ids, or on cached sentence vectors when the strategy freezes the encoder.

    Returns the test logits and the timings; a model with nothing to train (zero-shot) only predicts."""
    training = config.training
    if count_parameters(model)[0] == 0:
        start = time.perf_counter()
        logits = Predictor(model, tokenizer, label_map, training.max_length).logits(splits.test)
        return logits, {"feature_extraction_s": 0.0, "train_s": 0.0, "predict_s": time.perf_counter() - start}
    strategy = get_strategy(config.strategy.name)
    default_lr, default_epochs = strategy.training_defaults(parse_options(strategy, config.strategy.options))
    args = training_arguments(training, checkpoints, training.learning_rate or default_lr,
                              training.epochs or default_epochs, progress)
    encode = input_encoder(model, tokenizer, training.max_length)
    encoded = {name: encode_examples(encode, part, label_map.encode(part["label"].tolist(), name))
               for name, part in vars(splits).items()}
    timings = {"feature_extraction_s": 0.0}
    if on_features:
        start = time.perf_counter()
        vectors = {name: FeatureDataset(extract_features(model, data, tokenizer, training.eval_batch_size,
                                                         f"encoding {name}", progress), data["labels"])
                   for name, data in encoded.items()}
        timings["feature_extraction_s"] = time.perf_counter() - start
        trainer = build_trainer(FeatureClassifier(model.head), args, vectors["train"], vectors["validation"], None)
        test, order = vectors["test"], np.arange(len(vectors["test"]))
    else:
        validation, _ = by_length(encoded["validation"])  # accuracy does not depend on the order
        trainer = build_trainer(model, args, encoded["train"], validation, DataCollatorWithPadding(tokenizer))
        test, order = by_length(encoded["test"])
    start = time.perf_counter()
    trainer.train()
    timings["train_s"] = timings["feature_extraction_s"] + time.perf_counter() - start
    return in_original_order(trainer.predict(test).predictions, order), timings


def _train_generator(config: RunConfig, strategy: Strategy, options: BaseModel, staged: StagedRun,
                     progress: bool) -> RunResult:
    splits = load_generation_splits(config)
    transformers.set_seed(config.training.seed)
    model, tokenizer = build_generator(config)
    with staged:
        with PeakMemory() as memory:
            metrics, timings = fit_generator(model, tokenizer, splits, config, staged.path / "checkpoints", progress)
        if not config.training.keep_checkpoints:
            shutil.rmtree(staged.path / "checkpoints", ignore_errors=True)
        delta_files = strategy.save_delta(model, options, staged.path)
        prompts = [torch.tensor([prompt_ids(tokenizer, prompt)]) for prompt in splits.test["prompt"][:32]]
        latency = latency_per_example_ms(lambda ids: model(input_ids=ids, attention_mask=torch.ones_like(ids)),
                                         prompts)
        resources = run_resources(model, timings, memory, delta_files, latency)
        write_run(staged.path, config, metrics, resources)
        path = staged.commit()
    return RunResult(path, metrics, resources, None)


def train(config: RunConfig, overwrite: bool = False, progress: bool = True) -> RunResult:
    """Train `config.strategy` on `config.data` and write a complete run directory to `config.output`."""
    if config.output is None:
        raise TunelabError("no output directory: pass --output DIR")
    strategy = get_strategy(config.strategy.name)
    options = parse_options(strategy, config.strategy.options)
    check_serves_task(strategy.name, config.task)
    check_prompt_settings(strategy, config.prompt != PromptConfig())
    staged = StagedRun(Path(config.output), overwrite)
    return TRAINERS[config.task](config, strategy, options, staged, progress)


def _train_classifier(config: RunConfig, strategy: Strategy, options: BaseModel, staged: StagedRun,
                      progress: bool) -> RunResult:
    splits, label_map = load_splits(config)
    config = resolve_prompt(config, label_map.labels)
    transformers.set_seed(config.training.seed)
    model, tokenizer = build_classifier(config, label_map)
    with staged:
        with PeakMemory() as memory:
            test_logits, timings = _fit(model, tokenizer, splits, label_map, config,
                                        strategy.trains_on_features(options), staged.path / "checkpoints", progress)
        if not config.training.keep_checkpoints:  # the delta holds what was learned; these are full copies
            shutil.rmtree(staged.path / "checkpoints", ignore_errors=True)
        model.eval()
        test_ids = np.array(label_map.encode(splits.test["label"].tolist(), "test split"))
        metrics = {"test": classification_metrics(test_logits, test_ids, label_map),
                   "train_examples": len(splits.train), "validation_examples": len(splits.validation)}
        delta_files = strategy.save_delta(model, options, staged.path)
        predictor = Predictor(model, tokenizer, label_map, config.training.max_length)
        one_at_a_time = [splits.test.iloc[[index]] for index in range(min(32, len(splits.test)))]
        latency = latency_per_example_ms(predictor.logits, one_at_a_time)
        resources = run_resources(model, timings, memory, delta_files, latency)
        write_json(staged.path / LABELS_FILE, label_map.labels)
        write_run(staged.path, config, metrics, resources)
        path = staged.commit()
    return RunResult(path, metrics, resources, predictor)


Trainer = Callable[[RunConfig, Strategy, BaseModel, StagedRun, bool], RunResult]
# task -> how a run of it trains; every one stages its run directory and commits it only when complete
TRAINERS: dict[str, Trainer] = {
    "classification": _train_classifier,
    "generation": _train_generator,
}


def _score(predictor: Predictor, examples: pd.DataFrame, name: str) -> dict[str, Any]:
    """Classification metrics of `predictor` on labelled `examples` (`name` says where they came from)."""
    label_ids = np.array(predictor.label_map.encode(examples["label"].tolist(), name))
    return classification_metrics(predictor.logits(examples), label_ids, predictor.label_map)


def zero_shot(config: RunConfig) -> dict[str, Any]:
    """Test-split metrics of the pre-trained language model asked through the config's template and label
    words, without writing a run (`train` with strategy zero-shot writes one)."""
    config = config.model_copy(update={"strategy": StrategyConfig(name="zero-shot")})
    splits, label_map = load_splits(config)
    model, tokenizer = build_classifier(config, label_map)
    return _score(Predictor(model, tokenizer, label_map, config.training.max_length), splits.test, "test split")


def load_predictor(run_dir: Path) -> Predictor:
    """A trained run, or a merged export of one (`tunelab export --merge`), ready to predict."""
    if is_export(run_dir):
        return load_export(run_dir)
    run = load_run(run_dir)
    if run.config.task == "generation":
        raise TunelabError(f"{run_dir} is a generation run: use `tunelab generate {run_dir} PROMPT`")
    return Predictor(run.model, run.tokenizer, run.label_map, run.config.training.max_length)


def generate_text(run_dir: Path, prompt: str, max_new_tokens: int = 64, temperature: float = 0.0,
                  seed: int = 0, continuation: bool = False) -> str:
    """The answer of a generation run's model to one prompt (greedy at temperature 0); with `continuation`, the
    text that follows the prompt, without the chat template."""
    from tunelab.rlhf.policy import is_policy_run, load_policy

    if is_policy_run(run_dir):
        policy = load_policy(run_dir)
        return generate(policy.model, policy.tokenizer, prompt, max_new_tokens, temperature, seed, continuation)
    run = load_run(run_dir)
    if run.config.task != "generation":
        raise TunelabError(f"{run_dir} is a {run.config.task} run; generate needs one trained with --task generation")
    return generate(run.model, run.tokenizer, prompt, max_new_tokens, temperature, seed, continuation)


def _evaluate_generator(run_dir: Path, run: LoadedRun, source: str | None, limit: int | None) -> dict[str, Any]:
    """Held-out loss and perplexity on the completions of the run's test split, or of every row of `source`."""
    data = run.config.data
    if source is None and data.source == "movie-sentiment":
        raise TunelabError(f"{run_dir} is an `rlhf sft` run of the movie-sentiment preset: its held-out loss "
                           f"is in its metrics.json (`tunelab summary`); pass --data FILE with prompt and completion "
                           f"columns to evaluate it on other data")
    if source is None:
        examples = load_generation_splits(run.config).test
    else:
        examples = load_prompt_completions(source, data.prompt_column, data.completion_column)
    if limit is not None:
        examples = examples.iloc[:limit]
    pairs = tokenize_pairs(examples["prompt"].tolist(), examples["completion"].tolist(), run.tokenizer,
                           run.config.training.max_length)
    return held_out_loss(run.model, pairs, run.tokenizer, run.config.training.eval_batch_size)


# task -> how its runs are scored on their own test split or on every row of a file; classification is the default
EVALUATORS: dict[str, Callable[[Path, LoadedRun, str | None, int | None], dict[str, Any]]] = {
    "generation": _evaluate_generator,
}


def evaluate(run_dir: Path, source: str | None = None, text_column: str = "text", label_column: str = "label",
             limit: int | None = None) -> dict[str, Any]:
    """Metrics of a trained run on a dataset: its own test split by default, else every row of `source`."""
    run = load_run(run_dir)
    if run.config.task in EVALUATORS:
        return EVALUATORS[run.config.task](run_dir, run, source, limit)
    if source is None:
        splits, _ = load_splits(run.config)
        examples, name = splits.test, f"{run.config.data.source} (test split)"
    else:
        examples, name = load_examples(source, text_column, label_column, template_fields(run.config)), source
    if limit is not None:
        examples = examples.iloc[:limit]
    return _score(Predictor(run.model, run.tokenizer, run.label_map, run.config.training.max_length), examples, name)
