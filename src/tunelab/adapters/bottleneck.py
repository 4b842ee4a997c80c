"""Bottleneck adapters (Houlsby et al. 2019; Pfeiffer et al. 2021; He et al. 2022), attached to a frozen
transformer with forward hooks, so the backbone's own modules and parameter names stay untouched.

An adapter maps a d-vector through d -> m -> d (2dm + d + m parameters) and adds the result back:
- houlsby: after the attention output projection and after the feed-forward output, of each block;
- pfeiffer: after the feed-forward output only;
- parallel: beside the feed-forward sublayer, reading its input: FFN(x) + scaling * adapter(x).
The up-projection starts at zero, so an untrained adapter leaves the backbone's output exactly as it was.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from tunelab.errors import TunelabError

Variant = Literal["houlsby", "pfeiffer", "parallel"]
ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh}

# Inside one block: (attention output projection, feed-forward input, feed-forward output).
BLOCK_LAYOUTS = {
    "BERT": ("attention.output.dense", "intermediate.dense", "output.dense"),
    "Llama": ("self_attn.o_proj", "mlp.up_proj", "mlp.down_proj"),
    "GPT-2": ("attn.c_proj", "mlp.c_fc", "mlp.c_proj"),
    "DistilBERT": ("attention.out_lin", "ffn.lin1", "ffn.lin2"),
}


class Bottleneck(nn.Module):
    """down-projection, non-linearity, zero-initialised up-projection, times a fixed scaling."""

    def __init__(self, size: int, bottleneck_size: int, activation: str, scaling: float):
        super().__init__()
        self.down = nn.Linear(size, bottleneck_size)
        self.activation = ACTIVATIONS[activation]()
        self.up = nn.Linear(bottleneck_size, size)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)
        self.scaling = scaling
        self._ffn_input: torch.Tensor | None = None

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.scaling * self.up(self.activation(self.down(hidden)))

    # Forward hooks. Bound methods, so that a deep copy of the model calls the copied adapters.
    def add_after(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        return output + self(output)

    def remember_input(self, module: nn.Module, args: tuple) -> None:
        self._ffn_input = args[0]

    def add_beside(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        ffn_input, self._ffn_input = self._ffn_input, None
        return output + self(ffn_input)


def _output_size(layer: nn.Module) -> int:
    return layer.nf if isinstance(layer, Conv1D) else layer.out_features


@dataclass
class Block:
    """The layers of one transformer block that adapters attach to."""

    attention_output: nn.Module
    ffn_input: nn.Module
    ffn_output: nn.Module


def find_blocks(backbone: nn.Module) -> list[Block]:
    blocks = []
    for container in backbone.modules():
        if not isinstance(container, nn.ModuleList):
            continue
        for block in container:
            layers = dict(block.named_modules())
            for names in BLOCK_LAYOUTS.values():
                if all(name in layers for name in names):
                    blocks.append(Block(*(layers[name] for name in names)))
                    break
    if not blocks:
        raise TunelabError(f"adapter cannot find transformer blocks in model type '{backbone.config.model_type}': "
                           f"it knows {', '.join(BLOCK_LAYOUTS)}-style blocks; use lora instead")
    return blocks


def insert_adapters(backbone: nn.Module, variant: Variant, bottleneck_size: int, activation: str,
                    scaling: float, layers: list[int] | None) -> nn.ModuleDict:
    """Attach adapters to the chosen blocks (all by default); returns them, keyed like `layer3_ffn`."""
    blocks = find_blocks(backbone)
    chosen = range(len(blocks)) if layers is None else layers
    outside = [index for index in chosen if not 0 <= index < len(blocks)]
    if outside:
        raise TunelabError(f"adapter: layer(s) {outside} do not exist; this model has layers 0-{len(blocks) - 1}")
    adapters = nn.ModuleDict()
    for index in chosen:
        block = blocks[index]
        size = _output_size(block.ffn_output)
        if variant == "houlsby":
            adapters[f"layer{index}_attention"] = attention = Bottleneck(size, bottleneck_size, activation, scaling)
            block.attention_output.register_forward_hook(attention.add_after)
        adapters[f"layer{index}_ffn"] = ffn = Bottleneck(size, bottleneck_size, activation, scaling)
        if variant == "parallel":
            block.ffn_input.register_forward_pre_hook(ffn.remember_input)
            block.ffn_output.register_forward_hook(ffn.add_beside)
        else:
            block.ffn_output.register_forward_hook(ffn.add_after)
    return adapters
