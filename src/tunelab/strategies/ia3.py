"""(IA)^3 (Liu et al. 2022): learned vectors that rescale the keys, the values and the feed-forward input of
each block; the backbone stays frozen and the vectors start at one, so training starts from the base model.
Even fewer parameters than LoRA, and mergeable. Targets default to PEFT's per-architecture choice."""

from __future__ import annotations

from peft import IA3Config
from peft.utils import (
    TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING,
    TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING,
)
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from tunelab.errors import TunelabError
from tunelab.strategies.peft_adapter import PeftAdapter, check_targets


class IA3Options(BaseModel):
    model_config = ConfigDict(extra="forbid")
    target_modules: list[str] | None = Field(None, description="module name suffixes to rescale "
                                                               "(default: PEFT's choice for the architecture)")
    feedforward_modules: list[str] | None = Field(None, description="those of the targets whose input is "
                                                                    "rescaled (feed-forward layers)")


class Ia3(PeftAdapter):
    name = "ia3"
    Options = IA3Options

    def peft_config(self, backbone: nn.Module, options: IA3Options) -> IA3Config:
        model_type = backbone.config.model_type
        targets = options.target_modules or TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING.get(model_type)
        feedforward = options.feedforward_modules
        if feedforward is None and options.target_modules is None:
            feedforward = TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING.get(model_type)
        if not targets:
            raise TunelabError(f"ia3 has no default targets for model type '{model_type}': "
                               f"pass --option 'target_modules=[...]' and --option 'feedforward_modules=[...]'")
        check_targets(backbone, targets, self.name)
        return IA3Config(target_modules=targets, feedforward_modules=feedforward or [])
