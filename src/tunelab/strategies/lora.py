"""LoRA (Hu et al. 2021): the backbone stays frozen; each adapted linear layer W gains a trainable low-rank
update scaling * B A (r << d, B starts at zero, so training starts from the pre-trained model exactly).

Defaults measured on MiniLM (docs/architecture.md): the attention's query and value projections (the paper's
choice; PEFT's per-architecture default), r=8, alpha 16, no dropout, lr 5e-3. The naive peft recipe reaches the
same targets with lr 5e-4 and falls 3.5 points short: the learning rate, not the targets, was what it lacked.
`target_modules=all-linear` adapts every linear layer of the blocks instead (no better here, and slower per step).
"""

from __future__ import annotations

import re
from typing import Literal

from peft import LoraConfig
from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from transformers.pytorch_utils import Conv1D

from tunelab.errors import TunelabError
from tunelab.strategies.peft_adapter import PeftAdapter, check_targets

# Inside a numbered block: encoder.layer.3.attention.self.query, layers.0.mlp.up_proj, h.2.attn.c_attn
BLOCK_MODULE = re.compile(r"(^|\.)\d+\.")
ALL_LINEAR = "all-linear"


class LoraOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    r: int = Field(8, gt=0, description="rank of the update")
    alpha: float = Field(16.0, gt=0, description="scaling numerator: the update is (alpha / r) * B A")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the adapted layers' input")
    target_modules: list[str] | Literal["all-linear"] | None = Field(
        None, description="module name suffixes to adapt (e.g. [query, key, value]), or all-linear for every linear "
                          "layer inside the transformer blocks; default: the attention's query and value")
    use_dora: bool = Field(False, description="weight-decomposed LoRA (Liu et al. 2024)")
    use_rslora: bool = Field(False, description="rank-stabilised scaling alpha / sqrt(r) (Kalajdzievski 2023)")
    layers: list[int] | None = Field(None, description="block indices to adapt (default: every block)")


def block_linear_layers(backbone: nn.Module) -> list[str]:
    """Exact names of the linear layers inside the repeated blocks: not the pooler, not the embeddings.

    GPT-2-style models implement their linear layers as `Conv1D`, which PEFT adapts too."""
    return [name for name, module in backbone.named_modules()
            if isinstance(module, (nn.Linear, Conv1D)) and BLOCK_MODULE.search(name)]


def default_targets(backbone: nn.Module) -> list[str]:
    """PEFT's per-architecture choice (query and value projections); every block linear layer where it has none."""
    targets = TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.get(backbone.config.model_type)
    return list(targets) if targets else block_linear_layers(backbone)


def layers_to_adapt(backbone: nn.Module, layers: list[int] | None, strategy: str) -> list[int] | None:
    """The block indices to adapt, checked against the model's depth (PEFT would silently adapt nothing)."""
    if layers is None:
        return None
    depth = backbone.config.num_hidden_layers
    wrong = sorted({index for index in layers if not 0 <= index < depth})
    if wrong or not layers:
        raise TunelabError(f"{strategy}: layers must be block indices from 0 to {depth - 1} (got {layers}); "
                           f"this model has {depth} blocks")
    return sorted(set(layers))


def resolve_targets(backbone: nn.Module, target_modules: list[str] | str | None, strategy: str) -> list[str]:
    """The module names a LoRA-style strategy adapts: the given ones, every block linear layer (all-linear), or the
    default, checked against the model."""
    if target_modules == ALL_LINEAR:
        targets = block_linear_layers(backbone)
    else:
        targets = target_modules or default_targets(backbone)
    check_targets(backbone, targets, strategy)
    return targets


class Lora(PeftAdapter):
    name = "lora"
    Options = LoraOptions

    def peft_config(self, backbone: nn.Module, options: LoraOptions) -> LoraConfig:
        targets = resolve_targets(backbone, options.target_modules, self.name)
        return LoraConfig(r=options.r, lora_alpha=options.alpha, lora_dropout=options.dropout,
                          target_modules=targets, use_dora=options.use_dora, use_rslora=options.use_rslora,
                          layers_to_transform=layers_to_adapt(backbone, options.layers, self.name))
