"""The engines that train one model in several processes, as data: what each shards, where it runs, the config
it ships with (FSDP2 settings, DeepSpeed ZeRO JSONs whose "auto" values the Trainer fills), and the strategy x engine
pairs known to fail, each with why and what works instead. `tunelab train` checks a run against this module before
it launches anything; the advisor reads what each engine shards; the docs render the tables from it.

Nothing here imports torch: `tunelab recommend` answers at once. The configs are package data beside this file.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

from tunelab.config import Distributed
from tunelab.errors import TunelabError
from tunelab.strategies.catalog import CATALOG

FOLDER = Path(__file__).parent
STATES = ("parameters", "gradients", "optimizer")  # a model's training state, as ZeRO splits it (Rajbhandari 2020)


@dataclass(frozen=True)
class Engine:
    """One way for N processes to train one model."""

    name: str
    summary: str
    shards: tuple[str, ...]  # which of STATES each process holds only 1/N of
    config: str | None = None  # the shipped config file, beside this module
    package: str | None = None  # a package the engine needs beyond tunelab's own, with the extra that installs it
    needs_accelerator: str | None = None  # why it cannot run on CPUs, where it cannot
    min_processes: int = 1

    @property
    def splits_weights(self) -> bool:
        """Each process holds only its part of the weights after training: they are gathered before one process
        evaluates or saves the model."""
        return "parameters" in self.shards

    def trainer_arguments(self, layer_classes: list[str], hidden_size: int | None) -> dict[str, Any]:
        """The Trainer's keywords for this engine. `layer_classes`: the model's transformer layers, the units FSDP
        gathers one at a time; `hidden_size`: the Trainer fills DeepSpeed's "auto" bucket sizes from it, but reads it
        from the model's own config, which tunelab's task models (a head around a transformers model) lack."""
        if self.name == "fsdp":  # a model without transformer layers (a head on cached vectors) is one unit
            layers = ({"transformer_layer_cls_to_wrap": layer_classes} if layer_classes else
                      {"auto_wrap_policy": "NO_WRAP"})
            # the Trainer restores FSDP's best epoch from FSDP's own checkpoints, written with the optimizer's
            return {"fsdp": True, "fsdp_config": read_config(self) | layers, "save_only_model": False}
        if self.package != "deepspeed":
            return {}
        config = read_config(self)
        # the Trainer's own rules (transformers.integrations.deepspeed); without a transformer (a head trained on
        # cached sentence vectors), DeepSpeed's own defaults
        sizes = ({"reduce_bucket_size": hidden_size**2, "stage3_prefetch_bucket_size": int(0.9 * hidden_size**2),
                  "stage3_param_persistence_threshold": 10 * hidden_size} if hidden_size is not None else
                 {"reduce_bucket_size": int(5e8), "stage3_prefetch_bucket_size": int(5e7),
                  "stage3_param_persistence_threshold": int(1e5)})
        zero = config["zero_optimization"]
        zero |= {key: value for key, value in sizes.items() if zero.get(key) == "auto"}
        # DeepSpeed restores the best epoch from its own checkpoints, which hold the optimizer state too
        return {"deepspeed": config, "save_only_model": False}


ENGINES: dict[str, Engine] = {engine.name: engine for engine in (
    Engine("ddp", "every process holds the whole model, gradients and optimizer state; gradients are averaged "
                  "after each backward (PyTorch DDP; gloo on CPUs, nccl on GPUs)", shards=()),
    Engine("fsdp", "FSDP2 (`fully_shard`): parameters, gradients and optimizer state split per parameter over the "
                   "processes, each layer's weights gathered for its forward and backward (ZeRO-3's memory)",
           shards=STATES, config="fsdp2.json", min_processes=2,
           needs_accelerator="the Trainer (accelerate) runs FSDP only on GPUs and other accelerators, and on CPUs "
                             "would silently train plain DDP"),
    Engine("deepspeed-zero2", "DeepSpeed ZeRO stage 2: optimizer state and gradients split over the processes, "
                              "every process keeps the whole weights",
           shards=("gradients", "optimizer"), config="deepspeed-zero2.json", package="deepspeed", min_processes=2),
    Engine("deepspeed-zero3", "DeepSpeed ZeRO stage 3: parameters too, gathered layer by layer when needed",
           shards=STATES, config="deepspeed-zero3.json", package="deepspeed", min_processes=2),
)}
if set(ENGINES) != set(get_args(Distributed)):
    raise TunelabError(f"engine rows {sorted(ENGINES)} differ from the config's choices {get_args(Distributed)}")


def read_config(engine: Engine) -> dict[str, Any]:
    return json.loads((FOLDER / engine.config).read_text(encoding="utf-8"))


@dataclass(frozen=True)
class Trap:
    """A strategy x engine pair known to fail, refused before launch."""

    strategies: tuple[str, ...]
    engines: tuple[str, ...]
    reason: str  # what goes wrong, and where it was reported
    instead: str  # what works
    with_checkpointing: bool = False  # only with gradient checkpointing on


TRAPS: tuple[Trap, ...] = (
    Trap(("prompt-tuning", "p-tuning"), ("deepspeed-zero3",),
         "ZeRO-3 partitions the word-embedding matrix (shape 0 outside a forward), so PEFT cannot find it to set "
         "up the virtual tokens (peft #206, #1633)", "deepspeed-zero2 or ddp; or lora"),
    Trap(("prefix", "prompt-tuning", "p-tuning"), ("fsdp",),
         "PEFT's prompt methods reach the word-embedding matrix under a second name, and FSDP2, having sharded it "
         "in one unit, finds it sharded already in another (an invariant error as it wraps the model)",
         "deepspeed-zero2 or ddp; or lora"),
    Trap(("adalora",), ("deepspeed-zero3", "fsdp"),
         "AdaLoRA's rank allocator reads every LoRA matrix and its gradient whole after each optimizer step, where "
         "ZeRO-3 leaves a process an empty placeholder (a size-mismatch error at the first step) and FSDP2 a sharded "
         "DTensor (an error at the first step)", "deepspeed-zero2 or ddp; or lora"),
    Trap(("prefix",), tuple(ENGINES),
         "prefix tuning's past keys and values do not survive gradient checkpointing: a shape error on some models, in "
         "one process or several, and a silently different forward on others (a tiny BERT's first-step loss: 0.707 "
         "without, 0.716 with)", "train prefix without gradient checkpointing, or lora with it",
         with_checkpointing=True),
)
# Traps that tunelab's choices keep out of reach: shown in the docs beside the table, and no pair to refuse.
AVOIDED: tuple[tuple[str, str], ...] = (
    ("FSDP1 refuses a wrapped layer that mixes frozen and trainable parameters (peft #1702), which every "
     "parameter-efficient strategy's layers do", "`fsdp` is FSDP2, which shards per parameter and takes them"),
    ("PEFT's `modules_to_save` with gradient checkpointing breaks DDP (peft #899)", "tunelab trains a task's head "
     "beside the PEFT model, never as a `modules_to_save` copy; checkpointing is non-reentrant"),
)
for _trap in TRAPS:
    if set(_trap.strategies) - set(CATALOG) or set(_trap.engines) - set(ENGINES):
        raise TunelabError(f"engine trap names unknown strategies or engines: {_trap.strategies} x {_trap.engines}")


def engine(name: str) -> Engine:
    if name not in ENGINES:
        raise TunelabError(f"unknown engine '{name}'; choose one of {', '.join(ENGINES)}")
    return ENGINES[name]


def trap(strategy: str, engine_name: str, checkpointing: bool = False) -> Trap | None:
    """The known failure of this pair, if any."""
    return next((row for row in TRAPS if strategy in row.strategies and engine_name in row.engines
                 and (checkpointing or not row.with_checkpointing)), None)


def check_pair(strategy: str, engine_name: str, checkpointing: bool = False) -> None:
    found = trap(strategy, engine_name, checkpointing)
    if found is not None:
        with_what = " with gradient checkpointing" if found.with_checkpointing else ""
        raise TunelabError(f"{strategy} under {engine_name}{with_what} is a known failure: {found.reason}; "
                           f"use {found.instead}")


def check_engine(engine_name: str, strategy: str, processes: int, checkpointing: bool = False) -> None:
    """Refuse, before anything launches, an engine this machine cannot run, or a pair known to fail."""
    from tunelab.precision import device_type  # torch, which the advisor's import of this module does without

    chosen = engine(engine_name)
    check_pair(strategy, engine_name, checkpointing)
    if processes < chosen.min_processes:
        raise TunelabError(f"{engine_name} shards over processes: give --nproc {chosen.min_processes} or more, or "
                           f"leave --distributed out")
    if chosen.needs_accelerator and device_type() == "cpu":
        raise TunelabError(f"{engine_name} needs GPUs: {chosen.needs_accelerator}; on CPUs use --distributed ddp or "
                           f"deepspeed-zero2/3")
    if chosen.package and importlib.util.find_spec(chosen.package) is None:
        raise TunelabError(f"{engine_name} needs the {chosen.package} package: pip install 'tunelab[{chosen.package}]'")


def pair_table(checkpointing: bool = False) -> dict[str, dict[str, Trap | None]]:
    """strategy -> engine -> its trap (None: allowed), for every catalogue strategy and engine."""
    return {name: {engine_name: trap(name, engine_name, checkpointing) for engine_name in ENGINES}
            for name in CATALOG}


def per_device_bytes(state: dict[str, float], engine_name: str, processes: int) -> float:
    """The bytes one process holds of a training state (STATES -> bytes for one whole copy) under an engine: the
    states it shards divided over the processes, the others whole."""
    shards = engine(engine_name).shards
    return sum(size / processes if name in shards else size for name, size in state.items())
