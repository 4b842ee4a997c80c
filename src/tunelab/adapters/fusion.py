"""AdapterFusion (Pfeiffer et al. 2021): where bottleneck adapters sit in a block, an attention over what several
frozen adapters (trained on other tasks) make of the layer's output, queried by that output itself; the fused
result replaces the layer's output. Each adapter's output z_n = h + adapter_n(h); the weights are
softmax_n(query(h) . key(z_n)) and the result is sum_n weight_n value(z_n). The value projection starts as the
identity and the query and key near zero, so an untrained fusion adds the mean of what the adapters add.

No temperature annealing (AdapterHub's default leaves it off as well).
"""

from __future__ import annotations

import torch
from torch import nn

from tunelab.adapters.bottleneck import Bottleneck, find_blocks
from tunelab.errors import TunelabError


class Fusion(nn.Module):
    """The fusion attention at one adapter site, over the sources' adapters at that site."""

    def __init__(self, size: int, sources: list[Bottleneck]):
        super().__init__()
        self.query, self.key, self.value = nn.Linear(size, size), nn.Linear(size, size), nn.Linear(size, size)
        for projection in (self.query, self.key):
            nn.init.normal_(projection.weight, std=0.02)
            nn.init.zeros_(projection.bias)
        nn.init.eye_(self.value.weight)
        nn.init.zeros_(self.value.bias)
        # A plain list: the sources are registered (and frozen) where the model keeps them, not here.
        self.sources = sources

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        outputs = torch.stack([hidden + source(hidden) for source in self.sources], dim=-2)  # (..., N, H)
        scores = (self.query(hidden).unsqueeze(-2) * self.key(outputs)).sum(dim=-1)  # (..., N)
        return (scores.softmax(dim=-1).unsqueeze(-1) * self.value(outputs)).sum(dim=-2)

    def replace_output(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        return self(output)


def adapter_sites(backbone: nn.Module) -> dict[str, nn.Module]:
    """The layers whose outputs Houlsby and Pfeiffer adapters read, named as `insert_adapters` names them."""
    sites = {}
    for index, block in enumerate(find_blocks(backbone)):
        sites[f"layer{index}_attention"] = block.attention_output
        sites[f"layer{index}_ffn"] = block.ffn_output
    return sites


def insert_fusion(backbone: nn.Module, sources: list[dict[str, Bottleneck]]) -> nn.ModuleDict:
    """A `Fusion` at every site the sources adapt (they must adapt the same sites), hooked onto the site's layer."""
    names = list(sources[0])
    if any(list(source) != names for source in sources):
        raise TunelabError("fusion: the source adapters sit in different places (variant or layers); fuse runs "
                           "trained with the same adapter options")
    sites = adapter_sites(backbone)
    fusions = nn.ModuleDict()
    for name in names:
        if name not in sites:
            raise TunelabError(f"fusion: the sources adapt {name}, which this model does not have")
        fusions[name] = fusion = Fusion(sources[0][name].down.in_features, [source[name] for source in sources])
        sites[name].register_forward_hook(fusion.replace_output)
    return fusions
