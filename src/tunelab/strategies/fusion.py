"""AdapterFusion as a strategy: the bottleneck adapters of other runs (`sources`, each an `adapter` run on the same
base model) stay frozen; a fusion attention per adapter site and a new head train on this run's task.

The delta holds what trained (the fusion layers and the head); the sources' adapters are read from their runs
whenever the model is built, so a fusion run needs its sources where its config names them (absolute paths).
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator
from safetensors.torch import load_file
from torch import nn

from tunelab.adapters.bottleneck import Bottleneck
from tunelab.adapters.fusion import insert_fusion
from tunelab.assets.models import base_fingerprint
from tunelab.config import CONFIG_FILE, read_yaml
from tunelab.errors import TunelabError
from tunelab.strategies.adapter import ADAPTER_CONFIG
from tunelab.strategies.base import DELTA_FILE, PartialTraining, freeze_all_but, mark_applied
from tunelab.strategies.catalog import CATALOG

FUSED_VARIANTS = ("houlsby", "pfeiffer")  # adapters after a layer's output, where a fusion can read them


class FusionOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sources: list[str] = Field(..., description="the adapter runs to fuse (at least two): a list, or "
                                                "comma-separated paths")

    @field_validator("sources", mode="before")
    @classmethod
    def _paths(cls, value: object) -> object:
        """'a,b' as well as [a, b]; stored as absolute paths, so the run loads from any working directory."""
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list):
            return items
        paths = [str(Path(str(item).strip()).expanduser().resolve()) for item in items if str(item).strip()]
        if len(paths) < 2:
            raise ValueError("fusion needs at least two source runs")
        return paths


def read_source(run: Path, fingerprints: dict[str, str]) -> dict[str, Bottleneck]:
    """A source run's adapters, frozen, after checking that it is an adapter run on this base model: the first of
    `fingerprints` (model name -> fingerprint, filled as sources name models, so each base is hashed once)."""
    if not (run / CONFIG_FILE).exists():
        raise TunelabError(f"fusion source {run} is not a tunelab run directory (no {CONFIG_FILE})")
    config = read_yaml(run / CONFIG_FILE)
    strategy = config.get("strategy", {}).get("name")
    if strategy not in CATALOG or CATALOG[strategy].delta != "adapter":
        raise TunelabError(f"fusion source {run} was trained with {strategy}: fusion combines bottleneck adapter "
                           f"runs (--strategy adapter)")
    if config["model"] not in fingerprints:
        fingerprints[config["model"]] = base_fingerprint(config["model"])
    if fingerprints[config["model"]] != next(iter(fingerprints.values())):
        raise TunelabError(f"fusion source {run} was trained on {config['model']}, another base model than this "
                           f"run's: fuse adapters of this run's base model")
    description = json.loads((run / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    if description["variant"] not in FUSED_VARIANTS:
        raise TunelabError(f"fusion source {run} has {description['variant']} adapters, which sit beside a layer; "
                           f"fusion reads adapters after one ({', '.join(FUSED_VARIANTS)})")
    weights = load_file(str(run / DELTA_FILE))
    adapters = {}
    for name, shape in description["adapters"].items():
        adapter = Bottleneck(shape["size"], shape["bottleneck"], description["activation"], description["scaling"])
        adapter.load_state_dict({key.removeprefix(f"adapters.{name}."): value for key, value in weights.items()
                                 if key.startswith(f"adapters.{name}.")})
        adapters[name] = adapter.requires_grad_(False)
    return adapters


class AdapterFusion(PartialTraining):
    name = "fusion"
    Options = FusionOptions

    def trainable_prefixes(self, options: BaseModel) -> tuple[str, ...]:
        return ("fusion.", "head.")

    def trains_on_features(self, options: BaseModel) -> bool:
        return False

    def apply(self, model: nn.Module, options: FusionOptions) -> None:
        mark_applied(model, self.name)
        fingerprints = {model.backbone.config.name_or_path: base_fingerprint(model.backbone.config.name_or_path)}
        sources = [read_source(Path(source), fingerprints) for source in options.sources]
        model.fusion_sources = nn.ModuleList(nn.ModuleDict(source) for source in sources)
        model.fusion = insert_fusion(model.backbone, sources)
        freeze_all_but(model, self.trainable_prefixes(options))

    def merge(self, model: nn.Module) -> None:
        raise TunelabError("fusion cannot be merged: it attends over extra adapter layers, which are not a weight "
                           "update; lora and ia3 merge")
