"""Log-probabilities of given continuations after given contexts under a causal LM, optionally after soft-prompt
embeddings: what label-word scoring, `echo` with logprobs and black-box tuning through an API read from a model."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from tunelab.errors import TunelabError


@dataclass
class Scored:
    """One continuation's tokens, each one's log-probability after everything before it, and at each position the
    `top` most likely tokens with theirs."""

    tokens: list[int]
    logprobs: list[float]
    top: list[list[tuple[int, float]]]

    @property
    def total(self) -> float:
        return float(sum(self.logprobs))


@torch.no_grad()
def score_continuations(model: nn.Module, pairs: list[tuple[list[int], list[int]]],
                        soft_prompt: torch.Tensor | None = None, top: int = 0, pad_id: int = 0) -> list[Scored]:
    """For each (context, continuation) pair of token ids, in one right-padded batch: the log-probability of each
    continuation token. `model` is a `CausalLM` (its HF model under `backbone`); `soft_prompt` (virtual tokens,
    hidden) is prepended to every row as input embeddings. A prompt-tuned model's own virtual tokens are allowed
    for: they come before the row, so positions are counted from the end of the logits."""
    virtual = 0 if soft_prompt is None else soft_prompt.shape[0]
    for context, continuation in pairs:
        if not continuation:
            raise TunelabError("an empty continuation has nothing to score")
        if not context and not virtual:
            raise TunelabError("the first token has nothing before it to be predicted from: give a prompt or a "
                               "soft prompt")
    backbone = model.backbone
    embed = backbone.get_input_embeddings()
    device = embed.weight.device
    width = max(len(context) + len(continuation) for context, continuation in pairs)
    ids = torch.tensor([context + continuation + [pad_id] * (width - len(context) - len(continuation))
                        for context, continuation in pairs], device=device)
    mask = (torch.arange(width, device=device)[None] < torch.tensor(
        [len(context) + len(continuation) for context, continuation in pairs], device=device)[:, None]).long()
    embeddings = embed(ids)
    if soft_prompt is not None:
        soft = soft_prompt.to(device=device, dtype=embeddings.dtype)[None].expand(len(pairs), -1, -1)
        embeddings = torch.cat([soft, embeddings], dim=1)
        mask = torch.cat([torch.ones(len(pairs), virtual, dtype=mask.dtype, device=device), mask], dim=1)
    logits = backbone(inputs_embeds=embeddings, attention_mask=mask).logits.float()
    logprobs = torch.log_softmax(logits[:, logits.shape[1] - embeddings.shape[1]:], dim=-1)  # the rows' own positions
    scored = []
    for row, (context, continuation) in enumerate(pairs):
        first = virtual + len(context)  # the first continuation token's position in the row
        steps = logprobs[row, first - 1:first - 1 + len(continuation)]  # position t predicts token t + 1
        chosen = steps.gather(1, torch.tensor(continuation, device=device)[:, None])[:, 0].tolist()
        best = steps.topk(top, dim=-1) if top else None
        scored.append(Scored(list(continuation), chosen,
                             [list(zip(best.indices[step].tolist(), best.values[step].tolist(), strict=True))
                              for step in range(len(continuation))] if best is not None else
                             [[] for _ in continuation]))
    return scored
