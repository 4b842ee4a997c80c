"""Log-probabilities of given continuations after given contexts under a causal LM, optionally after soft-prompt
embeddings: what label-word scoring, `echo` with logprobs and black-box tuning through an API read from a model."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from tunelab.errors import TunelabError
from tunelab.tasks.generation import pad_id

SCORE_BATCH = 16  # (prompt, continuation) pairs per forward
NEXT_TOKEN_BATCH = 8  # contexts per forward when only the next token is scored (fastest measured on 2 CPU cores)


@dataclass
class Scored:
    """One continuation's tokens, each one's log-probability after everything before it, and at each position the
    `top` most likely tokens with theirs."""

    tokens: list[int]
    logprobs: list[float]
    top: list[list[tuple[int, float]]]
    context: int = 0  # tokens read before the continuation (a soft prompt's not counted)

    @property
    def total(self) -> float:
        return float(sum(self.logprobs))

    @property
    def read(self) -> int:
        """Tokens the model read for it: the context and the continuation."""
        return self.context + len(self.tokens)


@torch.no_grad()
def score_continuations(model: nn.Module, pairs: list[tuple[list[int], list[int]]],
                        soft_prompt: torch.Tensor | None = None, top: int = 0, pad_id: int = 0) -> list[Scored]:
    """For each (context, continuation) pair of token ids, in one right-padded batch: the log-probability of each
    continuation token. `model` is a `CausalLM` (its HF model under `backbone`); `soft_prompt` (virtual tokens,
    hidden) is prepended to every row as input embeddings."""
    virtual = 0 if soft_prompt is None else soft_prompt.shape[0]
    for context, continuation in pairs:
        if not continuation:
            raise TunelabError("an empty continuation has nothing to score")
        if not context and not virtual:
            raise TunelabError("the first token has nothing before it to be predicted from: give a prompt or a "
                               "soft prompt")
    logprobs = _logprobs(model, [context + continuation for context, continuation in pairs], soft_prompt, pad_id)
    device = logprobs.device
    scored = []
    for row, (context, continuation) in enumerate(pairs):
        first = virtual + len(context)  # the first continuation token's position in the row
        steps = logprobs[row, first - 1:first - 1 + len(continuation)]  # position t predicts token t + 1
        chosen = steps.gather(1, torch.tensor(continuation, device=device)[:, None])[:, 0].tolist()
        best = steps.topk(top, dim=-1) if top else None
        scored.append(Scored(list(continuation), chosen,
                             [list(zip(best.indices[step].tolist(), best.values[step].tolist(), strict=True))
                              for step in range(len(continuation))] if best is not None else
                             [[] for _ in continuation], len(context)))
    return scored


def score_texts(model: nn.Module, tokenizer: Any, prompts: list[str], continuations: list[str],
                soft_prompt: torch.Tensor | None = None, top: int = 0) -> list[list[Scored]]:
    """[prompt][continuation]: each continuation after each prompt, both read as plain text (no special tokens),
    in forwards of SCORE_BATCH pairs. When every continuation is one token and no alternatives are asked for, one
    pass over the prompts reads them all (label words: `next_token_logprobs`, a fraction of the compute)."""
    encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    contexts, endings = [encode(prompt) for prompt in prompts], [encode(text) for text in continuations]
    if not all(endings):
        raise TunelabError("a continuation has no tokens")
    pad = pad_id(tokenizer)
    if top == 0 and all(len(ending) == 1 for ending in endings):
        chosen = next_token_logprobs(model, contexts, [ending[0] for ending in endings], soft_prompt, pad).tolist()
        return [[Scored(ending, [value], [[]], len(context)) for ending, value in zip(endings, row, strict=True)]
                for context, row in zip(contexts, chosen, strict=True)]
    pairs = [(context, ending) for context in contexts for ending in endings]
    scored = [item for start in range(0, len(pairs), SCORE_BATCH)
              for item in score_continuations(model, pairs[start:start + SCORE_BATCH], soft_prompt, top, pad)]
    return [scored[row * len(endings):(row + 1) * len(endings)] for row in range(len(contexts))]


@torch.no_grad()
def next_token_logprobs(model: nn.Module, contexts: list[list[int]], tokens: list[int],
                        soft_prompt: torch.Tensor | None = None, pad_id: int = 0) -> torch.Tensor:
    """(contexts, tokens): the log-probability of each single token right after each context (label words of one
    token each: what `score_continuations` gives for them, for a fraction of the compute).

    Three savings, each exact: contexts go in forwards of NEXT_TOKEN_BATCH by length, so few positions are padding;
    left-padded, so every row's next token is at the last position and only its logits are computed; and a soft
    prompt, the same before every context, is read once and its keys and values given to every forward."""
    if any(not context for context in contexts) and soft_prompt is None:
        raise TunelabError("the first token has nothing before it to be predicted from: give a prompt or a soft "
                           "prompt")
    backbone = model.backbone
    if _learns_prompts(backbone):  # PEFT puts its own virtual tokens first and ignores position ids
        logprobs = _logprobs(model, contexts, soft_prompt, pad_id)
        virtual = 0 if soft_prompt is None else soft_prompt.shape[0]
        last = torch.tensor([virtual + len(context) - 1 for context in contexts], device=logprobs.device)
        return logprobs[torch.arange(len(contexts), device=logprobs.device), last][:, tokens]
    embed = backbone.get_input_embeddings()
    prefix = None  # the soft prompt read once: its cache, and its last position's logits
    if soft_prompt is not None:
        soft = soft_prompt.to(device=embed.weight.device, dtype=embed.weight.dtype)[None]
        prefix = backbone(inputs_embeds=soft, use_cache=True, logits_to_keep=1)
    chosen = torch.empty(len(contexts), len(tokens))
    by_length = sorted(range(len(contexts)), key=lambda row: len(contexts[row]))
    for start in range(0, len(by_length), NEXT_TOKEN_BATCH):
        rows = by_length[start:start + NEXT_TOKEN_BATCH]
        logits = _next_token_logits(backbone, [contexts[row] for row in rows], prefix, pad_id)
        chosen[rows] = torch.log_softmax(logits.float(), dim=-1)[:, tokens].cpu()
    return chosen


def _next_token_logits(backbone: nn.Module, contexts: list[list[int]], prefix: Any, pad_id: int) -> torch.Tensor:
    """(contexts, vocabulary) logits of the token after each context, from one left-padded forward after the
    `prefix` forward's cache (a copy, repeated for each row); an empty context takes the prefix's own last logits."""
    embed = backbone.get_input_embeddings()
    device = embed.weight.device
    lengths = torch.tensor([len(context) for context in contexts], device=device)
    width = int(lengths.max())
    if width == 0:
        return prefix.logits[:, -1].expand(len(contexts), -1)
    ids = torch.tensor([[pad_id] * (width - len(context)) + context for context in contexts], dtype=torch.long,
                       device=device)
    mask = (torch.arange(width, device=device)[None] >= (width - lengths)[:, None]).long()
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    cache = None
    if prefix is not None:
        cache = copy.deepcopy(prefix.cache)
        cache.batch_repeat_interleave(len(contexts))
        virtual = cache.get_seq_length()
        positions = positions + virtual
        mask = torch.cat([torch.ones(len(contexts), virtual, dtype=mask.dtype, device=device), mask], dim=1)
    logits = backbone(inputs_embeds=embed(ids), attention_mask=mask, position_ids=positions, cache=cache,
                      logits_to_keep=1).logits[:, -1]
    if prefix is not None and not lengths.all():
        logits[lengths == 0] = prefix.logits[0, -1].to(logits.dtype)
    return logits


def _learns_prompts(backbone: nn.Module) -> bool:
    return bool(getattr(getattr(backbone, "active_peft_config", None), "is_prompt_learning", False))


def _logprobs(model: nn.Module, rows: list[list[int]], soft_prompt: torch.Tensor | None,
              pad_id: int) -> torch.Tensor:
    """(rows, soft + longest row, vocabulary) log-softmax of one right-padded forward, the soft prompt first. A
    prompt-tuned model's own virtual tokens come before the row, so positions are counted from the end."""
    backbone = model.backbone
    embed = backbone.get_input_embeddings()
    device = embed.weight.device
    width = max(len(row) for row in rows)
    ids = torch.tensor([row + [pad_id] * (width - len(row)) for row in rows], dtype=torch.long, device=device)
    mask = (torch.arange(width, device=device)[None] < torch.tensor([len(row) for row in rows],
                                                                      device=device)[:, None]).long()
    embeddings = embed(ids)
    if soft_prompt is not None:
        soft = soft_prompt.to(device=device, dtype=embeddings.dtype)[None].expand(len(rows), -1, -1)
        embeddings = torch.cat([soft, embeddings], dim=1)
        mask = torch.cat([torch.ones(len(rows), soft_prompt.shape[0], dtype=mask.dtype, device=device), mask], dim=1)
    logits = backbone(inputs_embeds=embeddings, attention_mask=mask).logits.float()
    return torch.log_softmax(logits[:, logits.shape[1] - embeddings.shape[1]:], dim=-1)
