"""Bottleneck adapters as a strategy: the backbone stays frozen, small adapters and the head train.

The delta is `delta.safetensors` (adapters and head) with `adapter_config.json` describing where the adapters
sit, so another tool can rebuild them; PEFT has no bottleneck adapters, hence our own format."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from tunelab.adapters.bottleneck import Variant, insert_adapters
from tunelab.errors import TunelabError
from tunelab.strategies.base import PartialTraining, freeze_all_but, mark_applied

ADAPTER_CONFIG = "adapter_config.json"


class AdapterOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    variant: Variant = Field("houlsby", description="houlsby (after attention and FFN), pfeiffer (after FFN), "
                                                    "parallel (beside the FFN)")
    reduction_factor: int = Field(16, gt=0, description="bottleneck size = hidden size / reduction_factor")
    bottleneck_size: int | None = Field(None, gt=0, description="explicit bottleneck size (overrides the factor)")
    activation: Literal["relu", "gelu", "silu", "tanh"] = Field("relu", description="the bottleneck's non-linearity")
    scaling: float = Field(1.0, gt=0, description="multiplies the adapter's output (He et al. use 4 for parallel)")
    layers: list[int] | None = Field(None, description="block indices to adapt (default: every block)")


def attach(backbone: nn.Module, options: AdapterOptions) -> nn.ModuleDict:
    """The adapters these options describe, hooked into `backbone`."""
    size = options.bottleneck_size or max(1, backbone.config.hidden_size // options.reduction_factor)
    return insert_adapters(backbone, options.variant, size, options.activation, options.scaling, options.layers)


class BottleneckAdapters(PartialTraining):
    name = "adapter"
    Options = AdapterOptions

    def trainable_prefixes(self, options: BaseModel) -> tuple[str, ...]:
        return ("adapters.", "head.")

    def trains_on_features(self, options: BaseModel) -> bool:
        return False

    def apply(self, model: nn.Module, options: AdapterOptions) -> None:
        mark_applied(model, self.name)
        model.adapters = attach(model.backbone, options)
        freeze_all_but(model, self.trainable_prefixes(options))

    def save_delta(self, model: nn.Module, options: AdapterOptions, folder: Path) -> list[Path]:
        description = {"variant": options.variant, "activation": options.activation, "scaling": options.scaling,
                       "adapters": {name: {"size": adapter.down.in_features, "bottleneck": adapter.down.out_features}
                                    for name, adapter in model.adapters.items()}}
        config = folder / ADAPTER_CONFIG
        config.write_text(json.dumps(description, indent=2) + "\n", encoding="utf-8")
        return [config, *super().save_delta(model, options, folder)]

    def merge(self, model: nn.Module) -> None:
        raise TunelabError("adapter cannot be merged: bottleneck adapters are extra layers with a non-linearity, "
                           "not a weight update; lora and ia3 merge")
