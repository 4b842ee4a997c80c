"""A template filled with a row of data, as token ids: what the language model reads.

Each piece is tokenised on its own and the ids are joined, so the label slot's position and every soft token's
position are known exactly rather than searched for in a re-tokenised string. Soft tokens get ids past the end
of the vocabulary (`soft_base + k`); the model swaps in their trainable vectors. User text is tokenised with
`split_special_tokens`, so a review that contains "[MASK]" cannot fake a label slot.
"""

from __future__ import annotations

import pandas as pd
from transformers import PreTrainedTokenizerBase

from tunelab.errors import TunelabError
from tunelab.prompting.template import Field, LabelSlot, Soft, Template, Text


def special_tokens_around(tokenizer: PreTrainedTokenizerBase) -> tuple[list[int], list[int]]:
    """The ids a tokenizer puts before and after a text ([CLS] .. [SEP] for BERT, <s> for Llama 2, none for
    SmolLM2), read off by tokenising a probe word with and without them."""
    inner = tokenizer("x", add_special_tokens=False)["input_ids"]
    full = tokenizer("x", add_special_tokens=True)["input_ids"]
    start = next(i for i in range(len(full) - len(inner) + 1) if full[i:i + len(inner)] == inner)
    return full[:start], full[start + len(inner):]


class TemplateEncoder:
    """Rows of data -> token ids of the filled template, truncating the inputs (never the template) to fit."""

    def __init__(self, template: Template, tokenizer: PreTrainedTokenizerBase, max_length: int, causal: bool,
                 soft_base: int):
        """`causal`: the label word is predicted after the last token, so the slot must end the template and
        nothing may follow it; otherwise the slot is the tokenizer's mask token."""
        if causal and not template.ends_with_label_slot():
            raise TunelabError(f"template '{template.source}': a causal LM predicts the label word from the text "
                               f"before it, so {{label}} must end the template")
        if not causal and tokenizer.mask_token_id is None:
            raise TunelabError("this masked LM's tokenizer has no mask token to put in the label slot")
        self.template, self.tokenizer, self.max_length, self.causal = template, tokenizer, max_length, causal
        self.before, after = special_tokens_around(tokenizer)
        self.after = [] if causal else after  # the causal slot is the last position: nothing may follow it
        self.soft_init_ids: list[int | None] = []  # per soft token: the vocabulary id it starts from, or random
        self.pieces: list[list[int] | str] = []  # fixed ids, or the name of a field
        for segment in template.segments:
            self.pieces.append(self._fixed_ids(segment, soft_base) if not isinstance(segment, Field) else
                               segment.name)
        self.fixed_length = len(self.before) + len(self.after) + sum(
            len(piece) for piece in self.pieces if isinstance(piece, list))
        if self.fixed_length >= max_length:
            raise TunelabError(f"template '{template.source}' takes {self.fixed_length} of the {max_length} tokens "
                               f"allowed, leaving none for the input; raise --max-length or shorten the template")

    def _fixed_ids(self, segment: Text | LabelSlot | Soft, soft_base: int) -> list[int]:
        if isinstance(segment, Text):
            return self.tokenizer(segment.text, add_special_tokens=False)["input_ids"]
        if isinstance(segment, LabelSlot):
            return [] if self.causal else [self.tokenizer.mask_token_id]
        if segment.init is None:
            inits: list[int | None] = [None] * segment.count
        else:
            inits = self.tokenizer(segment.init, add_special_tokens=False)["input_ids"]
        first = soft_base + len(self.soft_init_ids)
        self.soft_init_ids += inits
        return list(range(first, first + len(inits)))

    @property
    def fields(self) -> list[str]:
        return self.template.fields

    def _field_ids(self, rows: pd.DataFrame) -> dict[str, list[list[int]]]:
        missing = [name for name in self.fields if name not in rows.columns]
        if missing:
            raise TunelabError(f"the template reads {{{missing[0]}}}, which these examples do not have "
                               f"(they have {', '.join(map(str, rows.columns))})")
        leads = {segment.name: segment.lead for segment in self.template.segments if isinstance(segment, Field)}
        budget = self.max_length - self.fixed_length  # no single input can use more; several share it
        return {name: self.tokenizer([leads[name] + str(value) for value in rows[name]], add_special_tokens=False,
                                     split_special_tokens=True, truncation=True, max_length=budget)["input_ids"]
                for name in self.fields}

    def _truncate(self, fields: dict[str, list[int]]) -> dict[str, list[int]]:
        """Cut the longest input from its end, a token at a time, until the filled template fits."""
        lengths = {name: len(ids) for name, ids in fields.items()}
        while sum(lengths.values()) > self.max_length - self.fixed_length:
            lengths[max(lengths, key=lengths.__getitem__)] -= 1
        return {name: ids[:lengths[name]] for name, ids in fields.items()}

    def __call__(self, rows: pd.DataFrame) -> dict[str, list[list[int]]]:
        """Unpadded `input_ids` and `attention_mask` per row; the collator pads each batch."""
        columns = self._field_ids(rows)
        encoded = []
        for index in range(len(rows)):
            fields = self._truncate({name: ids[index] for name, ids in columns.items()})
            ids = list(self.before)
            for piece in self.pieces:
                ids += fields[piece] if isinstance(piece, str) else piece
            encoded.append(ids + self.after)
        return {"input_ids": encoded, "attention_mask": [[1] * len(ids) for ids in encoded]}
