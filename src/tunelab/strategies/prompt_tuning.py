"""Prompt tuning (Lester et al. 2021): trainable embeddings prepended to the input of a frozen backbone; the
smallest delta of all, initialised at random, from sampled vocabulary embeddings, or from a text's tokens."""

from __future__ import annotations

from typing import Literal

from peft import PromptTuningConfig, PromptTuningInit, TaskType
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from tunelab.strategies.prompt_learning import PromptLearning

INITS = {"random": PromptTuningInit.RANDOM, "vocab": PromptTuningInit.SAMPLE_VOCAB, "text": PromptTuningInit.TEXT}


class PromptTuningOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    virtual_tokens: int = Field(10, gt=0, description="number of prompt embeddings")
    init: Literal["random", "vocab", "text"] = Field(
        "vocab", description="start from random vectors, from sampled vocabulary embeddings, or from init_text")
    init_text: str | None = Field(None, description="text whose token embeddings start the prompt (init=text)")

    @model_validator(mode="after")
    def _text_when_needed(self) -> PromptTuningOptions:
        if (self.init == "text") != (self.init_text is not None):
            raise ValueError("init_text goes with init=text, and init=text needs an init_text")
        return self


class PromptTuning(PromptLearning):
    name = "prompt-tuning"
    Options = PromptTuningOptions

    def peft_config(self, backbone: nn.Module, options: PromptTuningOptions) -> PromptTuningConfig:
        return PromptTuningConfig(task_type=TaskType.FEATURE_EXTRACTION, num_virtual_tokens=options.virtual_tokens,
                                  prompt_tuning_init=INITS[options.init], prompt_tuning_init_text=options.init_text,
                                  tokenizer_name_or_path=backbone.config.name_or_path)
