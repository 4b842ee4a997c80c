"""Task vectors: what a run's LoRA or (IA)^3 delta changes, one tensor per adapted module, and the ways of merging
several into one (Ilharco et al. 2023; Yadav et al. 2023, TIES; Yu et al. 2024, DARE).

A LoRA's task vector is its weight update itself, scaling * B A, formed densely so that each run's own rank and
scaling (alpha / r, or alpha / sqrt(r) under rsLoRA) are honoured; an (IA)^3 run's is its scaling vectors minus one.
Merging works on those, and the merged LoRA update is factorised again by SVD to a rank budget, with its error
reported. Our own rather than PEFT's `add_weighted_adapter`, whose `linear` sums the A and B factors separately (a
product of sums, with cross terms, not a sum of updates) and whose rsLoRA and DoRA merges are silently wrong.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from tunelab.errors import TunelabError

PEFT_PREFIX = "base_model.model."
LORA_A, LORA_B, IA3 = ".lora_A.weight", ".lora_B.weight", ".ia3_l"
METHODS = ("linear", "task-arithmetic", "ties", "dare-linear", "dare-ties", "cat")
SCALED = ("task-arithmetic", "ties", "dare-linear", "dare-ties")  # merged = scale * (what they combine)
SPARSIFIED = ("ties", "dare-linear", "dare-ties")  # keep a `density` share of each task vector


@dataclass(frozen=True)
class LoraDelta:
    """One run's LoRA: per module, (scaling * B, A), so that the update is their product."""

    factors: dict[str, tuple[torch.Tensor, torch.Tensor]]
    rank: int

    def vectors(self) -> dict[str, torch.Tensor]:
        return {module: up @ down for module, (up, down) in self.factors.items()}


@dataclass(frozen=True)
class MergeMethod:
    """How to combine task vectors: merged = scale * combine(weight_i * vector_i)."""

    name: str = "linear"
    weights: tuple[float, ...] | None = None  # one per source; default 1/N for linear and cat, else 1
    scale: float | None = None  # task-arithmetic, ties and dare: default 0.3 (FusionBench's setting)
    density: float | None = None  # ties and dare: the share of each task vector kept, default 0.2
    seed: int = 0  # dare's random drops

    def check(self, sources: int) -> None:
        if self.name not in METHODS:
            raise TunelabError(f"unknown merge method '{self.name}'; choose one of {', '.join(METHODS)}")
        if self.weights is not None and len(self.weights) != sources:
            raise TunelabError(f"--weights has {len(self.weights)} values for {sources} runs: give one per run, "
                               f"in the runs' order")
        if self.scale is not None and self.name not in SCALED:
            raise TunelabError(f"--scale applies to {', '.join(SCALED)}; {self.name} combines with --weights only")
        if self.density is not None and self.name not in SPARSIFIED:
            raise TunelabError(f"--density applies to {', '.join(SPARSIFIED)}; {self.name} keeps every entry")
        if self.density is not None and not 0 < self.density <= 1:
            raise TunelabError(f"--density is the share of each task vector kept: between 0 (exclusive) and 1, "
                               f"not {self.density}")

    def source_weights(self, sources: int) -> list[float]:
        default = 1 / sources if self.name in ("linear", "cat") else 1.0
        return list(self.weights) if self.weights is not None else [default] * sources

    def settings(self, sources: int) -> dict:
        """Every setting the merge used, defaults spelled out, for the bundle's record."""
        chosen = {"method": self.name, "weights": self.source_weights(sources)}
        if self.name in SCALED:
            chosen["scale"] = 0.3 if self.scale is None else self.scale
        if self.name in SPARSIFIED:
            chosen["density"] = 0.2 if self.density is None else self.density
        if self.name.startswith("dare"):
            chosen["seed"] = self.seed
        return chosen


def _module(key: str, suffix: str) -> str:
    return key.removeprefix(PEFT_PREFIX).removesuffix(suffix)


def read_lora(adapter: Path) -> LoraDelta:
    """A saved PEFT LoRA adapter folder as per-module factors whose product is the weight update."""
    config = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))
    if config.get("use_dora"):
        raise TunelabError(f"{adapter.parent} is a DoRA run: its update rescales each weight's norm, so it is not "
                           f"a weight update that sums; merge plain LoRA runs, or bundle it with `compose bundle`")
    if config.get("rank_pattern") or config.get("alpha_pattern"):
        raise TunelabError(f"{adapter} sets per-module ranks or alphas, which merge does not read; merge runs with "
                           f"one rank")
    rank, alpha = config["r"], config["lora_alpha"]
    scaling = alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
    tensors = load_file(str(adapter / "adapter_model.safetensors"))
    factors = {_module(key, LORA_A): (scaling * tensors[key.replace(LORA_A, LORA_B)].float(), tensor.float())
               for key, tensor in tensors.items() if key.endswith(LORA_A)}
    return LoraDelta(factors, rank)


def read_ia3(adapter: Path) -> dict[str, torch.Tensor]:
    """A saved PEFT (IA)^3 adapter folder as per-module task vectors: the learned scales minus one."""
    tensors = load_file(str(adapter / "adapter_model.safetensors"))
    return {_module(key, IA3): tensor.float() - 1 for key, tensor in tensors.items() if key.endswith(IA3)}


def trim(vector: torch.Tensor, density: float) -> torch.Tensor:
    """TIES' trim: keep the `density` share of entries largest in magnitude, zero the rest."""
    keep = max(1, math.ceil(density * vector.numel()))
    threshold = vector.abs().flatten().kthvalue(vector.numel() - keep + 1).values
    return torch.where(vector.abs() >= threshold, vector, torch.zeros_like(vector))


def drop(vector: torch.Tensor, density: float, generator: torch.Generator) -> torch.Tensor:
    """DARE: drop each entry with probability 1 - density and rescale the rest by 1 / density."""
    kept = torch.rand(vector.shape, generator=generator) < density
    return torch.where(kept, vector / density, torch.zeros_like(vector))


def disjoint_mean(vectors: list[torch.Tensor]) -> torch.Tensor:
    """TIES' elect and merge: each entry's sign is that of its summed values; average the values that agree."""
    stacked = torch.stack(vectors)
    sign = torch.sign(stacked.sum(dim=0))
    agrees = (torch.sign(stacked) == sign) & (stacked != 0)
    return (stacked * agrees).sum(dim=0) / agrees.sum(dim=0).clamp(min=1)


def combine(vectors: list[torch.Tensor], method: MergeMethod, generator: torch.Generator) -> torch.Tensor:
    """One module's merged task vector from the sources' (zeros where a source did not adapt the module)."""
    settings = method.settings(len(vectors))
    weighted = [weight * vector for weight, vector in zip(settings["weights"], vectors, strict=True)]
    if method.name in ("linear", "cat", "task-arithmetic"):
        merged = torch.stack(weighted).sum(dim=0)
    elif method.name == "ties":
        merged = disjoint_mean([trim(vector, settings["density"]) for vector in weighted])
    elif method.name == "dare-linear":
        merged = torch.stack([drop(vector, settings["density"], generator) for vector in weighted]).sum(dim=0)
    else:  # dare-ties
        merged = disjoint_mean([drop(vector, settings["density"], generator) for vector in weighted])
    return settings.get("scale", 1.0) * merged


def merge_vectors(sources: list[dict[str, torch.Tensor]], method: MergeMethod) -> dict[str, torch.Tensor]:
    """Every module any source adapted, merged. Two sources disagreeing on a module's shape (an (IA)^3 vector
    scaling a layer's input in one run and its output in another) cannot merge."""
    generator = torch.Generator().manual_seed(method.seed)
    merged = {}
    for module in sorted({module for source in sources for module in source}):
        present = [source[module] for source in sources if module in source]
        if any(vector.shape != present[0].shape for vector in present):
            shapes = sorted({tuple(vector.shape) for vector in present})
            raise TunelabError(f"the runs adapt {module} differently (shapes {shapes}): merge runs trained with the "
                               f"same targets")
        merged[module] = combine([source.get(module, torch.zeros_like(present[0])) for source in sources], method,
                                 generator)
    return merged


def factorise(update: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(B, A) of shapes (out, rank) and (rank, in) whose product is the best rank-`rank` approximation of `update`
    (zero-padded when the update's own rank is lower), and the squared Frobenius norm of what it misses."""
    left, values, right = torch.linalg.svd(update, full_matrices=False)
    kept = min(rank, values.numel())
    up = torch.zeros(update.shape[0], rank)
    down = torch.zeros(rank, update.shape[1])
    up[:, :kept] = left[:, :kept] * values[:kept]
    down[:kept] = right[:kept]
    return up, down, float(values[kept:].square().sum())


def concatenate(sources: list[LoraDelta], weights: list[float]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """`cat`: the sources' factors side by side, B_i weighted: B A = sum_i w_i B_i A_i exactly, at rank sum r_i.
    Source i always holds the same columns of B (rows of A), zeros where it did not adapt a module."""
    merged = {}
    for module in sorted({module for source in sources for module in source.factors}):
        up, down = next(source.factors[module] for source in sources if module in source.factors)
        blocks = [(weight * source.factors[module][0], source.factors[module][1]) if module in source.factors
                  else (up.new_zeros(up.shape[0], source.rank), down.new_zeros(source.rank, down.shape[1]))
                  for source, weight in zip(sources, weights, strict=True)]
        merged[module] = (torch.cat([up for up, _ in blocks], dim=1), torch.cat([down for _, down in blocks], dim=0))
    return merged


def lora_adapter(factors: dict[str, tuple[torch.Tensor, torch.Tensor]],
                 rank: int) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """PEFT's saved tensors for per-module (B, A) factors of `rank`, and the `lora` options that rebuild the adapter:
    alpha = r, a scaling of one, since the factors already carry each source's own scaling."""
    tensors = {}
    for module, (up, down) in factors.items():
        tensors[PEFT_PREFIX + module + LORA_A] = down.contiguous()
        tensors[PEFT_PREFIX + module + LORA_B] = up.contiguous()
    return tensors, {"r": rank, "alpha": float(rank), "target_modules": sorted(factors)}
