"""A language model as a classifier: fill the template, read how likely each label word is in the label slot
(PET, Schick & Schütze 2021; LM-BFF, Gao et al. 2021). No new head: the label scores come from the model's own
language-modelling head, which is why it works zero-shot and learns from a few examples.

Masked LMs read the label word at the mask token; causal LMs read it as the continuation of the template, which
ends at the slot. A word of k tokens needs k predictions: a causal LM reads them teacher-forced after the
template (one extra forward per distinct word prefix), a masked LM from k masks in the slot, predicted in
parallel (one extra forward per distinct length). Single-token words cost one forward in all.
"""

from __future__ import annotations

from typing import Literal

import pandas as pd
import torch
from torch import nn
from transformers import AutoModelForMaskedLM, PreTrainedModel, PreTrainedTokenizerBase
from transformers.modeling_outputs import SequenceClassifierOutput

from tunelab.assets.models import ModelSpec
from tunelab.config import PromptConfig
from tunelab.errors import TunelabError
from tunelab.modeling import load_causal_lm, weighted_cross_entropy
from tunelab.prompting.encoding import TemplateEncoder
from tunelab.prompting.template import Template
from tunelab.prompting.verbalizer import Verbalizer

# Inputs that carry no content (Zhao et al. 2021): the labels' probabilities on them measure the prompt's bias.
CONTENT_FREE = ("N/A", "", "[MASK]")
PromptEncoderKind = Literal["none", "lstm", "mlp"]


class _BiLstm(nn.Module):
    def __init__(self, size: int, hidden: int):
        super().__init__()
        self.lstm = nn.LSTM(size, hidden, batch_first=True, bidirectional=True)

    def forward(self, vectors: torch.Tensor) -> torch.Tensor:
        return self.lstm(vectors.unsqueeze(0))[0].squeeze(0)


class SoftTokens(nn.Module):
    """The template's trainable tokens: vectors that start as word embeddings. With a prompt encoder (P-tuning's
    LSTM or MLP) they are reparameterised as `v + project(encoder(v))`, the projection zero-initialised, so that
    training starts exactly at the initial vectors."""

    def __init__(self, init: torch.Tensor, encoder: PromptEncoderKind = "none", encoder_size: int = 128):
        super().__init__()
        self.vectors = nn.Parameter(init.detach().clone())
        hidden = init.size(-1)
        self.encoder: nn.Module | None = None
        if encoder == "lstm":
            self.encoder, width = _BiLstm(hidden, encoder_size), 2 * encoder_size
        elif encoder == "mlp":
            self.encoder, width = nn.Sequential(nn.Linear(hidden, encoder_size), nn.ReLU()), encoder_size
        if self.encoder is not None:
            self.project = nn.Linear(width, hidden)
            nn.init.zeros_(self.project.weight)
            nn.init.zeros_(self.project.bias)

    def forward(self) -> torch.Tensor:
        """(n, H): the vectors the model reads in place of the soft token ids."""
        if self.encoder is None or len(self.vectors) == 0:
            return self.vectors
        return self.vectors + self.project(self.encoder(self.vectors))


def _align_right(ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Move each row's tokens to the end (left padding), so that every row's last token is the causal slot
    whatever side the collator padded."""
    length = mask.sum(dim=1, keepdim=True)
    start = mask.int().argmax(dim=1, keepdim=True)  # first real token
    width = ids.size(1)
    index = (torch.arange(width, device=ids.device) - (width - length) + start) % width
    return ids.gather(1, index), mask.gather(1, index)


def calibrated(scores: torch.Tensor, content_free: torch.Tensor) -> torch.Tensor:
    """Contextual calibration: p(label | x) / p(label | content-free), renormalised, as log-probabilities."""
    return scores.log_softmax(dim=-1) - content_free.log()


class PromptClassifier(nn.Module):
    """backbone (an LM with its head) + template + label words -> one score per label.

    `head` holds the template's soft tokens, the only task-specific weights (none for a manual template), so
    every strategy saves and loads it as it does a classifier's head."""

    class_weights: torch.Tensor | None = None  # per-label loss weights (`--class-weights balanced`), not saved

    def __init__(self, backbone: PreTrainedModel, encoder: TemplateEncoder, words: list[list[int]],
                 word_labels: list[int], num_labels: int, word_score: Literal["sum", "mean"] = "sum",
                 calibrate: bool = False):
        super().__init__()
        self.backbone = backbone
        self.words, self.num_labels, self.word_score, self.calibrate = words, num_labels, word_score, calibrate
        self.register_buffer("word_labels", torch.tensor(word_labels), persistent=False)
        self.vocab_size = backbone.get_input_embeddings().num_embeddings
        self.encoder = encoder
        self.head = SoftTokens(self._soft_init())

    @property
    def causal(self) -> bool:
        return self.encoder.causal

    def _soft_init(self) -> torch.Tensor:
        """Embeddings of the words each soft token starts from; random vocabulary rows where none are given."""
        embeddings = self.backbone.get_input_embeddings().weight
        ids = [i if i is not None else int(torch.randint(self.vocab_size, ())) for i in self.encoder.soft_init_ids]
        return embeddings[torch.tensor(ids, dtype=torch.long)].detach().clone()

    def soften_template(self, encoder: PromptEncoderKind, encoder_size: int) -> None:
        """Turn the template's words into soft tokens that start from their embeddings (P-tuning)."""
        old = self.encoder
        template = old.template.softened()
        if not template.has_soft_tokens:
            raise TunelabError(f"template '{template.source}' has no words to turn into soft tokens; write one "
                               f"like 'Review: {{text}} Sentiment: {{label}}'")
        self.encoder = TemplateEncoder(template, old.tokenizer, old.max_length, old.causal, self.vocab_size)
        self.head = SoftTokens(self._soft_init(), encoder, encoder_size)

    def _inputs(self, ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """Token ids, or embeddings with the soft tokens' vectors in place when the input has any."""
        soft = ids >= self.vocab_size
        if not soft.any():
            return {"input_ids": ids}
        embeds = self.backbone.get_input_embeddings()(ids.masked_fill(soft, 0))
        vectors = self.head()[(ids - self.vocab_size).clamp(min=0)]
        return {"inputs_embeds": torch.where(soft.unsqueeze(-1), vectors.to(embeds.dtype), embeds)}

    def _slot_log_probs(self, ids: torch.Tensor, mask: torch.Tensor, word: list[int]) -> torch.Tensor:
        """(B, k, V): log-probabilities over the vocabulary at the k positions that predict `word`'s tokens."""
        k = len(word)
        if self.causal:  # teacher forcing: the template, then the word's tokens but its last
            extra = torch.tensor(word[:-1], dtype=ids.dtype, device=ids.device).expand(ids.size(0), -1)
            ids, mask = torch.cat([ids, extra], dim=1), torch.cat([mask, torch.ones_like(extra)], dim=1)
            positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
            logits = self.backbone(**self._inputs(ids), attention_mask=mask, position_ids=positions,
                                   logits_to_keep=k).logits
            return logits.float().log_softmax(dim=-1)
        slot = (ids == self.encoder.tokenizer.mask_token_id).int().argmax(dim=1)  # (B,)
        if k > 1:  # k masks in the slot, one per token of the word; padding stays at the end
            extra = torch.full((k - 1,), self.encoder.tokenizer.mask_token_id, dtype=ids.dtype, device=ids.device)
            ids = torch.stack([torch.cat([row[:s + 1], extra, row[s + 1:]]) for row, s in zip(ids, slot, strict=True)])
            mask = torch.stack([torch.cat([row[:s + 1], torch.ones_like(extra), row[s + 1:]])
                                for row, s in zip(mask, slot, strict=True)])
        logits = self.backbone(**self._inputs(ids), attention_mask=mask).logits
        index = (slot.unsqueeze(1) + torch.arange(k, device=ids.device)).unsqueeze(-1).expand(-1, -1, logits.size(-1))
        return logits.gather(1, index).float().log_softmax(dim=-1)

    def word_scores(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, W): each label word's log-probability in the slot (summed or averaged over its tokens)."""
        if self.causal:
            ids, mask = _align_right(ids, mask)
        slots: dict[tuple[int, ...] | int, torch.Tensor] = {}  # words that share the forward pass they need
        columns = []
        for word in self.words:
            key = tuple(word[:-1]) if self.causal else len(word)
            if key not in slots:
                slots[key] = self._slot_log_probs(ids, mask, word)
            tokens = torch.tensor(word, device=ids.device)
            log_probs = slots[key][:, torch.arange(len(word), device=ids.device), tokens]  # (B, k)
            columns.append(log_probs.sum(dim=-1) if self.word_score == "sum" else log_probs.mean(dim=-1))
        return torch.stack(columns, dim=1)

    def label_scores(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, C): log of the summed probabilities of each label's words."""
        words = self.word_scores(ids, mask)
        return torch.stack([words[:, self.word_labels == label].logsumexp(dim=-1)
                            for label in range(self.num_labels)], dim=1)

    @torch.no_grad()
    def content_free_probabilities(self) -> torch.Tensor:
        """(C,): the label probabilities the prompt gives inputs with no content, averaged: its bias.

        Measured from the weights as they are, with each calibrated batch (three short extra sequences), so that
        no stored copy can outlive a change of the weights."""
        rows = pd.DataFrame({name: list(CONTENT_FREE) for name in self.encoder.fields})
        batch = self.encoder.tokenizer.pad(self.encoder(rows), return_tensors="pt")
        device = self.word_labels.device
        scores = self.label_scores(batch["input_ids"].to(device), batch["attention_mask"].to(device))
        return scores.softmax(dim=-1).mean(dim=0)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                labels: torch.Tensor | None = None) -> SequenceClassifierOutput:
        """Label scores as logits; the loss is cross-entropy over the labels' scores (PET's objective).
        Calibration corrects predictions only: training reads the raw scores."""
        scores = self.label_scores(input_ids, attention_mask)
        if self.calibrate and not self.training:
            scores = calibrated(scores, self.content_free_probabilities())
        loss = weighted_cross_entropy(scores, labels, self.class_weights) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=scores)


def load_language_model(spec: ModelSpec) -> PreTrainedModel:
    """The model with its pre-trained language-modelling head, which prompt-based classification reads."""
    if spec.kind == "causal":
        return load_causal_lm(spec)
    model, info = AutoModelForMaskedLM.from_pretrained(spec.path, dtype=torch.float32, output_loading_info=True)
    if info["missing_keys"]:
        raise TunelabError(f"{spec.name} has no trained masked-LM head (e.g. {sorted(info['missing_keys'])[0]} is "
                           f"missing), which prompt-based strategies read; use --model smollm2 or a masked LM such "
                           f"as bert-base-uncased")
    return model


def build_prompt_classifier(spec: ModelSpec, tokenizer: PreTrainedTokenizerBase, prompt: PromptConfig,
                            labels: list[str], max_length: int) -> PromptClassifier:
    """The language model of `spec` asked through `prompt.template` with `prompt.verbalizer`'s words."""
    template = Template.parse(prompt.template)
    backbone = load_language_model(spec)
    vocab_size = backbone.get_input_embeddings().num_embeddings
    encoder = TemplateEncoder(template, tokenizer, max_length, spec.kind == "causal", vocab_size)
    words, owners = Verbalizer.build(prompt.verbalizer, labels).token_ids(tokenizer, template.label_slot.lead)
    return PromptClassifier(backbone, encoder, words, owners, len(labels), prompt.word_score, prompt.calibrate)
