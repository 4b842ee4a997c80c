"""Base models: load a backbone and its tokenizer, pool hidden states into one vector per text, and the loss the
classifier heads share."""

from __future__ import annotations

import torch
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from tunelab.assets.models import ModelSpec, Pooling
from tunelab.errors import TunelabError


def load_tokenizer(spec: ModelSpec) -> PreTrainedTokenizerBase:
    tokenizer = AutoTokenizer.from_pretrained(spec.path)
    if tokenizer.pad_token is None:  # causal LMs often have none; padding is masked out anyway
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"  # last-token pooling reads the position from the mask
    return tokenizer


def load_backbone(spec: ModelSpec) -> PreTrainedModel:
    """The bare transformer (no LM head): heads are the task's, kept outside any adapter library."""
    return AutoModel.from_pretrained(spec.path, dtype=torch.float32)


def load_causal_lm(spec: ModelSpec) -> PreTrainedModel:
    """The model with its language-modelling head; encoders are refused (their LM heads are not causal)."""
    if spec.kind != "causal":
        raise TunelabError(f"generation needs a causal LM; {spec.name} is an encoder: use --model smollm2 or "
                           f"another decoder-only model")
    return AutoModelForCausalLM.from_pretrained(spec.path, dtype=torch.float32)


def pool(hidden: torch.Tensor, mask: torch.Tensor, mode: Pooling) -> torch.Tensor:
    """(B, T, H) hidden states and (B, T) attention mask -> (B, H) sentence vectors."""
    if mode == "cls":
        return hidden[:, 0]
    if mode == "last":  # right padding: the last real token sits at length - 1
        last = mask.sum(dim=1).clamp(min=1) - 1
        return hidden[torch.arange(hidden.size(0), device=hidden.device), last]
    weights = mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)


def weighted_cross_entropy(logits: torch.Tensor, labels: torch.Tensor,
                           class_weights: torch.Tensor | None) -> torch.Tensor:
    """Cross-entropy; with weights, the weighted mean over the batch (each example counts its label's weight)."""
    weight = None if class_weights is None else class_weights.to(logits.device, logits.dtype)
    return torch.nn.functional.cross_entropy(logits, labels, weight=weight)


DEFAULT_HEAD_DROPOUT = 0.1


def head_dropout(config: PretrainedConfig) -> float:
    """The dropout before a task head, as transformers' own heads choose it: the model's classifier dropout, else
    its hidden dropout, else 0.1 (models that name neither, such as Llama)."""
    for name in ("classifier_dropout", "hidden_dropout_prob"):
        value = getattr(config, name, None)
        if value is not None:
            return float(value)
    return DEFAULT_HEAD_DROPOUT
