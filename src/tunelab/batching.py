"""Batches of similar length, padded on the model's device: how every predictor (sentences, tags, spans) and the
reward model feed their models, and the order training batches come in. A leaf: it imports nothing of tunelab."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
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


def padding_share(lengths: list[int], order: list[int], batch_size: int) -> float:
    """The share of padded positions when the examples, in `order`, are cut into batches padded to their longest."""
    ordered = np.asarray(lengths)[np.asarray(order, dtype=int)]
    batches = [ordered[start:start + batch_size] for start in range(0, len(ordered), batch_size)]
    padded = sum(int(batch.max()) * len(batch) for batch in batches)
    return 1.0 - float(ordered.sum()) / padded if padded else 0.0


def random_order_padding_share(lengths: list[int], batch_size: int) -> float:
    """The padding share of one random epoch (a fixed draw, so that a decision made on it repeats)."""
    return padding_share(lengths, np.random.default_rng(0).permutation(len(lengths)).tolist(), batch_size)


class LengthBucketSampler(torch.utils.data.Sampler[int]):
    """Training order in batches of similar length: each epoch shuffles the examples, sorts each bucket of
    `bucket_batches` batches by length, cuts it into batches and shuffles the batches, so that a batch pads to a
    length close to its examples' while the order still randomises (HF's LengthGroupedSampler sorts whole
    mega-batches and keeps their batches in order of length, longest first). A short last batch stays last, so that
    a DataLoader cutting the order every `batch_size` indices sees exactly these batches. Each epoch's order follows
    from the seed and the epoch alone (the Trainer calls `set_epoch`), so a run resumed mid-epoch skips exactly the
    batches it had trained on."""

    def __init__(self, lengths: list[int], batch_size: int, seed: int, bucket_batches: int = 16):
        self.lengths, self.batch_size, self.bucket = np.asarray(lengths), batch_size, batch_size * bucket_batches
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng([self.seed, self.epoch])
        shuffled = rng.permutation(len(self.lengths))
        buckets = [shuffled[start:start + self.bucket] for start in range(0, len(shuffled), self.bucket)]
        ordered = np.concatenate([bucket[np.argsort(self.lengths[bucket], kind="stable")] for bucket in buckets])
        batches = [ordered[start:start + self.batch_size] for start in range(0, len(ordered), self.batch_size)]
        if not batches:
            return iter([])
        ragged = [batches.pop()] if len(batches[-1]) < self.batch_size else []
        order = [batches[index] for index in rng.permutation(len(batches))] + ragged
        return iter(np.concatenate(order).tolist())

