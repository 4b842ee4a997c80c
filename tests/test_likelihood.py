"""Next-token scoring: its batching by length, left padding and a soft prompt read once give what each context
alone, unpadded, after the soft prompt gives."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tunelab.api import load_language_model
from tunelab.errors import TunelabError
from tunelab.tasks.likelihood import NEXT_TOKEN_BATCH, next_token_logprobs

LENGTHS = [1, 3, 7, 2, 9, 4, 4, 5, 11, 6, 2]  # more than one forward, rows of many lengths in each
TOKENS = [5, 17, 42]


@pytest.fixture(scope="module")
def tiny_lm(tiny_llama_lm: Path):
    return load_language_model(str(tiny_llama_lm))[0]


def alone(model, context: list[int], soft: torch.Tensor | None) -> torch.Tensor:
    """The reference: one context, no padding, the soft prompt's embeddings right before it."""
    backbone = model.backbone
    embeddings = backbone.get_input_embeddings()(torch.tensor([context], dtype=torch.long))
    if soft is not None:
        embeddings = torch.cat([soft[None], embeddings], dim=1)
    with torch.no_grad():
        logits = backbone(inputs_embeds=embeddings).logits[0, -1]
    return torch.log_softmax(logits, dim=-1)[TOKENS]


@pytest.mark.parametrize("virtual", [0, 4])
def test_next_token_scores_equal_each_context_alone(tiny_lm, virtual: int):
    generator = torch.Generator().manual_seed(0)
    vocab = tiny_lm.backbone.config.vocab_size
    contexts = [torch.randint(3, vocab, (length,), generator=generator).tolist() for length in LENGTHS]
    soft = torch.randn(virtual, tiny_lm.backbone.config.hidden_size, generator=generator) * 0.5 if virtual else None
    assert len(contexts) > NEXT_TOKEN_BATCH
    scored = next_token_logprobs(tiny_lm, contexts, TOKENS, soft, pad_id=0)
    expected = torch.stack([alone(tiny_lm, context, soft) for context in contexts])
    torch.testing.assert_close(scored, expected, atol=1e-5, rtol=0)


def test_an_empty_context_is_predicted_from_the_soft_prompt_alone(tiny_lm):
    soft = torch.randn(3, tiny_lm.backbone.config.hidden_size, generator=torch.Generator().manual_seed(1))
    backbone = tiny_lm.backbone
    with torch.no_grad():
        expected = torch.log_softmax(backbone(inputs_embeds=soft[None]).logits[0, -1], dim=-1)[TOKENS]
    scored = next_token_logprobs(tiny_lm, [[], [7, 8, 9], []], TOKENS, soft)
    torch.testing.assert_close(scored[0], expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(scored[2], expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(scored[1], alone(tiny_lm, [7, 8, 9], soft), atol=1e-5, rtol=0)
    torch.testing.assert_close(next_token_logprobs(tiny_lm, [[]], TOKENS, soft)[0], expected, atol=1e-5, rtol=0)
    with pytest.raises(TunelabError, match="nothing before it"):
        next_token_logprobs(tiny_lm, [[], [7]], TOKENS)
