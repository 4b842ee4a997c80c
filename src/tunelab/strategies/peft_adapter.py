"""What the PEFT-backed strategies share: wrap the backbone (never the head) with a `peft` config, and keep the
delta in PEFT's own format (`adapter/`, loadable by plain `peft` onto the base model) beside the head's tensors."""

from __future__ import annotations

import warnings
from pathlib import Path

from peft import PeftConfig, get_peft_model, set_peft_model_state_dict
from pydantic import BaseModel
from safetensors.torch import load_file
from torch import nn

from tunelab.errors import TunelabError
from tunelab.strategies.base import DELTA_FILE, Catalogued, load_tensors, mark_applied, save_tensors

# peft calls a transformers API that is deprecated but still correct, whenever it wraps or loads a model.
warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)

ADAPTER_DIR = "adapter"
HEAD = ("head.",)


def check_targets(backbone: nn.Module, targets: list[str], strategy: str) -> None:
    """PEFT's own rule: a target names a module by its full name or a dotted suffix; fail before training."""
    names = [name for name, _ in backbone.named_modules()]
    unmatched = [t for t in targets if not any(name == t or name.endswith("." + t) for name in names)]
    if unmatched:
        raise TunelabError(f"{strategy}: target module(s) {', '.join(unmatched)} match no layer of this model; "
                           f"name its linear layers, e.g. --option 'target_modules=[query,value]'")


class PeftAdapter(Catalogued):
    """Base of the PEFT strategies: a subclass says which `peft` config to build."""

    name: str

    def peft_config(self, backbone: nn.Module, options: BaseModel) -> PeftConfig:
        raise NotImplementedError

    def trains_on_features(self, options: BaseModel) -> bool:
        return False

    def apply(self, model: nn.Module, options: BaseModel) -> None:
        mark_applied(model, self.name)
        config = self.peft_config(model.backbone, options)
        try:
            model.backbone = get_peft_model(model.backbone, config)  # freezes the base weights
        except ValueError as error:
            raise TunelabError(f"{self.name} cannot adapt this model: {str(error).splitlines()[0]}") from None

    def save_delta(self, model: nn.Module, options: BaseModel, folder: Path) -> list[Path]:
        adapter = folder / ADAPTER_DIR
        model.backbone.save_pretrained(adapter)
        return [*sorted(adapter.iterdir()), save_tensors(model, HEAD, folder / DELTA_FILE, self.name)]

    def load_delta(self, model: nn.Module, options: BaseModel, folder: Path) -> None:
        weights = load_file(str(folder / ADAPTER_DIR / "adapter_model.safetensors"))
        result = set_peft_model_state_dict(model.backbone, weights)
        if result.unexpected_keys:
            raise TunelabError(f"{folder / ADAPTER_DIR} does not fit this model (e.g. {result.unexpected_keys[0]})")
        load_tensors(model, HEAD, folder / DELTA_FILE)

    def merge(self, model: nn.Module) -> None:
        model.backbone = model.backbone.merge_and_unload()
