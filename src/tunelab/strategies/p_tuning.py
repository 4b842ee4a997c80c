"""P-tuning (Liu et al. 2021, "GPT Understands, Too"): virtual input tokens produced by a small trainable
prompt encoder, a bidirectional LSTM (the article's design) or an MLP, in front of the frozen backbone.
The encoder exists only during training: the run saves the prompts it produces."""

from __future__ import annotations

from typing import Literal

from peft import PromptEncoderConfig, PromptEncoderReparameterizationType, TaskType
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from tunelab.strategies.prompt_learning import PromptLearning

ENCODERS = {"lstm": PromptEncoderReparameterizationType.LSTM, "mlp": PromptEncoderReparameterizationType.MLP}


class PTuningOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    virtual_tokens: int = Field(10, gt=0, description="number of prompt embeddings")
    encoder: Literal["lstm", "mlp"] = Field("lstm", description="the prompt encoder")
    encoder_size: int = Field(128, gt=0, description="hidden size of the prompt encoder")


class PTuning(PromptLearning):
    name = "p-tuning"
    Options = PTuningOptions

    def peft_config(self, backbone: nn.Module, options: PTuningOptions) -> PromptEncoderConfig:
        return PromptEncoderConfig(task_type=TaskType.FEATURE_EXTRACTION, num_virtual_tokens=options.virtual_tokens,
                                   encoder_reparameterization_type=ENCODERS[options.encoder],
                                   encoder_hidden_size=options.encoder_size)
