"""LoRA (Hu et al. 2021): the backbone stays frozen; each adapted linear layer W gains a trainable low-rank
update scaling * B A (r << d, B starts at zero, so training starts from the pre-trained model exactly).

Built on `peft`; the adapter is saved in PEFT's own format (`adapter/`), so plain `peft` can load it onto the
base model, and the task head beside it. Defaults measured on MiniLM (docs/architecture.md): every linear layer
of the transformer blocks, r=4, alpha 8, no dropout (on a CPU LoRA's input dropout costs more than it saves).
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
from pydantic import BaseModel, ConfigDict, Field
from safetensors.torch import load_file
from torch import nn
from transformers.pytorch_utils import Conv1D

from tunelab.errors import TunelabError
from tunelab.strategies.base import DELTA_FILE, load_tensors, mark_applied, save_tensors

ADAPTER_DIR = "adapter"
HEAD = ("head.",)
# Inside a numbered block: encoder.layer.3.attention.self.query, layers.0.mlp.up_proj, h.2.attn.c_attn
BLOCK_MODULE = re.compile(r"(^|\.)\d+\.")


class LoraOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    r: int = Field(4, gt=0, description="rank of the update")
    alpha: float = Field(8.0, gt=0, description="scaling numerator: the update is (alpha / r) * B A")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the adapted layers' input")
    target_modules: list[str] | None = Field(
        None, description="module name suffixes to adapt (e.g. [query, value]); default: every linear layer "
                          "inside the transformer blocks")
    use_dora: bool = Field(False, description="weight-decomposed LoRA (Liu et al. 2024)")
    use_rslora: bool = Field(False, description="rank-stabilised scaling alpha / sqrt(r) (Kalajdzievski 2023)")


def block_linear_layers(backbone: nn.Module) -> list[str]:
    """Exact names of the linear layers inside the repeated blocks: not the pooler, not the embeddings.

    GPT-2-style models implement their linear layers as `Conv1D`, which PEFT adapts too."""
    return [name for name, module in backbone.named_modules()
            if isinstance(module, (nn.Linear, Conv1D)) and BLOCK_MODULE.search(name)]


class Lora:
    name = "lora"
    summary = "frozen backbone plus trainable low-rank updates; mergeable, a small delta per task"
    Options = LoraOptions
    default_learning_rate = 2e-3
    default_epochs = 3.0

    def trains_on_features(self, options: BaseModel) -> bool:
        return False

    def apply(self, model: nn.Module, options: LoraOptions) -> None:
        mark_applied(model, self.name)
        targets = options.target_modules or block_linear_layers(model.backbone)
        names = [name for name, _ in model.backbone.named_modules()]
        unmatched = [t for t in targets if not any(name == t or name.endswith("." + t) for name in names)]
        if unmatched:  # PEFT's own rule: a target names a module by its full name or a dotted suffix
            raise TunelabError(f"lora: target module(s) {', '.join(unmatched)} match no layer of this model; "
                               f"name its linear layers, e.g. --option 'target_modules=[query,value]'")
        config = LoraConfig(r=options.r, lora_alpha=options.alpha, lora_dropout=options.dropout,
                            target_modules=targets, use_dora=options.use_dora, use_rslora=options.use_rslora)
        try:
            with warnings.catch_warnings():  # peft calls a transformers API that is deprecated but still correct
                warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated")
                model.backbone = get_peft_model(model.backbone, config)  # freezes the base weights
        except ValueError as error:
            raise TunelabError(f"lora cannot adapt this model: {str(error).splitlines()[0]}; "
                               f"set --option target_modules=[...] to module names it has") from None

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
