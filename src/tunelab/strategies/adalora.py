"""AdaLoRA (Zhang et al. 2023): LoRA in SVD form (P diag(E) Q) whose ranks are reallocated while training: every
adapted layer starts at `init_r`, and the singular values that matter least (by a smoothed sensitivity of the loss)
are masked until the layers' ranks average `target_r`, so the budget goes to the layers that need it.

PEFT implements the layers and the allocator, but the allocation runs only when the training loop calls
`update_and_allocate` after each optimizer step; neither the Hugging Face Trainer nor TRL does, and without it
AdaLoRA trains as a plain LoRA of rank `init_r` (peft #3373). `RankAllocation` is that call, as a Trainer callback
that also fits AdaLoRA's schedule (warm-up, budgeting, final phase) to the run's number of steps.

AdaLoRA's orthogonality regulariser is added by PEFT to a loss the backbone returns; tunelab's task heads compute
the loss, so it is not applied (the paper reports it helps by a few tenths of a point).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import torch
from peft import AdaLoraConfig
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn
from transformers import TrainerCallback

from tunelab.errors import TunelabError
from tunelab.strategies.lora import layers_to_adapt, resolve_targets
from tunelab.strategies.peft_adapter import ADAPTER_DIR, PeftAdapter

ADAPTER_NAME = "default"
ALLOCATOR_FILE = "adalora_allocator.pt"  # in each Trainer checkpoint
ALLOCATOR_SCORES = ("ipt", "exp_avg_ipt", "exp_avg_unc")  # PEFT's RankAllocator: the step's and smoothed scores
PLACEHOLDER_STEPS = 1_000  # PEFT wants a schedule before training; `RankAllocation` sets the run's own


class AdaLoraOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    init_r: int = Field(12, gt=0, description="every adapted layer's rank before allocation")
    target_r: int = Field(4, gt=0, description="the average rank left after allocation")
    alpha: float = Field(16.0, gt=0, description="scaling numerator, as LoRA's")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the adapted layers' input")
    target_modules: list[str] | Literal["all-linear"] | None = Field(
        None, description="module name suffixes to adapt, or all-linear; default: the attention's query and value")
    layers: list[int] | None = Field(None, description="block indices to adapt (default: every block)")
    warmup_share: float = Field(0.1, ge=0, lt=1, description="share of the steps trained before ranks are cut")
    final_share: float = Field(0.3, ge=0, lt=1, description="share of the steps trained at the final ranks")
    allocate_every: int = Field(1, gt=0, description="optimizer steps between two allocations (deltaT)")

    @model_validator(mode="after")
    def _schedule_and_budget(self) -> AdaLoraOptions:
        if self.target_r > self.init_r:
            raise ValueError(f"target_r ({self.target_r}) must not exceed init_r ({self.init_r})")
        if self.warmup_share + self.final_share >= 1:
            raise ValueError("warmup_share + final_share must leave steps for the budgeting phase (sum below 1)")
        return self


class RankAllocation(TrainerCallback):
    """Calls AdaLoRA's allocator after every optimizer step, on a schedule fitted to the run's steps. The allocator
    keeps its smoothed sensitivities outside the model, so each checkpoint gets them (and the rank pattern) in a file
    of its own, read back when a run resumes: it then allocates as an uninterrupted one."""

    def __init__(self, backbone: nn.Module, options: AdaLoraOptions):
        self.backbone, self.options = backbone, options

    def on_train_begin(self, args, state, control, **kwargs) -> None:
        config = self.backbone.peft_config[ADAPTER_NAME]
        steps = state.max_steps
        config.total_step = steps
        config.tinit = int(steps * self.options.warmup_share)
        config.tfinal = int(steps * self.options.final_share)
        if config.tinit >= steps - config.tfinal:
            raise TunelabError(f"adalora: {steps} optimizer steps leave no budgeting phase; train for more steps "
                               f"(--epochs) or lower warmup_share / final_share")
        if state.global_step:  # resumed from the checkpoint of that step
            saved = torch.load(Path(args.output_dir) / f"checkpoint-{state.global_step}" / ALLOCATOR_FILE,
                               weights_only=True)
            config.rank_pattern = saved.pop("rank_pattern")
            for name, scores in saved.items():
                setattr(self.backbone.base_model.rankallocator, name, scores)

    def on_save(self, args, state, control, **kwargs) -> None:
        if state.is_world_process_zero:
            allocator = self.backbone.base_model.rankallocator
            torch.save({**{name: getattr(allocator, name) for name in ALLOCATOR_SCORES},
                        "rank_pattern": self.backbone.peft_config[ADAPTER_NAME].rank_pattern},
                       Path(args.output_dir) / f"checkpoint-{state.global_step}" / ALLOCATOR_FILE)

    def on_optimizer_step(self, args, state, control, **kwargs) -> None:
        self.backbone.base_model.update_and_allocate(state.global_step)

    def on_train_end(self, args, state, control, **kwargs) -> None:
        """The epoch kept may predate the final allocation: cut it to the final ranks, as the saved delta is."""
        pattern = self.backbone.peft_config[ADAPTER_NAME].rank_pattern
        if pattern:
            self.backbone.base_model.rankallocator.mask_using_rank_pattern(self.backbone.base_model.model, pattern)


class AdaLora(PeftAdapter):
    name = "adalora"
    Options = AdaLoraOptions

    def peft_config(self, backbone: nn.Module, options: AdaLoraOptions) -> AdaLoraConfig:
        targets = resolve_targets(backbone, options.target_modules, self.name)
        return AdaLoraConfig(init_r=options.init_r, target_r=options.target_r, lora_alpha=options.alpha,
                             lora_dropout=options.dropout, target_modules=targets, deltaT=options.allocate_every,
                             total_step=PLACEHOLDER_STEPS, layers_to_transform=layers_to_adapt(
                                 backbone, options.layers, self.name))

    def callbacks(self, model: nn.Module, options: AdaLoraOptions) -> list[TrainerCallback]:
        return [RankAllocation(model.backbone, options)]

    def load_delta(self, model: nn.Module, options: BaseModel, folder: Path) -> None:
        """PEFT saves each layer cut to its allocated rank: shape the fresh layers by the saved pattern first."""
        saved = json.loads((folder / ADAPTER_DIR / "adapter_config.json").read_text(encoding="utf-8"))
        if saved.get("rank_pattern"):
            model.backbone.peft_config[ADAPTER_NAME].rank_pattern = saved["rank_pattern"]
        super().load_delta(model, options, folder)
