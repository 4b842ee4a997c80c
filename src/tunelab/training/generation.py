"""Supervised fine-tuning of a causal LM on prompt -> completion pairs or chat conversations, scored by held-out
loss, perplexity and ROUGE-L before and after."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase

from tunelab.config import RunConfig
from tunelab.data.splits import Splits
from tunelab.tasks.generation import CausalLM, pair_collator, tokenize_examples
from tunelab.tasks.generation_scores import HeldOut, held_out_set, score
from tunelab.training.trainer import best_device, build_trainer, training_arguments


def fit_generator(model: CausalLM, tokenizer: PreTrainedTokenizerBase, splits: Splits, config: RunConfig,
                  checkpoints: Path, progress: bool) -> tuple[dict[str, Any], dict[str, float]]:
    """Train on the answers, keep the epoch with the lowest validation loss; returns (metrics, timings).

    `base_test` is the untrained model's test scores (every strategy starts exactly at the base model), so a
    run shows by itself whether training helped."""
    training = config.training
    args = training_arguments(config, checkpoints, progress, best_metric="loss")
    source = config.data.source
    encoded = {name: tokenize_examples(getattr(splits, name), tokenizer, training.max_length, source)
               for name in ("train", "validation")}
    test = held_out_set(splits.test, tokenizer, training.max_length, source, config.generation.rouge_examples)
    model.to(best_device())  # the Trainer would move it there anyway; the base scores are measured there too
    base = _score(model, tokenizer, test, config)
    trainer = build_trainer(model, args, encoded["train"], encoded["validation"], pair_collator(tokenizer),
                            compute_metrics=None)
    start = time.perf_counter()
    trainer.train()
    timings = {"train_s": time.perf_counter() - start}
    metrics = {"test": _score(model, tokenizer, test, config), "base_test": base, "train_examples": len(splits.train),
               "validation_examples": len(splits.validation)}
    return metrics, timings


def _score(model: CausalLM, tokenizer: PreTrainedTokenizerBase, test: HeldOut, config: RunConfig) -> dict[str, float]:
    return score(model, tokenizer, test, config.training.eval_batch_size, config.generation.max_new_tokens)
