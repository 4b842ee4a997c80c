"""Bottleneck adapters (Houlsby et al. 2019; Pfeiffer et al. 2021; He et al. 2022), attached to a frozen
transformer with forward hooks, so the backbone's own modules and parameter names stay untouched.

An adapter maps a d-vector through d -> m -> d (2dm + d + m parameters) and adds the result back:
- houlsby: after the attention output projection and after the feed-forward output, of each block;
- pfeiffer: after the feed-forward output only;
- parallel: beside the feed-forward sublayer, reading its input: FFN(x) + scaling * adapter(x), added where the
  sublayer's output meets the residual stream.
The up-projection starts at zero, so an untrained adapter leaves the backbone's output exactly as it was. Each hook
reads only its own call's arguments (no tensor is kept between hooks), so activation checkpointing, which reruns a
block's forward, and a model shared across threads compute the same thing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from tunelab.errors import TunelabError

Variant = Literal["houlsby", "pfeiffer", "parallel"]
ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh}

# Inside one block: (attention output projection, feed-forward output projection, the feed-forward sublayer). The
# sublayer is a module called with the FFN's input and returning its output, except in BERT, whose `output` module
# is called with (FFN hidden states, the FFN's input) and adds the residual itself.
BLOCK_LAYOUTS = {
    "BERT": ("attention.output.dense", "output.dense", "output"),
    "Llama": ("self_attn.o_proj", "mlp.down_proj", "mlp"),
    "GPT-2": ("attn.c_proj", "mlp.c_proj", "mlp"),
    "DistilBERT": ("attention.out_lin", "ffn.lin2", "ffn"),
}
ADDS_RESIDUAL = {"BERT"}  # layouts whose sublayer module takes the FFN's input as its second argument


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

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.scaling * self.up(self.activation(self.down(hidden)))

    # Which rows of a batch this adapter serves: every row, unless a mixed batch of several tasks' adapters routes
    # them (`tunelab.compose.mixed` sets a callable returning a boolean mask over the batch).
    rows: Callable[[], torch.Tensor] | None = None

    def on_rows(self, hidden: torch.Tensor) -> torch.Tensor:
        """The adapter's output for the rows it serves, zeros for the others."""
        if self.rows is None:
            return self(hidden)
        rows = self.rows()
        routed = torch.zeros_like(hidden)
        if rows.any():
            routed[rows] = self(hidden[rows]).to(hidden.dtype)
        return routed

    # Forward hooks. Bound methods, so that a deep copy of the model calls the copied adapters.
    def add_after(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        return output + self.on_rows(output)

    def add_beside(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        """A forward hook on the FFN sublayer: its output plus the adapter of its input."""
        return output + self.on_rows(args[0])

    def add_to_residual(self, module: nn.Module, args: tuple) -> tuple:
        """A forward pre-hook on BERT's FFN output module, called with (FFN hidden states, the FFN's input x): the
        residual it adds becomes x + adapter(x), so the sum is FFN(x) + adapter(x) + x, before the LayerNorm."""
        hidden, ffn_input, *rest = args
        return (hidden, ffn_input + self.on_rows(ffn_input), *rest)


def _output_size(layer: nn.Module) -> int:
    return layer.nf if isinstance(layer, Conv1D) else layer.out_features


@dataclass
class Block:
    """The layers of one transformer block that adapters attach to."""

    attention_output: nn.Module
    ffn_output: nn.Module
    ffn: nn.Module
    adds_residual: bool  # `ffn` is BERT's output module, called with (hidden states, the FFN's input)


def find_blocks(backbone: nn.Module) -> list[Block]:
    blocks = []
    for container in backbone.modules():
        if not isinstance(container, nn.ModuleList):
            continue
        for block in container:
            layers = dict(block.named_modules())
            for layout, names in BLOCK_LAYOUTS.items():
                if all(name in layers for name in names):
                    blocks.append(Block(*(layers[name] for name in names), layout in ADDS_RESIDUAL))
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
        if variant == "parallel" and block.adds_residual:
            block.ffn.register_forward_pre_hook(ffn.add_to_residual)
        elif variant == "parallel":
            block.ffn.register_forward_hook(ffn.add_beside)
        else:
            block.ffn_output.register_forward_hook(ffn.add_after)
    return adapters
