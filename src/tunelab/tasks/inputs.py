"""What a classifier reads: rows of data -> token ids. A head classifier reads the text as it is; a prompt-based
one reads it inside its template (`PromptClassifier.encoder`). Training, evaluation and prediction all encode
through `input_encoder`, so they cannot disagree."""

from __future__ import annotations

import pandas as pd
from torch import nn
from transformers import PreTrainedTokenizerBase

from tunelab.prompting.encoding import TemplateEncoder
from tunelab.prompting.model import PromptClassifier


class TextEncoder:
    def __init__(self, tokenizer: PreTrainedTokenizerBase, max_length: int):
        self.tokenizer, self.max_length = tokenizer, max_length

    def __call__(self, rows: pd.DataFrame) -> dict[str, list[list[int]]]:
        """Unpadded `input_ids` and `attention_mask` per row; the collator pads each batch."""
        encoded = self.tokenizer(rows["text"].tolist(), truncation=True, max_length=self.max_length)
        return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}


def input_encoder(model: nn.Module, tokenizer: PreTrainedTokenizerBase,
                  max_length: int) -> TextEncoder | TemplateEncoder:
    return model.encoder if isinstance(model, PromptClassifier) else TextEncoder(tokenizer, max_length)
