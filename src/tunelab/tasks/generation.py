"""Generation with a causal LM: prompt -> completion pairs, loss on the completion only, the tokenizer's chat
template when it has one, held-out loss and perplexity, and sampling from a trained run.

The model is the causal LM itself under `backbone` (no task head), so every weight-level strategy adapts it
through the same code as for classification; which strategies can is `tasks.support.SUPPORT`.
"""

from __future__ import annotations

import math

import datasets
import torch
from torch import nn
from transformers import AutoModelForCausalLM, DataCollatorForSeq2Seq, PreTrainedModel, PreTrainedTokenizerBase
from transformers.modeling_outputs import CausalLMOutput

from tunelab.assets.models import ModelSpec
from tunelab.errors import TunelabError

IGNORE = -100  # label id that cross-entropy skips: prompt tokens and padding


class CausalLM(nn.Module):
    """A causal LM under `backbone`, so strategies find it where they find a classifier's backbone."""

    def __init__(self, backbone: PreTrainedModel):
        super().__init__()
        self.backbone = backbone

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                labels: torch.Tensor | None = None) -> CausalLMOutput:
        output = self.backbone(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
        return CausalLMOutput(loss=output.loss, logits=output.logits)


def load_causal_lm(spec: ModelSpec) -> PreTrainedModel:
    """The model with its language-modelling head; encoders are refused (their LM heads are not causal)."""
    if spec.kind != "causal":
        raise TunelabError(f"generation needs a causal LM; {spec.name} is an encoder: use --model smollm2 or "
                           f"another decoder-only model")
    return AutoModelForCausalLM.from_pretrained(spec.path, dtype=torch.float32)


def prompt_ids(tokenizer: PreTrainedTokenizerBase, prompt: str) -> list[int]:
    """The prompt as the model sees it before its answer: through the chat template, or plain text + newline."""
    if tokenizer.chat_template:
        return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                             tokenize=True, return_dict=True)["input_ids"]
    return tokenizer(prompt + "\n", add_special_tokens=True)["input_ids"]


def completion_ids(tokenizer: PreTrainedTokenizerBase, completion: str) -> list[int]:
    """The answer tokens, closed by the end-of-turn (chat) or end-of-sequence token so the model learns to stop."""
    ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
    return ids + [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else ids


def tokenize_pairs(prompts: list[str], completions: list[str], tokenizer: PreTrainedTokenizerBase,
                   max_length: int) -> datasets.Dataset:
    """Prompt + completion token ids; labels copy the completion and mask the prompt, so only answers are learnt.

    Long pairs lose the end of the completion, never the prompt: a pair whose prompt alone fills `max_length`
    is an error, since nothing of its answer would be learnt."""
    rows: dict[str, list] = {"input_ids": [], "attention_mask": [], "labels": []}
    for index, (prompt, completion) in enumerate(zip(prompts, completions, strict=True)):
        head = prompt_ids(tokenizer, prompt)
        if len(head) >= max_length:
            raise TunelabError(f"example {index + 1}: the prompt takes {len(head)} tokens, max_length is {max_length}; "
                               f"raise --max-length or shorten the prompt")
        ids = (head + completion_ids(tokenizer, completion))[:max_length]
        rows["input_ids"].append(ids)
        rows["attention_mask"].append([1] * len(ids))
        rows["labels"].append([IGNORE] * len(head) + ids[len(head):])
    return datasets.Dataset.from_dict(rows)


def pair_collator(tokenizer: PreTrainedTokenizerBase) -> DataCollatorForSeq2Seq:
    """Pads ids with the pad token and labels with IGNORE, each batch to its own longest pair."""
    return DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=IGNORE)


@torch.no_grad()
def held_out_loss(model: nn.Module, data: datasets.Dataset, tokenizer: PreTrainedTokenizerBase,
                  batch_size: int) -> dict[str, float]:
    """Mean cross-entropy per completion token (and its perplexity) over `data`, in eval mode."""
    model.eval()
    collate = pair_collator(tokenizer)
    total, tokens = 0.0, 0
    for start in range(0, len(data), batch_size):
        batch = collate([data[index] for index in range(start, min(start + batch_size, len(data)))])
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        targets = batch["labels"][:, 1:]  # position t predicts token t + 1
        total += nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), targets.flatten(),
                                             ignore_index=IGNORE, reduction="sum").item()
        tokens += int((targets != IGNORE).sum())
    loss = total / max(tokens, 1)
    return {"loss": loss, "perplexity": math.exp(loss), "tokens": tokens, "examples": len(data)}


@torch.no_grad()
def generate(model: CausalLM, tokenizer: PreTrainedTokenizerBase, prompt: str, max_new_tokens: int = 64,
             temperature: float = 0.0, seed: int = 0, continuation: bool = False) -> str:
    """The model's answer to `prompt` (or with `continuation`, what follows the prompt as plain text, as a model
    trained on plain text expects): greedy at temperature 0, else sampled (seeded)."""
    model.eval()
    ids = torch.tensor([tokenizer(prompt, add_special_tokens=False)["input_ids"] if continuation
                        else prompt_ids(tokenizer, prompt)])
    torch.manual_seed(seed)
    sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
    output = model.backbone.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                     max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                                     **sampling)
    return tokenizer.decode(output[0, ids.size(1):], skip_special_tokens=True).strip()
