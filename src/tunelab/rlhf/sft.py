"""Supervised fine-tuning, the first RLHF stage: TRL's `SFTTrainer` on language-modelling text, chat `messages`
or prompt-completion pairs (TRL applies the chat template, and puts the loss on completions only), with a tunelab
strategy on the causal LM.

The run is an ordinary generation run (config.yaml with `task: generation`, the strategy's delta), so `load_run`
and `tunelab generate` read it, and the later stages can start from it.
"""

from __future__ import annotations

import math
import shutil
import time
from pathlib import Path
from typing import Any

import datasets
import pandas as pd
import torch
from trl import SFTConfig, SFTTrainer

from tunelab.config import RunConfig, to_yaml
from tunelab.errors import TunelabError
from tunelab.resources import PeakMemory, bytes_on_disk
from tunelab.runs import (
    CONFIG_FILE,
    METRICS_FILE,
    RESOURCES_FILE,
    StagedRun,
    build_generator,
    write_json,
    write_text_atomic,
)
from tunelab.strategies.base import count_parameters
from tunelab.strategies.catalog import TRL_STRATEGIES
from tunelab.strategies.registry import get_strategy, parse_options
from tunelab.training.trainer import TRL_SCRATCH, quiet_when_asked, trl_quiet, trl_stage_settings


def _held_out(trainer: SFTTrainer) -> dict[str, float]:
    loss = trainer.evaluate()["eval_loss"]
    return {"loss": loss, "perplexity": math.exp(loss)}


def train_sft(config: RunConfig, train: pd.DataFrame, test: pd.DataFrame, overwrite: bool = False,
              progress: bool = True) -> dict[str, Any]:
    """Fine-tune `config.model` with `config.strategy` on `train`; held-out loss before and after on `test`."""
    if config.strategy.name not in TRL_STRATEGIES:
        raise TunelabError(f"rlhf sft trains with {', '.join(TRL_STRATEGIES)}; strategy {config.strategy.name} keeps "
                           f"weights outside the LM that TRL's trainer sees")
    strategy = get_strategy(config.strategy.name)
    options = parse_options(strategy, config.strategy.options)
    staged = StagedRun(Path(config.output), overwrite)
    torch.manual_seed(config.training.seed)
    model, tokenizer = build_generator(config)
    learning_rate, epochs = strategy.training_defaults(options)
    training = config.training
    with staged, trl_quiet(progress):
        args = SFTConfig(num_train_epochs=training.epochs or epochs,
                         learning_rate=training.learning_rate or learning_rate,
                         per_device_train_batch_size=training.batch_size,
                         per_device_eval_batch_size=training.eval_batch_size, max_length=training.max_length,
                         seed=training.seed, logging_steps=training.logging_steps,
                         **trl_stage_settings(staged.path, progress))
        trainer = quiet_when_asked(SFTTrainer(model=model.backbone, args=args, processing_class=tokenizer,
                                              train_dataset=datasets.Dataset.from_pandas(train),
                                              eval_dataset=datasets.Dataset.from_pandas(test)))
        base = _held_out(trainer)
        start = time.perf_counter()
        with PeakMemory() as memory:
            trainer.train()
        train_s = time.perf_counter() - start
        shutil.rmtree(staged.path / TRL_SCRATCH, ignore_errors=True)
        metrics = {"test": _held_out(trainer), "base_test": base, "train_examples": len(train),
                   "validation_examples": 0}
        delta = strategy.save_delta(model, options, staged.path)
        trainable, total = count_parameters(model)
        write_text_atomic(staged.path / CONFIG_FILE, to_yaml(config))
        write_json(staged.path / METRICS_FILE, metrics)
        write_json(staged.path / RESOURCES_FILE, {
            "trainable_parameters": trainable, "total_parameters": total, "trainable_share": trainable / total,
            "train_s": round(train_s, 3), "peak_memory_bytes": memory.peak_bytes, "delta_bytes": bytes_on_disk(delta),
        })
        staged.commit()
    return metrics
