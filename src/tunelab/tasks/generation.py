"""Generation with a causal LM: prompt -> completion pairs and chat conversations, loss on the answers only, the
tokenizer's chat template when it has one, held-out loss and perplexity, and generating from a trained run.

The model is the causal LM itself under `backbone` (no task head), so every weight-level strategy adapts it
through the same code as for classification; which strategies can is the strategy catalog's (`strategies.catalog`).
"""

from __future__ import annotations

import math

import datasets
import pandas as pd
import torch
from torch import nn
from transformers import DataCollatorForSeq2Seq, PreTrainedModel, PreTrainedTokenizerBase
from transformers.generation.streamers import BaseStreamer
from transformers.modeling_outputs import CausalLMOutput

from tunelab.errors import TunelabError
from tunelab.tasks import IGNORE
from tunelab.tasks.conversation import Message, assistant_spans, context_ids, user


class CausalLM(nn.Module):
    """A causal LM under `backbone`, so strategies find it where they find a classifier's backbone.

    Its loss is the mean over every answer token of the optimizer's batch, however the batch is computed: the
    Trainer counts the tokens of all micro-batches in all processes (`num_items_in_batch`), and each part divides
    its sum by that count. A mean per part would weigh a short answer's tokens more in a smaller part."""

    accepts_loss_kwargs = True  # the Trainer passes `num_items_in_batch`
    loss_type = "ForCausalLM"  # the Trainer counts the tokens that have a next one: the labels shifted by one

    def __init__(self, backbone: PreTrainedModel):
        super().__init__()
        self.backbone = backbone

    @property
    def embedding_std(self) -> float:
        """The standard deviation of the token embeddings: the scale a soft prompt should have."""
        return float(self.backbone.get_input_embeddings().weight.detach().std())

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor | None = None,
                num_items_in_batch: torch.Tensor | int | None = None) -> CausalLMOutput:
        output = self.backbone(input_ids=input_ids, attention_mask=attention_mask, labels=labels,
                               num_items_in_batch=num_items_in_batch)
        return CausalLMOutput(loss=output.loss, logits=output.logits)


def prompt_ids(tokenizer: PreTrainedTokenizerBase, prompt: str) -> list[int]:
    """The prompt as the model sees it before its answer: through the chat template, or plain text + newline."""
    return context_ids(tokenizer, [user(prompt)])


def completion_ids(tokenizer: PreTrainedTokenizerBase, completion: str) -> list[int]:
    """The answer tokens, closed by the end-of-turn (chat) or end-of-sequence token so the model learns to stop."""
    ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
    return ids + [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else ids


def tokenize_pairs(prompts: list[str], completions: list[str], rows: list[int], tokenizer: PreTrainedTokenizerBase,
                   max_length: int, source: str) -> datasets.Dataset:
    """Prompt + completion token ids; labels copy the completion and mask the prompt, so only answers are learnt.

    Long pairs lose the end of the completion, never the prompt: a pair whose prompt alone fills `max_length`
    is an error naming its `row` in `source`, since nothing of its answer would be learnt."""
    sequences = []
    for prompt, completion, row in zip(prompts, completions, rows, strict=True):
        where = f"{source}: row {row}"
        head = context_ids(tokenizer, [user(prompt)], where)
        _check_answer_fits(len(head), max_length, where)
        answer = completion_ids(tokenizer, completion)
        sequences.append((head + answer, [IGNORE] * len(head) + answer))
    return _labelled(sequences, max_length)


def tokenize_conversations(conversations: list[list[Message]], rows: list[int], tokenizer: PreTrainedTokenizerBase,
                           max_length: int, source: str) -> datasets.Dataset:
    """Conversations through the chat template; labels copy every assistant turn (with its end-of-turn token) and
    mask the rest, so only the answers are learnt, each in the context of the turns before it.

    Long conversations lose their end: one whose first answer starts beyond `max_length` is an error naming its
    `row` in `source`, since nothing of it would be learnt."""
    sequences = []
    for conversation, row in zip(conversations, rows, strict=True):
        ids, spans = assistant_spans(tokenizer, conversation, f"{source}: row {row}")
        _check_answer_fits(spans[0][0], max_length, f"{source}: row {row}")
        labels = [IGNORE] * len(ids)
        for start, end in spans:
            labels[start:end] = ids[start:end]
        sequences.append((ids, labels))
    return _labelled(sequences, max_length)


def _check_answer_fits(start: int, max_length: int, where: str) -> None:
    """The first answer must start within `max_length`, or nothing of the example would be learnt."""
    if start >= max_length:
        raise TunelabError(f"{where}: the text before the first answer takes {start} tokens, max_length is "
                           f"{max_length}; raise --max-length or shorten it")


def _labelled(sequences: list[tuple[list[int], list[int]]], max_length: int) -> datasets.Dataset:
    """(ids, labels) pairs cut to their first `max_length` tokens, with attention masks."""
    rows: dict[str, list] = {"input_ids": [], "attention_mask": [], "labels": []}
    for ids, labels in sequences:
        rows["input_ids"].append(ids[:max_length])
        rows["attention_mask"].append([1] * len(ids[:max_length]))
        rows["labels"].append(labels[:max_length])
    return datasets.Dataset.from_dict(rows)


def tokenize_examples(examples: pd.DataFrame, tokenizer: PreTrainedTokenizerBase, max_length: int,
                      source: str) -> datasets.Dataset:
    """Generation examples (`data.messages.load_generation_examples`), chat or prompt/completion, tokenised; errors
    name the example's row in `source`."""
    rows = examples["row"].tolist()
    if "messages" in examples.columns:
        return tokenize_conversations(examples["messages"].tolist(), rows, tokenizer, max_length, source)
    return tokenize_pairs(examples["prompt"].tolist(), examples["completion"].tolist(), rows, tokenizer, max_length,
                          source)


def contexts_and_references(examples: pd.DataFrame) -> tuple[list[list[Message]], list[str]]:
    """What the model is asked and the answer written for it: the prompt and its completion, or a conversation up
    to its last assistant turn and that turn."""
    if "messages" not in examples.columns:
        return [[user(prompt)] for prompt in examples["prompt"]], examples["completion"].tolist()
    contexts, references = [], []
    for conversation in examples["messages"]:
        last = max(index for index, message in enumerate(conversation) if message["role"] == "assistant")
        contexts.append(conversation[:last])
        references.append(conversation[last]["content"])
    return contexts, references


def pair_collator(tokenizer: PreTrainedTokenizerBase) -> DataCollatorForSeq2Seq:
    """Pads ids with the pad token and labels with IGNORE, each batch to its own longest pair."""
    return DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=IGNORE)


@torch.no_grad()
def held_out_loss(model: nn.Module, data: datasets.Dataset, tokenizer: PreTrainedTokenizerBase,
                  batch_size: int) -> dict[str, float]:
    """Mean cross-entropy per completion token (and its perplexity) over `data`, in eval mode."""
    model.eval()
    collate = pair_collator(tokenizer)
    device = next(model.parameters()).device
    total, tokens = 0.0, 0
    for start in range(0, len(data), batch_size):
        batch = collate([data[index] for index in range(start, min(start + batch_size, len(data)))]).to(device)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        targets = batch["labels"][:, 1:]  # position t predicts token t + 1
        total += nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), targets.flatten(),
                                             ignore_index=IGNORE, reduction="sum").item()
        tokens += int((targets != IGNORE).sum())
    loss = total / max(tokens, 1)
    return {"loss": loss, "perplexity": math.exp(loss), "tokens": tokens, "examples": len(data)}


def pad_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The id a batch is padded with: the pad token, else the end of sequence (a causal LM's usual stand-in)."""
    if tokenizer.pad_token_id is not None:
        return tokenizer.pad_token_id
    return tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0


@torch.no_grad()
def complete(model: CausalLM, tokenizer: PreTrainedTokenizerBase, contexts: list[list[int]], max_new_tokens: int,
             temperature: float = 0.0, seed: int = 0, streamer: BaseStreamer | None = None) -> list[str]:
    """The model's answers to token-id contexts, generated as one left-padded batch: greedy at temperature 0, else
    sampled (seeded). `streamer` receives the tokens as they come (one context only). Every path that generates
    (`generate`, `tunelab chat`, ROUGE-L) comes through here."""
    model.eval()
    pad = pad_id(tokenizer)
    width = max(len(ids) for ids in contexts)
    device = next(model.parameters()).device
    ids = torch.tensor([[pad] * (width - len(row)) + row for row in contexts], device=device)  # (B, T)
    mask = torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in contexts], device=device)
    torch.manual_seed(seed)
    sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
    output = model.backbone.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                     pad_token_id=pad, streamer=streamer, **sampling)
    return [text.strip() for text in tokenizer.batch_decode(output[:, width:], skip_special_tokens=True)]


def generate(model: CausalLM, tokenizer: PreTrainedTokenizerBase, prompt: str, max_new_tokens: int = 64,
             temperature: float = 0.0, seed: int = 0, continuation: bool = False) -> str:
    """The model's answer to `prompt` (or with `continuation`, what follows the prompt as plain text, as a model
    trained on plain text expects): greedy at temperature 0, else sampled (seeded)."""
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"] if continuation else prompt_ids(tokenizer, prompt)
    return complete(model, tokenizer, [ids], max_new_tokens, temperature, seed)[0]
