"""The library entry points that the CLI wraps: train a run, evaluate it, predict with it."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import transformers
from transformers import DataCollatorWithPadding

from tunelab.assets.datasets import CATALOG
from tunelab.config import PromptConfig, RunConfig, StrategyConfig
from tunelab.data.loading import load_examples
from tunelab.data.messages import load_generation_examples
from tunelab.data.splits import Splits, few_shot, split_examples
from tunelab.errors import TunelabError
from tunelab.export import is_export, load_export
from tunelab.predict import Predictor
from tunelab.resources import PeakMemory, latency_per_example_ms
from tunelab.runs import (
    CHECKPOINTS,
    LoadedRun,
    RunResult,
    StagedRun,
    build_classifier,
    build_generator,
    commit_run,
    load_run,
    resolve_prompt,
    template_fields,
)
from tunelab.strategies.base import count_parameters
from tunelab.strategies.catalog import check_serves_task
from tunelab.strategies.registry import check_prompt_settings, get_strategy, parse_options
from tunelab.task_names import check_shots
from tunelab.tasks.classification import FeatureClassifier, LabelMap
from tunelab.tasks.conversation import context_ids
from tunelab.tasks.generation import CausalLM, contexts_and_references, generate
from tunelab.tasks.generation_scores import held_out_set, score
from tunelab.tasks.inputs import input_encoder
from tunelab.tasks.regression import TargetScale, numeric_targets
from tunelab.tasks.span_postprocess import Answer
from tunelab.tasks.token_classification import Tagger
from tunelab.training.features import extract_features
from tunelab.training.generation import fit_generator
from tunelab.training.question_answering import evaluate_span_extractor, run_answerer, train_span_extractor
from tunelab.training.tagging import evaluate_tagger, load_tagger, train_tagger
from tunelab.training.trainer import (
    FeatureDataset,
    best_device,
    build_trainer,
    by_length,
    encode_examples,
    in_original_order,
    training_arguments,
)


def load_generation_splits(config: RunConfig) -> Splits:
    data = config.data
    examples = load_generation_examples(data.source, data.prompt_column, data.completion_column, data.messages_column)
    return split_examples(examples, data.test_size, data.validation_size, data.split_seed,
                          data.limit_train, data.limit_eval, data.limit_validation)


def load_sentence_examples(source: str, text_column: str, label_column: str, task: str,
                           fields: tuple[str, ...] = ()) -> pd.DataFrame:
    """Texts with their labels (classification) or numeric targets (regression)."""
    examples = load_examples(source, text_column, label_column, fields)
    return numeric_targets(examples, source) if task == "regression" else examples


def load_splits(config: RunConfig) -> tuple[Splits, LabelMap | TargetScale]:
    """The splits of a sentence task, and its targets: the label map, or the regression targets' scale."""
    data = config.data
    examples = load_sentence_examples(data.source, data.text_column, data.label_column, config.task,
                                      template_fields(config))
    splits = split_examples(examples, data.test_size, data.validation_size, data.split_seed,
                            data.limit_train, data.limit_eval, data.limit_validation)
    if config.task == "regression":
        return splits, TargetScale.fit(splits.train["label"])
    if data.shots is not None:
        splits = few_shot(splits, data.shots, config.training.seed)
    preferred = CATALOG[data.source].labels if data.source in CATALOG else ()
    return splits, LabelMap.from_values(examples["label"].tolist(), preferred)


def _fit(model, tokenizer, splits: Splits, targets: LabelMap | TargetScale, config: RunConfig, checkpoints: Path,
         progress: bool) -> tuple[np.ndarray, dict[str, float]]:
    """Train on token ids, or on cached sentence vectors when the strategy freezes the encoder.

    Returns the test logits and the timings; a model with nothing to train (zero-shot) only predicts."""
    training = config.training
    if count_parameters(model)[0] == 0:
        start = time.perf_counter()
        logits = Predictor(model, tokenizer, targets, training.max_length).logits(splits.test)
        return logits, {"feature_extraction_s": 0.0, "train_s": 0.0, "predict_s": time.perf_counter() - start}
    args = training_arguments(config, checkpoints, progress, targets.best_metric)
    encode = input_encoder(model, tokenizer, training.max_length)
    encoded = {name: encode_examples(encode, part, targets.encode(part["label"].tolist(), name))
               for name, part in vars(splits).items()}
    timings = {"feature_extraction_s": 0.0}
    strategy = get_strategy(config.strategy.name)
    if strategy.trains_on_features(parse_options(strategy, config.strategy.options)):
        start = time.perf_counter()
        vectors = {name: FeatureDataset(extract_features(model, data, tokenizer, training.eval_batch_size,
                                                         f"encoding {name}", progress), data["labels"])
                   for name, data in encoded.items()}
        timings["feature_extraction_s"] = time.perf_counter() - start
        trainer = build_trainer(FeatureClassifier(model.head), args, vectors["train"], vectors["validation"], None,
                                targets.validation_metrics)
        test, order = vectors["test"], np.arange(len(vectors["test"]))
    else:
        validation, _ = by_length(encoded["validation"])  # the validation metric does not depend on the order
        trainer = build_trainer(model, args, encoded["train"], validation, DataCollatorWithPadding(tokenizer),
                                targets.validation_metrics)
        test, order = by_length(encoded["test"])
    start = time.perf_counter()
    trainer.train()
    timings["train_s"] = timings["feature_extraction_s"] + time.perf_counter() - start
    return in_original_order(trainer.predict(test).predictions, order), timings


def _train_generator(config: RunConfig, staged: StagedRun, progress: bool) -> RunResult:
    splits = load_generation_splits(config)
    transformers.set_seed(config.training.seed)
    model, tokenizer = build_generator(config)
    with staged:
        with PeakMemory() as memory:
            metrics, timings = fit_generator(model, tokenizer, splits, config, staged.path / CHECKPOINTS, progress)
        device = next(model.parameters()).device
        prompts = [torch.tensor([context_ids(tokenizer, context)], device=device)
                   for context in contexts_and_references(splits.test.iloc[:32])[0]]
        latency = latency_per_example_ms(lambda ids: model(input_ids=ids, attention_mask=torch.ones_like(ids)),
                                         prompts)
        return commit_run(staged, config, model, metrics, timings, memory, latency)


def train(config: RunConfig, overwrite: bool = False, progress: bool = True) -> RunResult:
    """Train `config.strategy` on `config.data` and write a complete run directory to `config.output`."""
    if config.output is None:
        raise TunelabError("no output directory: pass --output DIR")
    strategy = get_strategy(config.strategy.name)
    parse_options(strategy, config.strategy.options)  # a bad option fails before anything loads
    check_serves_task(strategy.name, config.task)
    check_shots(config.task, config.data.shots)
    check_prompt_settings(strategy, config.prompt != PromptConfig())
    staged = StagedRun(Path(config.output), overwrite)
    return TRAINERS[config.task](config, staged, progress)


def _train_sentence_task(config: RunConfig, staged: StagedRun, progress: bool) -> RunResult:
    """Classification and regression: one vector per text, a head on it; they differ only in their targets."""
    splits, targets = load_splits(config)
    labels = targets if isinstance(targets, LabelMap) else None
    if labels is not None:
        config = resolve_prompt(config, labels.labels)
    transformers.set_seed(config.training.seed)
    model, tokenizer = build_classifier(config, labels)
    with staged:
        with PeakMemory() as memory:
            test_logits, timings = _fit(model, tokenizer, splits, targets, config, staged.path / CHECKPOINTS,
                                        progress)
        model.eval()
        metrics = {"test": targets.metrics(test_logits, splits.test["label"].tolist(), "test split"),
                   "train_examples": len(splits.train), "validation_examples": len(splits.validation)}
        predictor = Predictor(model, tokenizer, targets, config.training.max_length)
        one_at_a_time = [splits.test.iloc[[index]] for index in range(min(32, len(splits.test)))]
        latency = latency_per_example_ms(predictor.logits, one_at_a_time)
        targets.save(staged.path)
        return commit_run(staged, config, model, metrics, timings, memory, latency, predictor)


TaskTrainer = Callable[[RunConfig, StagedRun, bool], RunResult]
# task -> how a run of it trains; every one stages its run directory and commits it only when complete
TRAINERS: dict[str, TaskTrainer] = {
    "classification": _train_sentence_task,
    "regression": _train_sentence_task,
    "generation": _train_generator,
    "question-answering": train_span_extractor,
    "token-classification": train_tagger,
}


def zero_shot(config: RunConfig) -> dict[str, Any]:
    """Test-split metrics of the pre-trained language model asked through the config's template and label
    words, without writing a run (`train` with strategy zero-shot writes one)."""
    config = config.model_copy(update={"strategy": StrategyConfig(name="zero-shot")})
    splits, label_map = load_splits(config)
    model, tokenizer = build_classifier(config, label_map)
    return Predictor(model, tokenizer, label_map, config.training.max_length).score(splits.test, "test split")


def load_predictor(run_dir: Path) -> Predictor | Tagger:
    """A trained run, or a merged export of one (`tunelab export --merge`), ready to predict; a token-classification
    run's predictor finds entities."""
    if is_export(run_dir):
        return load_export(run_dir)
    run = load_run(run_dir)
    if run.config.task == "generation":
        raise TunelabError(f"{run_dir} is a generation run: use `tunelab generate {run_dir} PROMPT`")
    if run.config.task == "question-answering":
        raise TunelabError(f"{run_dir} is a question-answering run: ask it questions about a passage, "
                           f"`tunelab predict {run_dir} QUESTION --context PASSAGE`")
    if run.config.task == "token-classification":
        return load_tagger(run)
    return _sentence_predictor(run_dir, run)


def answer_questions(run_dir: Path, questions: list[str], context: str) -> list[Answer]:
    """A question-answering run's answers (text, character span, score) to questions about one passage."""
    run = load_run(run_dir)
    if run.config.task != "question-answering":
        raise TunelabError(f"{run_dir} is a {run.config.task} run; --context is for question-answering runs")
    return run_answerer(run).ask(questions, context)


def _sentence_predictor(run_dir: Path, run: LoadedRun) -> Predictor:
    targets = TargetScale.load(run_dir) if run.config.task == "regression" else run.label_map
    return Predictor(run.model, run.tokenizer, targets, run.config.training.max_length)


def load_generator(run_dir: Path, purpose: str = "generate") -> tuple[CausalLM, Any]:
    """The causal LM of a generation run (`train --task generation`, `rlhf sft`) or of a PPO/DPO policy run, and its
    tokenizer, the model on the fastest device there is; `purpose` names the command in the error for any other run."""
    from tunelab.rlhf.policy import is_policy_run, load_policy

    if is_policy_run(run_dir):
        policy = load_policy(run_dir)
        return policy.model.to(best_device()), policy.tokenizer
    run = load_run(run_dir)
    if run.config.task != "generation":
        raise TunelabError(f"{run_dir} is a {run.config.task} run; {purpose} needs one trained with --task generation "
                           f"or an RLHF run")
    return run.model.to(best_device()), run.tokenizer


def generate_text(run_dir: Path, prompt: str, max_new_tokens: int = 64, temperature: float = 0.0,
                  seed: int = 0, continuation: bool = False) -> str:
    """The answer of a generation run's model to one prompt (greedy at temperature 0); with `continuation`, the
    text that follows the prompt, without the chat template."""
    model, tokenizer = load_generator(run_dir)
    return generate(model, tokenizer, prompt, max_new_tokens, temperature, seed, continuation)


def _evaluate_generator(run_dir: Path, run: LoadedRun, source: str | None, limit: int | None) -> dict[str, Any]:
    """Held-out loss and perplexity of the answers of the run's test split, or of every row of `source`, and
    ROUGE-L of the model's greedy answers to the first `generation.rouge_examples` of them."""
    data, training, generation = run.config.data, run.config.training, run.config.generation
    if source is None and data.source == "movie-sentiment":
        raise TunelabError(f"{run_dir} is an `rlhf sft` run of the movie-sentiment preset: its held-out loss "
                           f"is in its metrics.json (`tunelab summary`); pass --data FILE with prompt and completion "
                           f"columns to evaluate it on other data")
    if source is None:
        examples = load_generation_splits(run.config).test
    else:
        examples = load_generation_examples(source, data.prompt_column, data.completion_column, data.messages_column)
    if limit is not None:
        examples = examples.iloc[:limit]
    held_out = held_out_set(examples, run.tokenizer, training.max_length, source or data.source,
                            generation.rouge_examples)
    return score(run.model.to(best_device()), run.tokenizer, held_out, training.eval_batch_size,
                 generation.max_new_tokens)


# task -> how its runs are scored on their own test split or on every row of a file; classification is the default
EVALUATORS: dict[str, Callable[[Path, LoadedRun, str | None, int | None], dict[str, Any]]] = {
    "generation": _evaluate_generator,
    "question-answering": evaluate_span_extractor,
    "token-classification": evaluate_tagger,
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
        examples = load_sentence_examples(source, text_column, label_column, run.config.task,
                                          template_fields(run.config))
        name = source
    if limit is not None:
        examples = examples.iloc[:limit]
    return _sentence_predictor(run_dir, run).score(examples, name)
