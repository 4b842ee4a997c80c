"""Build a Hugging Face `Trainer` for a classifier from plain arguments.

The Trainer brings checkpointing, gradient accumulation, mixed precision, distributed launch and
logging; tunelab only decides the arguments and the data it sees.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pandas as pd
import torch
from safetensors.torch import save_file
from torch import nn
from transformers import (
    EvalPrediction,
    PreTrainedModel,
    PrinterCallback,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)
from transformers.integrations.deepspeed import unset_hf_deepspeed_config

from tunelab.batching import LengthBucketSampler, random_order_padding_share
from tunelab.config import RunConfig
from tunelab.engines import engine
from tunelab.errors import TunelabError
from tunelab.precision import device_type, resolve_precision, trainer_flags
from tunelab.ranks import per_process, world_size
from tunelab.strategies.catalog import entry
from tunelab.strategies.registry import ConfiguredStrategy

CHECKPOINT_WEIGHTS = "model.safetensors"  # the name Trainer looks for when it restores the best epoch
# `group_by_length: auto` groups a training set whose random batches would be at least this much padding: below
# it, grouping saves little and only changes the order (movie snippets at batch 32: 48% padding).
GROUPING_PADDING_SHARE = 0.2


def length_grouping(setting: str, strategy: str) -> str:
    """`auto` stays auto (grouped where random batches would be mostly padding) only for a strategy measured to keep
    its accuracy in grouped batches (`groups_by_length` in the catalog: LoRA lost about 2 points in them); every
    other strategy trains in random order unless grouping is asked for."""
    return "off" if setting == "auto" and not entry(strategy).groups_by_length else setting


def encode_examples(encode: Callable[[pd.DataFrame], dict[str, list]], rows: pd.DataFrame,
                    label_ids: list[int]) -> datasets.Dataset:
    """Token ids without padding (the collator pads each batch to its own longest example), with label ids."""
    return datasets.Dataset.from_dict({**encode(rows), "labels": label_ids})


class FeatureDataset(torch.utils.data.Dataset):
    """Pre-computed sentence vectors (N, H) with their label ids (N,)."""

    def __init__(self, features: torch.Tensor, label_ids: list[int]):
        self.features, self.labels = features, torch.tensor(label_ids)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"features": self.features[index], "labels": self.labels[index]}


def by_length(dataset: datasets.Dataset) -> tuple[datasets.Dataset, np.ndarray]:
    """The examples in order of length, and that order: evaluation batches then pad to similar lengths instead
    of each to its longest (about twice as fast on short, varied texts)."""
    order = np.argsort([len(ids) for ids in dataset["input_ids"]], kind="stable")
    return dataset.select(order), order


def in_original_order(values: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Undo `by_length`: row i of `values` belongs to example `order[i]`."""
    restored = np.empty_like(values)
    restored[order] = values
    return restored


def training_arguments(config: RunConfig, strategy: ConfiguredStrategy, output_dir: Path, progress: bool,
                       best_metric: str, micro_batch: int | None = None,
                       model: nn.Module | None = None) -> TrainingArguments:
    """Evaluate and checkpoint every epoch; keep the best epoch on `best_metric` (a loss: lower is better), at the
    strategy's learning rate and epochs, in the run's precision. The batch size is global: under torchrun each
    process takes its share, so N processes make the optimizer steps one would, under the run's engine (set up
    for `model`); a `micro_batch` (dividing the share) computes it in parts whose gradients accumulate."""
    training = config.training
    share = per_process(training.batch_size, "--batch-size")
    micro_batch = micro_batch or share
    settings = dict(
        output_dir=str(output_dir),
        learning_rate=strategy.learning_rate,
        num_train_epochs=strategy.epochs,
        per_device_train_batch_size=micro_batch,
        gradient_accumulation_steps=share // micro_batch,
        per_device_eval_batch_size=max(1, training.eval_batch_size // world_size()),
        weight_decay=training.weight_decay,
        warmup_steps=training.warmup_ratio,  # a float < 1 is a fraction of the training steps
        eval_strategy="epoch",
        save_strategy="epoch",
        save_total_limit=1,
        # Checkpoints exist to restore the best epoch; optimizer state only matters to resume.
        save_only_model=not (training.keep_checkpoints or training.checkpoint_every),
        load_best_model_at_end=True,
        metric_for_best_model=best_metric,
        logging_steps=training.logging_steps,
        seed=training.seed,
        report_to=training.report_to or "none",
        disable_tqdm=not progress,
        dataloader_pin_memory=torch.cuda.is_available(),
        **trainer_flags(resolve_precision(training.precision)),
    )
    layers, hidden_size = transformer_facts(model) if model is not None else ([], None)
    return TrainingArguments(**settings | engine(training.distributed).trainer_arguments(layers, hidden_size))


def transformer_facts(model: nn.Module) -> tuple[list[str], int | None]:
    """The transformer layer classes of the models inside `model` (their `_no_split_modules`), and the hidden size
    of the outermost one."""
    inner = [module for module in model.modules() if isinstance(module, PreTrainedModel)]
    layers = sorted({name for module in inner for name in module._no_split_modules or ()})
    return layers, getattr(inner[0].config.get_text_config(), "hidden_size", None) if inner else None


def checkpoint_activations(model: nn.Module) -> None:
    """Gradient checkpointing on the outermost transformers model inside `model` (tunelab's task models wrap one):
    its layers recompute their activations in the backward pass (non-reentrant, which DDP and frozen weights
    take)."""
    outermost = next((module for module in model.modules() if isinstance(module, PreTrainedModel)), None)
    if outermost is None or not outermost.supports_gradient_checkpointing:
        raise TunelabError("gradient checkpointing needs a transformers model that supports it; this one does not")
    outermost.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})


def check_engaged(trainer: Trainer, name: str) -> None:
    """The Trainer runs the engine asked for: where accelerate cannot, it falls back to plain DDP without a word."""
    if world_size() == 1 or name == "ddp":
        return
    engaged = trainer.is_fsdp_enabled if name == "fsdp" else trainer.is_deepspeed_enabled
    if not engaged:
        raise TunelabError(f"the Trainer would run {name} as plain DDP on this machine; use --distributed ddp")


class TrainableOnlyTrainer(Trainer):
    """Checkpoints hold only the trainable tensors: frozen weights never change, so restoring the best epoch
    needs nothing else; checkpoints of adapter strategies shrink from a model copy to the delta; and PEFT's
    prompt methods (which reach the embedding matrix under two names) can be checkpointed at all."""

    def __init__(self, *args: Any, group_by_length: str = "off", **kwargs: Any):
        """`group_by_length`: auto, on or off (`training.group_by_length`)."""
        super().__init__(*args, **kwargs)
        self.group_by_length = group_by_length

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """`state_dict`: the weights gathered whole, where the engine splits them (the Trainer gathers them for
        FSDP and ZeRO-3 before it calls this, under FSDP in every process, on the first only whole); else the model's
        own tensors are whole. The first process writes."""
        if not self.args.should_save:
            return
        output_dir = output_dir or self.args.output_dir
        os.makedirs(output_dir, exist_ok=True)
        tensors = state_dict if state_dict is not None else dict(self.model.named_parameters())
        save_file(trainable_only(self.model, tensors), os.path.join(output_dir, CHECKPOINT_WEIGHTS),
                  metadata={"format": "pt"})

    def _get_train_sampler(self, train_dataset: Any = None) -> torch.utils.data.Sampler | None:
        """Grouped by length, token ids come in `LengthBucketSampler`'s order (HF's own grouping would also
        reorder evaluation, and keeps its batches in order of length); feature vectors have no length."""
        train_dataset = train_dataset if train_dataset is not None else self.train_dataset
        if self.group_by_length == "off" or not (isinstance(train_dataset, datasets.Dataset)
                                                 and "input_ids" in train_dataset.column_names):
            return super()._get_train_sampler(train_dataset)
        lengths = [len(ids) for ids in train_dataset["input_ids"]]
        batch_size = self.args.train_batch_size * self.args.gradient_accumulation_steps
        if self.group_by_length == "auto" and random_order_padding_share(lengths, batch_size) < GROUPING_PADDING_SHARE:
            return super()._get_train_sampler(train_dataset)
        return LengthBucketSampler(lengths, batch_size, self.args.seed)

    def _issue_warnings_after_load(self, load_result: Any) -> None:
        """Restoring the best epoch loads the trainable tensors; the frozen ones are missing by design."""
        trainable = {name for name, parameter in self.model.named_parameters() if parameter.requires_grad}
        if trainable & set(load_result.missing_keys) or load_result.unexpected_keys:
            raise TunelabError(f"the best checkpoint does not fit the model: missing {load_result.missing_keys[:3]}, "
                               f"unexpected {load_result.unexpected_keys[:3]}")


def trainable_only(model: nn.Module, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors of `model`'s trainable parameters, by name, ready to save."""
    return {name: tensors[name].detach().contiguous() for name, parameter in model.named_parameters()
            if parameter.requires_grad}


def gathered_trainable(trainer: Trainer) -> dict[str, torch.Tensor] | None:
    """The trained tensors whole on the first process (None on the others), where the engine split them over the
    processes (FSDP, ZeRO-3); every process must call it, since gathering is collective. The run's first process
    rebuilds the model from them to evaluate, time and save it alone."""
    whole = trainer.accelerator.get_state_dict(trainer.model_wrapped)
    return trainable_only(trainer.model, whole) if trainer.args.should_save else None


def release_engine() -> None:
    """What an engine leaves behind once its run is trained, taken off in every process: transformers keeps
    ZeRO-3's settings as long as the Trainer's arguments live, and with them a later model load, or a generation,
    would wait for the other processes (which, done, never come)."""
    unset_hf_deepspeed_config()


def build_trainer(model: nn.Module, args: TrainingArguments, train: torch.utils.data.Dataset,
                  validation: torch.utils.data.Dataset, collator: Callable | None,
                  compute_metrics: Callable[[EvalPrediction], dict] | None, group_by_length: str,
                  callbacks: list[TrainerCallback] | None = None) -> Trainer:
    """A Trainer on token ids (with a padding collator) or, without a collator, on feature vectors; `callbacks` are
    the strategy's own (AdaLoRA's rank allocation)."""
    return quiet_when_asked(TrainableOnlyTrainer(model=model, args=args, train_dataset=train,
                                                 eval_dataset=validation, data_collator=collator,
                                                 compute_metrics=compute_metrics, group_by_length=group_by_length,
                                                 callbacks=callbacks))


def best_device() -> torch.device:
    """Where tunelab's own loops (PPO, the policy judge) run; the Trainer places its models itself."""
    return torch.device(device_type())


def quiet_when_asked(trainer: Trainer) -> Trainer:
    """Without progress bars, the Trainer prints each log line instead; quiet means quiet."""
    if trainer.args.disable_tqdm:
        trainer.remove_callback(PrinterCallback)
    return trainer
