"""Supervised fine-tuning of a causal LM on prompt -> completion pairs, scored by held-out loss before and after."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase

from tunelab.config import RunConfig
from tunelab.data.splits import Splits
from tunelab.strategies.registry import get_strategy, parse_options
from tunelab.tasks.generation import CausalLM, held_out_loss, pair_collator, tokenize_pairs
from tunelab.training.trainer import build_trainer, training_arguments


def fit_generator(model: CausalLM, tokenizer: PreTrainedTokenizerBase, splits: Splits, config: RunConfig,
                  checkpoints: Path, progress: bool) -> tuple[dict[str, Any], dict[str, float]]:
    """Train on the completions, keep the epoch with the lowest validation loss; returns (metrics, timings).

    `base_test` is the untrained model's test loss (every strategy starts exactly at the base model), so a
    run shows by itself whether training helped."""
    strategy = get_strategy(config.strategy.name)
    training = config.training
    default_lr, default_epochs = strategy.training_defaults(parse_options(strategy, config.strategy.options))
    args = training_arguments(training, checkpoints, training.learning_rate or default_lr,
                              training.epochs or default_epochs, progress, best_metric="loss")
    encoded = {name: tokenize_pairs(part["prompt"].tolist(), part["completion"].tolist(), tokenizer,
                                    training.max_length)
               for name, part in vars(splits).items()}
    base = held_out_loss(model, encoded["test"], tokenizer, training.eval_batch_size)
    trainer = build_trainer(model, args, encoded["train"], encoded["validation"], pair_collator(tokenizer),
                            compute_metrics=None)
    start = time.perf_counter()
    trainer.train()
    timings = {"train_s": time.perf_counter() - start}
    metrics = {"test": held_out_loss(model, encoded["test"], tokenizer, training.eval_batch_size),
               "base_test": base, "train_examples": len(splits.train),
               "validation_examples": len(splits.validation)}
    return metrics, timings
