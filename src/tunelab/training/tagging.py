"""Token-classification runs: train a `TokenClassifier` with any strategy, keep the epoch with the best validation
entity F1, score the test split and write the run; and score a saved run on its test split or on another file.

Every strategy trains through the encoder here, linear-probe included: its cache holds one vector per sentence,
and a tagger needs one per token, so the frozen encoder runs each epoch instead.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pandas as pd
import transformers
from transformers import DataCollatorForTokenClassification, PreTrainedTokenizerBase

from tunelab.config import RunConfig
from tunelab.data.splits import Splits, split_examples
from tunelab.data.tagged import check_known, check_tags, load_tagged
from tunelab.resources import PeakMemory, latency_per_example_ms
from tunelab.runs import CHECKPOINTS, LoadedRun, RunResult, StagedRun, build_model, commit_run
from tunelab.tasks.classification import LabelMap
from tunelab.tasks.tags import model_scheme, parse_tag, tag_set
from tunelab.tasks.token_classification import Tagger, TokenClassifier, tagged_dataset, validation_metrics
from tunelab.training.trainer import build_trainer, training_arguments


def load_tagged_splits(config: RunConfig) -> tuple[Splits, LabelMap, str]:
    """The run's sentences split as every task splits its examples, the tags the model learns (every entity type of
    the data, in the model's scheme), and the data's own scheme."""
    data = config.data
    sentences = load_tagged(data.source, data.tokens_column, data.tags_column)
    scheme = check_tags(sentences, data.tag_scheme, data.source)
    kinds = {parse_tag(tag)[1] for tags in sentences["tags"] for tag in tags} - {""}
    splits = split_examples(sentences, data.test_size, data.validation_size, data.split_seed,
                            data.limit_train, data.limit_eval, data.limit_validation)
    return splits, LabelMap(tag_set(kinds, model_scheme(scheme))), scheme


def fit_tagger(model: TokenClassifier, tokenizer: PreTrainedTokenizerBase, splits: Splits, tag_map: LabelMap,
               config: RunConfig, checkpoints: Path, progress: bool) -> dict[str, float]:
    """Train on the training split; the Trainer restores the epoch with the best validation entity F1."""
    training = config.training
    args = training_arguments(config, checkpoints, progress, best_metric="f1")
    train, validation = (tagged_dataset(tokenizer, part, tag_map, training.max_length)
                         for part in (splits.train, splits.validation))
    trainer = build_trainer(model, args, train, validation, DataCollatorForTokenClassification(tokenizer),
                            validation_metrics(tag_map.labels))
    start = time.perf_counter()
    trainer.train()
    return {"train_s": time.perf_counter() - start}


def train_tagger(config: RunConfig, staged: StagedRun, progress: bool) -> RunResult:
    splits, tag_map, scheme = load_tagged_splits(config)
    transformers.set_seed(config.training.seed)
    model, tokenizer = build_model(config, tag_map)
    with staged:
        with PeakMemory() as memory:
            timings = fit_tagger(model, tokenizer, splits, tag_map, config, staged.path / CHECKPOINTS, progress)
        tagger = configured_tagger(model, tokenizer, tag_map, config)
        metrics = {"test": tagger.score(splits.test), "tag_scheme": scheme, "train_examples": len(splits.train),
                   "validation_examples": len(splits.validation)}
        latency = latency_per_example_ms(lambda words: tagger.tag([words]), splits.test["tokens"][:32].tolist())
        tag_map.save(staged.path)
        return commit_run(staged, config, model, metrics, timings, memory, latency, tagger)


def configured_tagger(model: TokenClassifier, tokenizer: PreTrainedTokenizerBase, tag_map: LabelMap,
                      config: RunConfig) -> Tagger:
    """A tagger that reads as the run trained: its max_length, in batches of its eval batch size."""
    return Tagger(model, tokenizer, tag_map, config.training.max_length, config.training.eval_batch_size)


def load_tagger(run: LoadedRun) -> Tagger:
    return configured_tagger(run.model, run.tokenizer, run.label_map, run.config)


def evaluate_tagger(run_dir: Path, run: LoadedRun, source: str | None, limit: int | None) -> dict[str, Any]:
    """Entity metrics on the run's own test split, or on every sentence of `source`: its columns named as in the
    run's config, its scheme detected (the scores are entity-level, whichever scheme wrote the tags)."""
    data = run.config.data
    if source is None:
        sentences: pd.DataFrame = load_tagged_splits(run.config)[0].test
    else:
        sentences = load_tagged(source, data.tokens_column, data.tags_column)
        check_tags(sentences, "auto", source)
        check_known(sentences, run.label_map.labels, source)
    if limit is not None:
        sentences = sentences.iloc[:limit]
    return load_tagger(run).score(sentences)
