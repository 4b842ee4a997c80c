"""Soft templates (P-tuning, Liu et al. 2021, "GPT Understands, Too"): the manual template's words become
trainable vectors that start from those words' embeddings, optionally reparameterised by an LSTM or MLP prompt
encoder; the input and the label slot stay where the template puts them, and the language model stays frozen.
Untrained, a soft template classifies exactly as its manual template does."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from tunelab.errors import TunelabError
from tunelab.prompting.model import PromptEncoderKind
from tunelab.strategies.base import PartialTraining, PromptBased, freeze_all_but, mark_applied


class SoftTemplateOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    encoder: PromptEncoderKind = Field("none", description="prompt encoder over the soft tokens: none, lstm, mlp")
    encoder_size: int = Field(128, gt=0, description="hidden size of the prompt encoder")


class SoftTemplate(PromptBased, PartialTraining):
    name = "soft-template"
    Options = SoftTemplateOptions

    def trainable_prefixes(self, options: BaseModel) -> tuple[str, ...]:
        return ("head.",)

    def apply(self, model: nn.Module, options: SoftTemplateOptions) -> None:
        mark_applied(model, self.name)
        model.soften_template(options.encoder, options.encoder_size)
        freeze_all_but(model, self.trainable_prefixes(options))

    def merge(self, model: nn.Module) -> None:
        raise TunelabError("soft-template cannot be merged: its soft tokens are extra inputs, not a weight update")
