"""Log-probabilities of given continuations after given contexts under a causal LM, optionally with soft-prompt
embeddings, before the context or between its pieces of text: what label-word scoring, `echo` with logprobs and
black-box tuning through an API read from a model.

A soft prompt between pieces of text is carried in the token ids: its rows are ids from the embedding matrix's size
on (`vocab + row`), looked up in the soft prompt instead of the matrix, so every batching below serves it as is."""

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
                        soft_prompt: torch.Tensor | None = None, top: int = 0, pad_id: int = 0,
                        inline: torch.Tensor | None = None) -> list[Scored]:
    """For each (context, continuation) pair of token ids, in one right-padded batch: the log-probability of each
    continuation token. `model` is a `CausalLM` (its HF model under `backbone`); `soft_prompt` (virtual tokens,
    hidden) is prepended to every row as input embeddings; `inline` holds the rows that ids past the vocabulary
    stand for."""
    virtual = 0 if soft_prompt is None else soft_prompt.shape[0]
    for context, continuation in pairs:
        if not continuation:
            raise TunelabError("an empty continuation has nothing to score")
        if not context and not virtual:
            raise TunelabError("the first token has nothing before it to be predicted from: give a prompt or a "
                               "soft prompt")
    logprobs = _logprobs(model, [context + continuation for context, continuation in pairs], soft_prompt, pad_id,
                         inline)
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
                             [[] for _ in continuation], _text_tokens(model, context)))
    return scored


def score_texts(model: nn.Module, tokenizer: Any, prompts: list[str] | list[tuple[str, ...]],
                continuations: list[str], soft_prompt: torch.Tensor | None = None, top: int = 0,
                soft_lengths: tuple[int, ...] | None = None) -> list[list[Scored]]:
    """[prompt][continuation]: each continuation after each prompt, both read as plain text (no special tokens),
    in forwards of SCORE_BATCH pairs. A prompt is a text, after the whole soft prompt when there is one, or pieces of
    text with the soft prompt's blocks (`soft_lengths` rows each) between them. When every continuation is one token
    and no alternatives are asked for, one pass over the prompts reads them all (label words: `next_token_logprobs`,
    a fraction of the compute)."""
    encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    endings = [encode(text) for text in continuations]
    if not all(endings):
        raise TunelabError("a continuation has no tokens")
    inline = None
    if soft_lengths is None:
        contexts = [encode(prompt) for prompt in prompts]
    else:
        rows = 0 if soft_prompt is None else soft_prompt.shape[0]
        if sum(soft_lengths) != rows:
            raise TunelabError(f"soft_lengths add up to {sum(soft_lengths)} rows and the soft prompt has {rows}")
        vocab = model.backbone.get_input_embeddings().num_embeddings
        contexts = [_pieced(encode, pieces, soft_lengths, vocab) for pieces in prompts]
        inline, soft_prompt = soft_prompt, None
    pad = pad_id(tokenizer)
    if top == 0 and all(len(ending) == 1 for ending in endings):
        chosen = next_token_logprobs(model, contexts, [ending[0] for ending in endings], soft_prompt, pad,
                                     inline).tolist()
        return [[Scored(ending, [value], [[]], _text_tokens(model, context))
                 for ending, value in zip(endings, row, strict=True)] for context, row in zip(contexts, chosen,
                                                                                              strict=True)]
    pairs = [(context, ending) for context in contexts for ending in endings]
    scored = [item for start in range(0, len(pairs), SCORE_BATCH)
              for item in score_continuations(model, pairs[start:start + SCORE_BATCH], soft_prompt, top, pad,
                                              inline)]
    return [scored[row * len(endings):(row + 1) * len(endings)] for row in range(len(contexts))]


@torch.no_grad()
def token_embeddings(model: nn.Module, tokenizer: Any, text: str) -> tuple[list[int], torch.Tensor]:
    """`text`'s token ids (no special tokens) and their input embeddings, (tokens, hidden) in float32 on the CPU:
    where a soft prompt made of those words starts."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    embed = model.backbone.get_input_embeddings()
    return ids, embed(torch.tensor(ids, dtype=torch.long, device=embed.weight.device)).float().cpu()


def _pieced(encode: Any, pieces: tuple[str, ...], lengths: tuple[int, ...], vocab: int) -> list[int]:
    """A prompt's ids: its pieces' tokens with the soft prompt's blocks between them, as ids from `vocab` on."""
    if len(pieces) != len(lengths) + 1:
        raise TunelabError(f"a prompt of {len(pieces)} pieces cannot hold {len(lengths)} soft-prompt blocks between "
                           f"them: give one piece more than blocks")
    ids, row = encode(pieces[0]), vocab
    for length, piece in zip(lengths, pieces[1:], strict=True):
        ids += [*range(row, row + length), *encode(piece)]
        row += length
    return ids


def _text_tokens(model: nn.Module, ids: list[int]) -> int:
    """How many of `ids` are text tokens, not soft-prompt rows."""
    vocab = model.backbone.get_input_embeddings().num_embeddings
    return sum(token < vocab for token in ids)


def _embedded(embed: nn.Embedding, ids: torch.Tensor, inline: torch.Tensor | None) -> torch.Tensor:
    """The input embeddings of `ids`, those past the vocabulary taken from `inline`'s rows."""
    if inline is None:
        return embed(ids)
    soft = ids >= embed.num_embeddings
    vectors = embed(ids.masked_fill(soft, 0))
    vectors[soft] = inline.to(device=vectors.device, dtype=vectors.dtype)[ids[soft] - embed.num_embeddings]
    return vectors


@torch.no_grad()
def next_token_logprobs(model: nn.Module, contexts: list[list[int]], tokens: list[int],
                        soft_prompt: torch.Tensor | None = None, pad_id: int = 0,
                        inline: torch.Tensor | None = None) -> torch.Tensor:
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
        logprobs = _logprobs(model, contexts, soft_prompt, pad_id, inline)
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
        logits = _next_token_logits(backbone, [contexts[row] for row in rows], prefix, pad_id, inline)
        chosen[rows] = torch.log_softmax(logits.float(), dim=-1)[:, tokens].cpu()
    return chosen


def _next_token_logits(backbone: nn.Module, contexts: list[list[int]], prefix: Any, pad_id: int,
                       inline: torch.Tensor | None) -> torch.Tensor:
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
    logits = backbone(inputs_embeds=_embedded(embed, ids, inline), attention_mask=mask, position_ids=positions,
                      cache=cache, logits_to_keep=1).logits[:, -1]
    if prefix is not None and not lengths.all():
        logits[lengths == 0] = prefix.logits[0, -1].to(logits.dtype)
    return logits


def _learns_prompts(backbone: nn.Module) -> bool:
    return bool(getattr(getattr(backbone, "active_peft_config", None), "is_prompt_learning", False))


def _logprobs(model: nn.Module, rows: list[list[int]], soft_prompt: torch.Tensor | None,
              pad_id: int, inline: torch.Tensor | None = None) -> torch.Tensor:
    """(rows, soft + longest row, vocabulary) log-softmax of one right-padded forward, the soft prompt first. A
    prompt-tuned model's own virtual tokens come before the row, so positions are counted from the end."""
    backbone = model.backbone
    embed = backbone.get_input_embeddings()
    device = embed.weight.device
    width = max(len(row) for row in rows)
    ids = torch.tensor([row + [pad_id] * (width - len(row)) for row in rows], dtype=torch.long, device=device)
    mask = (torch.arange(width, device=device)[None] < torch.tensor([len(row) for row in rows],
                                                                      device=device)[:, None]).long()
    embeddings = _embedded(embed, ids, inline)
    if soft_prompt is not None:
        soft = soft_prompt.to(device=device, dtype=embeddings.dtype)[None].expand(len(rows), -1, -1)
        embeddings = torch.cat([soft, embeddings], dim=1)
        mask = torch.cat([torch.ones(len(rows), soft_prompt.shape[0], dtype=mask.dtype, device=device), mask], dim=1)
    logits = backbone(inputs_embeds=embeddings, attention_mask=mask).logits.float()
    return torch.log_softmax(logits[:, logits.shape[1] - embeddings.shape[1]:], dim=-1)
