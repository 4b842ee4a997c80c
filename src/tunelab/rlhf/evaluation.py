"""Judging policies side by side, as Ziegler et al. 2019 and Rafailov et al. 2023 report them: every policy samples a
response to the same held-out prompts with the same seed; the reward model scores them; the KL to the SFT policy says
how far each moved; the SFT policy's perplexity of the samples says whether they stay fluent; and VADER, a scorer not
trained here, judges each policy against SFT.

The policies share one model in memory: the merged SFT weights with each run's LoRA loaded as a named adapter, and
the SFT policy itself with every adapter disabled.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from peft import PeftModel
from torch import Tensor

from tunelab.errors import TunelabError
from tunelab.rlhf.judge import vader_scores, win_rate
from tunelab.rlhf.policy import ADAPTER_FOLDER, merged_sft, read_policy_settings
from tunelab.rlhf.ppo import decode, generate_rollout, policy_logits, reference_logits, response_logprobs
from tunelab.rlhf.ppo_math import sequence_kl
from tunelab.training.trainer import best_device

SFT = "sft"  # the baseline every policy is judged against


@dataclass
class PolicySamples:
    texts: list[str]  # prompt + response
    kl: Tensor  # (N,) KL to the reference, summed over each response's tokens (k1)
    reference_nll: float  # the reference's negative log-likelihood of all response tokens
    tokens: int  # response tokens, up to and including each end-of-sequence

    @property
    def reference_perplexity(self) -> float:
        return math.exp(self.reference_nll / max(self.tokens, 1))


@torch.no_grad()
def sample_policy(lm: PeftModel, tokenizer: Any, prompts: list[str], max_new_tokens: int, seed: int,
                  adapter: bool = True, batch_size: int = 16) -> PolicySamples:
    """Responses to `prompts` from the active adapter (or, with `adapter=False`, from the reference), drawn with
    `seed` so that every policy sees the same random numbers."""
    torch.manual_seed(seed)
    texts, kls, nll, tokens = [], [], 0.0, 0
    for start in range(0, len(prompts), batch_size):
        with nullcontext() if adapter else lm.disable_adapter():
            rollout = generate_rollout(lm, tokenizer, prompts[start:start + batch_size], max_new_tokens)
            logprobs = response_logprobs(policy_logits(lm, rollout.ids, rollout.mask), rollout.ids,
                                         rollout.prompt_length)
        reference = response_logprobs(reference_logits(lm, rollout.ids, rollout.mask), rollout.ids,
                                      rollout.prompt_length)
        texts += decode(tokenizer, rollout)
        kls.append(sequence_kl(logprobs, reference, rollout.response_mask).cpu())
        nll -= float((reference * rollout.response_mask).sum())
        tokens += int(rollout.response_mask.sum())
    return PolicySamples(texts, torch.cat(kls), nll, tokens)


def judge(samples: dict[str, PolicySamples], reward: Callable[[list[str]], Tensor]) -> dict[str, dict[str, Any]]:
    """Per policy: mean reward, KL to SFT, SFT's perplexity of its samples, mean VADER score, and the VADER win rate
    against SFT's response to the same prompt (None for SFT itself)."""
    vader = {name: vader_scores(policy.texts) for name, policy in samples.items()}
    return {name: {"reward": float(reward(policy.texts).float().mean()), "kl": float(policy.kl.mean()),
                   "reference_perplexity": policy.reference_perplexity, "vader": float(np.mean(vader[name])),
                   "vader_win_rate": None if name == SFT else win_rate(vader[name], vader[SFT]),
                   "prompts": len(policy.texts), "samples": policy.texts[:5]}
            for name, policy in samples.items()}


def evaluate_policies(sft_run: Path, policy_runs: dict[str, Path], reward: Callable[[list[str]], Tensor],
                      prompts: list[str], max_new_tokens: int, seed: int) -> dict[str, dict[str, Any]]:
    """SFT and each named PPO or DPO run (all trained from `sft_run`) on the same prompts, judged."""
    model, tokenizer = merged_sft(sft_run)
    model.to(best_device())
    lm: PeftModel | None = None
    for name, run in policy_runs.items():
        if Path(read_policy_settings(run)["sft_run"]) != sft_run.resolve():
            raise TunelabError(f"{run} was trained from another SFT run than {sft_run}; judge the policies of "
                               f"one SFT run together")
        if lm is None:
            lm = PeftModel.from_pretrained(model.backbone, run / ADAPTER_FOLDER, adapter_name=name)
        else:
            lm.load_adapter(run / ADAPTER_FOLDER, adapter_name=name)
    if lm is None:
        raise TunelabError("no policy to evaluate: give at least one PPO or DPO run")
    samples = {SFT: sample_policy(lm, tokenizer, prompts, max_new_tokens, seed, adapter=False)}
    for name in policy_runs:
        lm.set_adapter(name)
        samples[name] = sample_policy(lm, tokenizer, prompts, max_new_tokens, seed)
    return judge(samples, reward)
