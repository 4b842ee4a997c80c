"""Supervised fine-tuning, the first RLHF stage: TRL's `SFTTrainer` on language-modelling text, chat `messages`
or prompt-completion pairs (TRL applies the chat template, and puts the loss on completions only), with a tunelab
strategy on the causal LM.

The run is an ordinary generation run (config.yaml with `task: generation`, the strategy's delta), so `load_run`
and `tunelab generate` read it, and the later stages can start from it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import datasets
import pandas as pd
import torch
from trl import SFTConfig, SFTTrainer

from tunelab.config import RunConfig, to_yaml
from tunelab.errors import TunelabError
from tunelab.ranks import is_main
from tunelab.runs import CONFIG_FILE, StagedRun, write_text_atomic
from tunelab.strategies.catalog import TRL_STRATEGIES
from tunelab.strategies.registry import configure
from tunelab.task_catalog import recipe_for
from tunelab.training.resume import Resume, prepare_resume, resumable
from tunelab.training.trainer import quiet_when_asked
from tunelab.training.trl_stage import commit_stage, staged_on_main, train_stage, trl_quiet, trl_stage_settings


def _held_out(trainer: SFTTrainer) -> dict[str, float]:
    loss = trainer.evaluate()["eval_loss"]
    return {"loss": loss, "perplexity": math.exp(loss)}


def train_sft(config: RunConfig, train: pd.DataFrame, test: pd.DataFrame, overwrite: bool = False,
              progress: bool = True, resume: Resume = "auto") -> dict[str, Any]:
    """Fine-tune `config.model` with `config.strategy` on `train`; held-out loss before and after on `test`. Under
    torchrun every process trains and evaluates; the first one writes the run. With `training.checkpoint_every`, an
    interrupted run resumes as `train`'s does."""
    if config.strategy.name not in TRL_STRATEGIES:
        raise TunelabError(f"rlhf sft trains with {', '.join(TRL_STRATEGIES)}; strategy {config.strategy.name} keeps "
                           f"weights outside the LM that TRL's trainer sees")
    strategy = configure(config.strategy, config.training)
    training = config.training
    staged = StagedRun(Path(config.output), overwrite, resumable=resumable(training.checkpoint_every))
    torch.manual_seed(training.seed)
    model, tokenizer = recipe_for("generation").build(config, strategy, None)
    with staged_on_main(staged), trl_quiet(progress):
        if is_main() and training.checkpoint_every:
            prepare_resume(staged, config, train, resume)
        args = SFTConfig(num_train_epochs=strategy.epochs, learning_rate=strategy.learning_rate,
                         max_length=training.max_length, seed=training.seed, logging_steps=training.logging_steps,
                         **trl_stage_settings(staged.path, progress, training.precision, training.batch_size,
                                              training.eval_batch_size, training.checkpoint_every))
        trainer = quiet_when_asked(SFTTrainer(model=model.backbone, args=args, processing_class=tokenizer,
                                              train_dataset=datasets.Dataset.from_pandas(train),
                                              eval_dataset=datasets.Dataset.from_pandas(test)))
        base = _held_out(trainer)
        timings, memory = train_stage(trainer, staged)
        metrics = {"task": "generation", "test": _held_out(trainer), "base_test": base, "train_examples": len(train),
                   "validation_examples": 0}
        if not is_main():
            return metrics
        delta = strategy.save_delta(model, staged.path)
        write_text_atomic(staged.path / CONFIG_FILE, to_yaml(config))
        commit_stage(staged, model, metrics, timings, memory, delta)
    return metrics
