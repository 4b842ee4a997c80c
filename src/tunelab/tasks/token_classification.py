"""Token classification (NER, tagging): a linear head on every token's hidden state, word tags aligned to sub-word
tokens, predictions read back into word tags and entities with character spans, and scores against gold tags.

The model reads a sentence's words joined by single spaces, in training and prediction alike, and each word is
found among the tokens through the tokenizer's character offsets. That is what `is_split_into_words` and
`word_ids()` do for WordPiece, and it also gives byte-level BPE tokenizers (GPT-2, Llama 3, SmolLM) the text as
they were trained on it, where `is_split_into_words` would encode every word as if it began the text.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass

import datasets
import numpy as np
import pandas as pd
import torch
from torch import nn
from transformers import EvalPrediction, PreTrainedTokenizerBase
from transformers.modeling_outputs import TokenClassifierOutput

from tunelab.batching import padded_batches
from tunelab.errors import TunelabError
from tunelab.modeling import head_dropout
from tunelab.tasks import IGNORE
from tunelab.tasks.classification import LabelMap
from tunelab.tasks.tags import OUTSIDE, convert, entity_metrics, scheme_of, split_words, to_entities

Span = tuple[int, int]  # (start, end) characters


class TokenClassifier(nn.Module):
    """backbone -> each token's hidden state -> dropout -> linear head: one tag distribution per token.

    The head lives outside the backbone, as a sentence classifier's does, so that adapter libraries only wrap
    the backbone and every strategy saves the head under `head.`. Its loss is the mean over every labelled token
    of the optimizer's batch, as a causal LM's is (`tasks.generation.CausalLM`)."""

    accepts_loss_kwargs = True  # the Trainer passes `num_items_in_batch`

    def __init__(self, backbone: nn.Module, num_tags: int):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Sequential(nn.Dropout(head_dropout(backbone.config)),
                                  nn.Linear(backbone.config.hidden_size, num_tags))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor | None = None,
                num_items_in_batch: torch.Tensor | int | None = None) -> TokenClassifierOutput:
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        # Prompt methods prepend virtual tokens: the text's own positions are the last T.
        logits = self.head(hidden[:, -input_ids.size(1):])  # (B, T, C)
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE,
                                               reduction="mean" if num_items_in_batch is None else "sum")
            loss = loss if num_items_in_batch is None else loss / num_items_in_batch
        return TokenClassifierOutput(loss=loss, logits=logits)


def require_offsets(tokenizer: PreTrainedTokenizerBase, model: str) -> None:
    """Words are found among sub-word tokens by character offsets, which only fast tokenizers report."""
    if not tokenizer.is_fast:
        raise TunelabError(f"token classification needs a fast tokenizer (it maps sub-word tokens back to words); "
                           f"{model} has only a slow one: choose another model")


def join_words(words: list[str]) -> tuple[str, list[Span]]:
    """The words joined by single spaces, and each word's span in that text."""
    spans, start = [], 0
    for word in words:
        spans.append((start, start + len(word)))
        start += len(word) + 1
    return " ".join(words), spans


def word_ids(offsets: list[Span], spans: list[Span]) -> list[int | None]:
    """For each token, the word its last character belongs to; None for special tokens (empty offsets) and for
    tokens of spaces alone. A byte-level BPE token may include the space before its word, hence the last."""
    starts = [start for start, _ in spans]
    ids: list[int | None] = []
    for begin, end in offsets:
        word = bisect_right(starts, end - 1) - 1 if end > begin else -1
        ids.append(word if word >= 0 and end <= spans[word][1] else None)
    return ids


def first_subtokens(ids: list[int | None], words: int) -> list[int | None]:
    """For each word, the position of its first token; None where truncation cut the word (or it has no token)."""
    firsts: list[int | None] = [None] * words
    for position, word in enumerate(ids):
        if word is not None and firsts[word] is None:
            firsts[word] = position
    return firsts


def align_labels(firsts: list[int | None], tag_ids: list[int], length: int) -> list[int]:
    """Token labels: each word's tag id at its first sub-token; IGNORE at its other sub-tokens, at special
    tokens, and for words truncation cut."""
    labels = [IGNORE] * length
    for position, tag in zip(firsts, tag_ids, strict=True):
        if position is not None:
            labels[position] = tag
    return labels


def encode_sentences(tokenizer: PreTrainedTokenizerBase, sentences: list[list[str]],
                     max_length: int) -> tuple[dict[str, list[list[int]]], list[list[int | None]]]:
    """Unpadded token ids of each sentence, and the position of each word's first sub-token."""
    joined = [join_words(words) for words in sentences]
    encoded = tokenizer([text for text, _ in joined], truncation=True, max_length=max_length,
                        return_offsets_mapping=True)
    firsts = [first_subtokens(word_ids(offsets, spans), len(spans))
              for offsets, (_, spans) in zip(encoded["offset_mapping"], joined, strict=True)]
    return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}, firsts


def tagged_dataset(tokenizer: PreTrainedTokenizerBase, sentences: pd.DataFrame, tag_map: LabelMap,
                   max_length: int) -> datasets.Dataset:
    """Training examples: token ids and aligned labels, the gold tags written in the model's scheme."""
    encoded, firsts = encode_sentences(tokenizer, sentences["tokens"].tolist(), max_length)
    scheme = scheme_of(tag_map.labels)
    labels = [align_labels(first, [tag_map.ids[tag] for tag in convert(tags, scheme)], len(ids))
              for first, tags, ids in zip(firsts, sentences["tags"], encoded["input_ids"], strict=True)]
    return datasets.Dataset.from_dict({**encoded, "labels": labels})


@dataclass
class TaggedWords:
    tags: list[str]
    scores: list[float]  # the probability of each word's tag; 0 for the words the model did not read
    unread: int  # words cut by max_length (or without a token): tagged O


@dataclass
class FoundEntity:
    text: str
    type: str
    start: int  # characters, end exclusive: text[start:end] is the entity
    end: int
    score: float  # the mean probability of its words' tags


def found_entity(text: str, words: list[Span], kind: str, scores: list[float]) -> FoundEntity:
    """An entity of `text` made of `words` (their character spans), scored by its words' tag probabilities."""
    start, end = words[0][0], words[-1][1]
    return FoundEntity(text[start:end], kind, start, end, float(np.mean(scores)))


class Tagger:
    """A trained token classifier, ready to tag pre-split words or find entities in raw text."""

    def __init__(self, model: nn.Module, tokenizer: PreTrainedTokenizerBase, tag_map: LabelMap, max_length: int,
                 batch_size: int = 64):
        self.model, self.tokenizer, self.tag_map, self.max_length = model, tokenizer, tag_map, max_length
        self.batch_size = batch_size
        self.scheme = scheme_of(tag_map.labels)

    @torch.no_grad()
    def tag(self, sentences: list[list[str]]) -> list[TaggedWords]:
        """Each word's most probable tag (read at its first sub-token), in batches of similar length."""
        self.model.eval()
        encoded, firsts = encode_sentences(self.tokenizer, sentences, self.max_length)
        tagged: dict[int, TaggedWords] = {}
        for chosen, batch in padded_batches(self.model, self.tokenizer, encoded, self.batch_size):
            logits = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            probabilities = torch.softmax(logits.float(), dim=-1).cpu().numpy()  # (B, T, C)
            for row, index in enumerate(chosen):
                tagged[index] = self._read(probabilities[row], firsts[index])
        return [tagged[index] for index in range(len(sentences))]

    def _read(self, probabilities: np.ndarray, firsts: list[int | None]) -> TaggedWords:
        best = probabilities.argmax(axis=-1)  # (T,)
        return TaggedWords(
            tags=[OUTSIDE if position is None else self.tag_map.labels[best[position]] for position in firsts],
            scores=[0.0 if position is None else float(probabilities[position, best[position]]) for position in firsts],
            unread=firsts.count(None))

    def entities(self, texts: list[str]) -> list[list[FoundEntity]]:
        """The entities in each raw text, with their character spans in it."""
        spans = [split_words(text) for text in texts]
        tagged = self.tag([[text[start:end] for start, end in words] for text, words in zip(texts, spans, strict=True)])
        return [[found_entity(text, words[first:end], kind, result.scores[first:end])
                 for kind, first, end in to_entities(result.tags)]
                for text, words, result in zip(texts, spans, tagged, strict=True)]

    def score(self, sentences: pd.DataFrame) -> dict:
        """Entity-level metrics on gold-tagged sentences (their tags read in the model's scheme); words the model
        did not read count as tagged O, and are counted."""
        tagged = self.tag(sentences["tokens"].tolist())
        gold = [convert(tags, self.scheme) for tags in sentences["tags"]]
        return {**entity_metrics(gold, [result.tags for result in tagged]),
                "unread_words": sum(result.unread for result in tagged)}


def validation_metrics(tags: list[str]) -> Callable[[EvalPrediction], dict[str, float]]:
    """The Trainer's per-epoch metrics: entity precision, recall and F1 on the words the model reads."""

    def compute(prediction: EvalPrediction) -> dict[str, float]:
        predicted = prediction.predictions.argmax(axis=-1)  # (N, T); padded positions carry IGNORE labels
        gold, guessed = [], []
        for labels, guesses in zip(prediction.label_ids, predicted, strict=True):
            read = labels != IGNORE
            gold.append([tags[index] for index in labels[read]])
            guessed.append([tags[index] for index in guesses[read]])
        metrics = entity_metrics(gold, guessed)
        return {name: metrics[name] for name in ("precision", "recall", "f1")}

    return compute
