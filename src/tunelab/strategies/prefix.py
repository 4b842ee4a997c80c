"""Prefix tuning (Li & Liang 2021) and deep prompts (P-tuning v2, Liu et al. 2022): trainable key/value vectors
prepended at every layer of the frozen backbone. With `projection` the prefixes are produced by a two-layer MLP
during training (Li & Liang's reparameterisation); without it they are trained directly (P-tuning v2)."""

from __future__ import annotations

from peft import PrefixTuningConfig, TaskType
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from tunelab.strategies.prompt_learning import PromptLearning


class PrefixOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    virtual_tokens: int = Field(10, gt=0, description="prefix length at each layer")
    projection: bool = Field(False, description="reparameterise through an MLP (Li & Liang); off = P-tuning v2")
    projection_size: int = Field(256, gt=0, description="hidden size of the reparameterisation MLP")


class PrefixTuning(PromptLearning):
    name = "prefix"
    Options = PrefixOptions

    def peft_config(self, backbone: nn.Module, options: PrefixOptions) -> PrefixTuningConfig:
        return PrefixTuningConfig(task_type=TaskType.FEATURE_EXTRACTION, num_virtual_tokens=options.virtual_tokens,
                                  prefix_projection=options.projection, encoder_hidden_size=options.projection_size)
