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
    """(N, H) sentence vectors for the N tokenised texts, in order."""
    was_training = model.training
    model.eval()
    collate = DataCollatorWithPadding(tokenizer)
    columns = encoded.remove_columns([c for c in encoded.column_names if c not in ("input_ids", "attention_mask")])
    loader = torch.utils.data.DataLoader(columns, batch_size=batch_size, collate_fn=collate)
    device = next(model.parameters()).device
    vectors = [model.embed(batch["input_ids"].to(device), batch["attention_mask"].to(device)).cpu()
               for batch in tqdm(loader, desc=description, disable=not progress, leave=False)]
    model.train(was_training)
    return torch.cat(vectors)
