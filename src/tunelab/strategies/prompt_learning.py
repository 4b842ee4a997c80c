"""What the virtual-token strategies (prefix, prompt-tuning, p-tuning) share: PEFT prepends trainable vectors
to the input or to every layer's keys and values, and the frozen backbone reads the text through them.

Two things differ from the weight adapters. A prompt method can silently do nothing on an architecture whose
attention ignores the past keys/values PEFT passes it, so `apply` checks with one tiny forward/backward that
the virtual tokens reach the output. And PEFT saves a prompt *after* its reparameterisation (MLP or LSTM), so
a run loads back through `PeftModel.from_pretrained`, the way plain `peft` loads it.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from peft import PeftModel
from pydantic import BaseModel
from torch import nn

from tunelab.errors import TunelabError
from tunelab.strategies.base import DELTA_FILE, load_tensors
from tunelab.strategies.peft_adapter import ADAPTER_DIR, HEAD, PeftAdapter

# transformers 5.x renames the argument PEFT uses to hand prefixes to the attention; it still works.
warnings.filterwarnings("ignore", message="`past_key_values` is deprecated", category=FutureWarning)


def check_prompt_reaches_output(backbone: nn.Module, strategy: str) -> None:
    """Fail before training when the virtual tokens cannot change what the backbone computes for a text."""
    trainable = [parameter for parameter in backbone.parameters() if parameter.requires_grad]
    ids = torch.tensor([[1, 2, 3]])
    reason, gradients = "its attention ignores the virtual tokens", [None]
    try:
        hidden = backbone(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state[:, -ids.size(1):]
        if hidden.requires_grad:
            # A fixed random direction: sums and norms of layer-normalised outputs are constant, hence blind.
            direction = torch.randn(hidden.shape, generator=torch.Generator().manual_seed(0))
            gradients = torch.autograd.grad((hidden * direction).sum(), trainable, allow_unused=True)
    except (RuntimeError, TypeError, ValueError) as error:
        reason = str(error).splitlines()[0]
    if any(gradient is None or not gradient.any() for gradient in gradients):
        model_type = backbone.get_base_model().config.model_type
        raise TunelabError(f"{strategy} cannot adapt model type '{model_type}' ({reason}); "
                           f"choose another strategy, e.g. lora")


class PromptLearning(PeftAdapter):
    """Base of the virtual-token strategies; a subclass builds the `peft` prompt-learning config."""

    def apply(self, model: nn.Module, options: BaseModel) -> None:
        super().apply(model, options)
        check_prompt_reaches_output(model.backbone, self.name)

    def load_delta(self, model: nn.Module, options: BaseModel, folder: Path) -> None:
        base = model.backbone.get_base_model()  # prompt methods leave the base model's modules untouched
        model.backbone = PeftModel.from_pretrained(base, folder / ADAPTER_DIR)
        load_tensors(model, HEAD, folder / DELTA_FILE)

    def merge(self, model: nn.Module) -> None:
        raise TunelabError(f"{self.name} cannot be merged: its virtual tokens are extra inputs, not a weight update; "
                           f"lora and ia3 merge")
