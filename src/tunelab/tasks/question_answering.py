"""Extractive question answering: the span model (start and end logits on every token) and the windows a question
and its context become, with the token positions of the gold answer (Devlin et al. 2019, section 4.2).

A context longer than `max_length` is cut into overlapping windows, each one read with the whole question; a window
that does not hold the whole answer, and an unanswerable question, point at the window's null position: the first
token ([CLS]) of an encoder, as in SQuAD 2.0 BERT, but in a causal model the first token sees only itself, so there
each window ends with an end-of-sequence token after the context, the one token that sees all of the window.
`tasks.span_postprocess` turns the logits of an example's windows back into one answer.
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass

import pandas as pd
import torch
from torch import nn
from transformers import PreTrainedTokenizerBase
from transformers.modeling_outputs import QuestionAnsweringModelOutput

from tunelab.assets.models import model_kind
from tunelab.errors import TunelabError
from tunelab.tasks.span_postprocess import Offsets


class SpanExtractor(nn.Module):
    """backbone -> every token's hidden state -> linear head -> (start, end) logits.

    Trained with the mean of the start and end cross-entropies; `labels` (B, 2) holds the gold start and end
    token of each window, so that the Trainer treats it like any other task's labels."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.config.hidden_size, 2)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None,
                labels: torch.Tensor | None = None) -> QuestionAnsweringModelOutput:
        segments = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        with warnings.catch_warnings():  # prompt methods read no segment ids: PEFT drops them, and says so each batch
            warnings.filterwarnings("ignore", message="Token type ids are not supported for parameter efficient tuning")
            hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask, **segments).last_hidden_state
        # Prompt methods prepend virtual tokens: the window's own positions come last.
        start_logits, end_logits = self.head(hidden[:, -input_ids.size(1):]).unbind(dim=-1)  # (B, T) each
        loss = None
        if labels is not None:
            loss = (nn.functional.cross_entropy(start_logits, labels[:, 0]) +
                    nn.functional.cross_entropy(end_logits, labels[:, 1])) / 2
        return QuestionAnsweringModelOutput(loss=loss, start_logits=start_logits, end_logits=end_logits)


def reads_segments(backbone: nn.Module) -> bool:
    """Whether the model has segment (token type) embeddings that tell the question from the context (BERT)."""
    return getattr(backbone.config, "type_vocab_size", 0) > 1


def is_causal(backbone: nn.Module) -> bool:
    """Whether each token sees only those before it (a decoder), so that the null answer must be read at the end."""
    return model_kind(backbone.config.model_type) == "causal"


@dataclass
class Windows:
    """The windows of a table of questions: model inputs, and what maps their tokens back to the questions."""

    inputs: dict[str, list[list[int]]]  # input_ids, attention_mask (and token_type_ids): unpadded
    labels: list[list[int]]  # per window: [start, end] token of the gold answer, or the null position twice
    example: list[int]  # per window: the row of its question
    offsets: list[Offsets]
    null: list[int]  # per window: the position of the null answer, 0 ([CLS]) or, causal, its last token

    def by_example(self) -> dict[int, list[int]]:
        """Question row -> its windows, in order."""
        grouped = defaultdict(list)
        for window, row in enumerate(self.example):
            grouped[row].append(window)
        return grouped


def answer_tokens(offsets: Offsets, start: int, end: int, null: int) -> list[int]:
    """[first, last] token of the characters [start, end) in one window, or the null position twice when the
    window does not hold all of them."""
    inside = [index for index, span in enumerate(offsets) if span is not None]
    if not inside or offsets[inside[0]][0] > start or offsets[inside[-1]][1] < end:
        return [null, null]
    first = max(index for index in inside if offsets[index][0] <= start)
    last = min(index for index in inside if offsets[index][1] >= end)
    return [first, last]


def window_stride(room: int, doc_stride: int) -> int:
    """Tokens shared by consecutive windows: `doc_stride`, capped at half of the room a window has for context so
    that windows advance at least that far."""
    return min(doc_stride, room // 2)


def _context_rooms(tokenizer: PreTrainedTokenizerBase, examples: pd.DataFrame, max_length: int,
                   closing: int | None) -> list[int]:
    """Per question: the tokens its windows leave for context; a question that leaves none is an error."""
    questions = tokenizer(examples["question"].str.lstrip().tolist(), add_special_tokens=False)["input_ids"]
    special = tokenizer.num_special_tokens_to_add(pair=True) + (closing is not None)
    rooms = [max_length - len(ids) - special for ids in questions]
    for (question_id, room) in zip(examples["id"], rooms, strict=True):
        if room < 1:
            raise TunelabError(f"question {question_id!r} takes {max_length - special - room} tokens, which leaves "
                               f"no room for its context in max_length {max_length}: raise --max-length or shorten "
                               f"the question")
    return rooms


def _closing_token(tokenizer: PreTrainedTokenizerBase) -> int:
    """The token that ends a causal model's windows: end of sequence, or a BERT-style tokenizer's [SEP]."""
    closing = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    if closing is None:
        raise TunelabError("question answering on a causal model ends each window with the end-of-sequence token, "
                           "and this tokenizer has none: set its eos_token")
    return closing


def _windows_of(encoded, part: pd.DataFrame, rows: list[int], segments: bool, closing: int | None) -> Iterator[tuple]:
    """(row, window index, model inputs, label, offsets, null position) of each window the tokenizer cut from
    `part`; with a `closing` token, appended to every window, which is the null position."""
    keys = [key for key in ("input_ids", "attention_mask", "token_type_ids")
            if key in encoded and (segments or key != "token_type_ids")]
    answers, starts = part["answers"].tolist(), part["answer_starts"].tolist()
    for index, row_in_part in enumerate(encoded["overflow_to_sample_mapping"]):
        sequence = encoded.sequence_ids(index)
        offsets = [span if sequence[token] == 1 else None
                   for token, span in enumerate(encoded["offset_mapping"][index])]
        inputs = {key: encoded[key][index] for key in keys}
        if closing is not None:
            appended = {"input_ids": closing, "attention_mask": 1}  # token_type_ids: the context's segment
            inputs = {key: values + [appended.get(key, values[-1])] for key, values in inputs.items()}
            offsets.append(None)
        null = len(offsets) - 1 if closing is not None else 0
        label = [null, null]
        if answers[row_in_part]:  # training reads the first gold answer
            start = starts[row_in_part][0]
            label = answer_tokens(offsets, start, start + len(answers[row_in_part][0]), null)
        yield rows[row_in_part], index, inputs, label, offsets, null


def encode_windows(tokenizer: PreTrainedTokenizerBase, examples: pd.DataFrame, max_length: int, doc_stride: int,
                   segments: bool, causal: bool = False) -> Windows:
    """Question + context windows of at most `max_length` tokens (the context truncated, overflowing into further
    windows), in question order, with the first gold answer's tokens as labels; segment ids only when the model
    reads them; for a `causal` model, an end token after each window's context as its null position. Questions are
    tokenised in groups of equal stride: a long question leaves less room, so a smaller stride."""
    if not tokenizer.is_fast:
        raise TunelabError("question answering needs a fast tokenizer (it maps tokens back to characters); this "
                           "model has only a slow one")
    closing = _closing_token(tokenizer) if causal else None
    rooms = _context_rooms(tokenizer, examples, max_length, closing)
    strides = [window_stride(room, doc_stride) for room in rooms]
    windows = []
    for stride in sorted(set(strides)):
        rows = [row for row, value in enumerate(strides) if value == stride]
        part = examples.iloc[rows]
        encoded = tokenizer(part["question"].str.lstrip().tolist(), part["context"].tolist(),
                            truncation="only_second", max_length=max_length - (closing is not None), stride=stride,
                            return_overflowing_tokens=True, return_offsets_mapping=True)
        windows.extend(_windows_of(encoded, part, rows, segments, closing))
    windows.sort(key=lambda window: window[:2])
    rows, _, inputs, labels, offsets, null = zip(*windows, strict=True)
    return Windows({key: [fields[key] for fields in inputs] for key in inputs[0]}, list(labels), list(rows),
                   list(offsets), list(null))
