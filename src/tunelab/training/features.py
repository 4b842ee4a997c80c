"""Encode texts once through a frozen encoder into pooled sentence vectors."""

from __future__ import annotations

import datasets
import torch
from tqdm.auto import tqdm
from transformers import DataCollatorWithPadding, PreTrainedTokenizerBase

from tunelab.tasks.classification import SequenceClassifier


@torch.no_grad()
def extract_features(model: SequenceClassifier, encoded: datasets.Dataset, tokenizer: PreTrainedTokenizerBase,
                     batch_size: int, description: str, progress: bool = True) -> torch.Tensor:
    """(N, H) sentence vectors for the N tokenised texts, in their original order.

    Texts are batched in order of length so that batches carry little padding; the frozen encoder's
    output for a text does not depend on its batch-mates.
    """
    was_training = model.training
    model.eval()
    collate = DataCollatorWithPadding(tokenizer)
    lengths = [len(ids) for ids in encoded["input_ids"]]
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    rows = encoded.select(order).select_columns(["input_ids", "attention_mask"])
    loader = torch.utils.data.DataLoader(rows, batch_size=batch_size, collate_fn=collate)
    device = next(model.parameters()).device
    vectors = torch.cat([model.embed(batch["input_ids"].to(device), batch["attention_mask"].to(device)).cpu()
                         for batch in tqdm(loader, desc=description, disable=not progress, leave=False)])
    model.train(was_training)
    return vectors[torch.argsort(torch.tensor(order))]
