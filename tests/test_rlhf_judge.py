"""The VADER judge and the side-by-side evaluation of policies: win rates count ties as halves, the SFT policy's
samples have zero KL to itself, and every policy answers the same prompts with the same random draws."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from peft import get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from tunelab.rlhf.evaluation import SFT, judge, sample_policy
from tunelab.rlhf.judge import vader_scores, win_rate
from tunelab.rlhf.policy import policy_lora


def test_vader_scores_read_sentiment():
    scores = vader_scores(["A wonderful, moving film.", "A dull, awful mess.", "The film is 90 minutes long."])
    assert scores[0] > 0.5 and scores[1] < -0.5 and scores[2] == 0.0


def test_a_tie_is_half_a_win():
    assert win_rate(np.array([0.5, 0.0, -0.2, 0.9]), np.array([0.1, 0.0, 0.3, 0.9])) == pytest.approx(0.5)
    assert win_rate(np.array([1.0, 1.0]), np.array([0.0, -1.0])) == 1.0
    with pytest.raises(ValueError, match="paired scores"):
        win_rate(np.array([1.0]), np.array([0.0, 1.0]))


def test_policies_are_judged_on_the_same_draws(tiny_llama_lm: Path):
    torch.manual_seed(0)
    lm = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_llama_lm, dtype=torch.float32), policy_lora())
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_lm)
    prompts = ["the film was", "a story of", "it is a"]
    sft = sample_policy(lm, tokenizer, prompts, max_new_tokens=5, seed=3, adapter=False)
    same = sample_policy(lm, tokenizer, prompts, max_new_tokens=5, seed=3)  # a zero LoRA: the SFT policy itself
    assert same.texts == sft.texts and torch.allclose(sft.kl, torch.zeros(3), atol=1e-5)
    with torch.no_grad():
        for name, parameter in lm.named_parameters():
            if "lora_B" in name:
                parameter.add_(0.3)
    moved = sample_policy(lm, tokenizer, prompts, max_new_tokens=5, seed=3)
    assert moved.kl.mean() > 0.01 and moved.reference_perplexity > 1

    reward = lambda texts: torch.tensor([float(len(text)) for text in texts])  # noqa: E731
    judged = judge({SFT: sft, "moved": moved}, reward)
    assert judged[SFT]["vader_win_rate"] is None and 0.0 <= judged["moved"]["vader_win_rate"] <= 1.0
    assert judged["moved"]["reward"] == pytest.approx(np.mean([len(text) for text in moved.texts]))
    assert judged[SFT]["samples"] == sft.texts and judged["moved"]["prompts"] == 3
