"""Batches of similar length, padded on the model's device: how every predictor (sentences, tags, spans) and the
reward model feed their models. A leaf: it imports nothing of tunelab."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from torch import nn
from transformers import BatchEncoding, PreTrainedTokenizerBase


def length_ordered_batches(lengths: list[int], batch_size: int) -> list[np.ndarray]:
    """Indices in batches of similar length, so that little of each batch is padding."""
    order = np.argsort(lengths, kind="stable")
    return [order[start:start + batch_size] for start in range(0, len(order), batch_size)]


def padded_batches(model: nn.Module, tokenizer: PreTrainedTokenizerBase, encoded: dict[str, list[list[int]]],
                   batch_size: int) -> Iterator[tuple[np.ndarray, BatchEncoding]]:
    """Encoded examples padded in batches of similar length on the model's device, each with its examples' indices:
    how every predictor (sentences, tags, spans) feeds its model."""
    device = next(model.parameters()).device
    for chosen in length_ordered_batches([len(ids) for ids in encoded["input_ids"]], batch_size):
        yield chosen, tokenizer.pad({key: [values[i] for i in chosen] for key, values in encoded.items()},
                                    return_tensors="pt").to(device)
