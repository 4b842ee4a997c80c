"""PPO for a language model, our own (TRL 1.13 removed its PPOTrainer), in the shape of Ziegler et al. 2019.

The policy is a LoRA delta on a frozen causal LM, so the same weights with the adapter disabled are the reference
model: no second copy in memory. A value head reads the policy's last hidden state. One iteration is a recipe:
`generate_rollout` (sample a response per prompt), `score` with the reward model (which may use another tokenizer:
it reads the decoded text), then `ppo_step` (per-token KL penalty, GAE, several epochs of minibatches of the clipped
policy and value losses) and the KL controller's update. The math lives in `ppo_math.py`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn
from transformers import PreTrainedModel

from tunelab.errors import TunelabError
from tunelab.rlhf.ppo_math import (
    KLController,
    entropy_from_logits,
    estimate_advantages,
    explained_variance,
    policy_loss,
    sequence_kl,
    token_rewards,
    value_loss,
    whiten,
)
from tunelab.runs import load_run
from tunelab.strategies.registry import get_strategy


class PPOSettings(BaseModel):
    """One PPO run's knobs; defaults after Ziegler et al. 2019 and TRL's former PPOConfig, sized for a CPU."""

    model_config = ConfigDict(extra="forbid")

    iterations: int = Field(20, gt=0)
    rollout_size: int = Field(16, gt=0, description="prompts per iteration")
    minibatch_size: int = Field(8, gt=0)
    ppo_epochs: int = Field(4, gt=0, description="passes over each rollout")
    max_new_tokens: int = Field(24, gt=0)
    temperature: float = Field(1.0, gt=0)
    learning_rate: float = Field(1e-4, gt=0)
    clip_range: float = Field(0.2, gt=0)
    clip_range_value: float = Field(0.2, gt=0)
    value_coef: float = Field(0.1, ge=0)
    gamma: float = Field(1.0, gt=0, le=1)
    lam: float = Field(0.95, ge=0, le=1)
    init_kl_coef: float = Field(0.2, ge=0)
    target_kl: float | None = Field(6.0, gt=0, description="adaptive KL controller's target; None: fixed coefficient")
    kl_horizon: int = Field(10_000, gt=0)
    whiten_rewards: bool = True
    max_grad_norm: float = Field(1.0, gt=0)
    seed: int = 42


class PolicyWithValue(nn.Module):
    """A LoRA policy and a value head on its last hidden state; `reference_logits` runs the base without the delta."""

    def __init__(self, lm: PeftModel):
        super().__init__()
        self.lm = lm
        self.value_head = nn.Linear(lm.get_input_embeddings().embedding_dim, 1)
        nn.init.zeros_(self.value_head.weight)  # values start at 0: no arbitrary baseline in the first advantages
        nn.init.zeros_(self.value_head.bias)

    def forward(self, ids: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """(B, L) ids and mask -> (B, L, V) logits and (B, L) values."""
        out = self.lm(input_ids=ids, attention_mask=mask, position_ids=positions(mask), output_hidden_states=True)
        return out.logits, self.value_head(out.hidden_states[-1]).squeeze(-1)

    @torch.no_grad()
    def reference_logits(self, ids: Tensor, mask: Tensor) -> Tensor:
        with self.lm.disable_adapter():
            return self.lm(input_ids=ids, attention_mask=mask, position_ids=positions(mask)).logits


def with_lora(lm: PreTrainedModel, r: int = 8, alpha: int = 16) -> PeftModel:
    """The policy's delta: LoRA on PEFT's default targets for the architecture; the base stays frozen."""
    return get_peft_model(lm, LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0, task_type="CAUSAL_LM"))


def positions(mask: Tensor) -> Tensor:
    """Position ids that start at 0 at each row's first real token, as generation counts them under left padding."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


@dataclass
class Rollout:
    ids: Tensor  # (B, P + T): left-padded prompts, then right-padded responses
    mask: Tensor  # (B, P + T)
    prompt_length: int  # P
    response_mask: Tensor  # (B, T) float: response tokens up to and including the first end-of-sequence

    @property
    def response_ids(self) -> Tensor:
        return self.ids[:, self.prompt_length:]


@torch.no_grad()
def generate_rollout(policy: PolicyWithValue, tokenizer, prompts: list[str], settings: PPOSettings) -> Rollout:
    """Sample one response per prompt from the policy (pure sampling: no top-k or top-p, so the samples come from
    the distribution the KL and the ratios are computed on)."""
    side, tokenizer.padding_side = tokenizer.padding_side, "left"  # prompts end where the responses begin
    try:
        batch = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    finally:
        tokenizer.padding_side = side
    policy.eval()
    ids = policy.lm.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], do_sample=True,
                             temperature=settings.temperature, top_k=0, top_p=1.0,
                             max_new_tokens=settings.max_new_tokens, pad_token_id=tokenizer.pad_token_id)
    prompt_length = batch["input_ids"].size(1)
    response = response_mask(ids[:, prompt_length:], tokenizer.eos_token_id)
    return Rollout(ids, torch.cat([batch["attention_mask"], response.long()], dim=1), prompt_length, response)


def response_mask(response: Tensor, eos_id: int) -> Tensor:
    """(B, T) generated ids -> (B, T) float mask of the tokens up to and including the first end-of-sequence
    (generation pads finished rows, often with that same token)."""
    ended = (response == eos_id).long().cumsum(-1)
    return ((ended == 0) | ((ended == 1) & (response == eos_id))).float()


def response_logprobs(logits: Tensor, rollout_ids: Tensor, prompt_length: int) -> Tensor:
    """(B, L, V) logits over the whole sequence -> (B, T) log-probabilities of the response tokens."""
    predicting = logits[:, prompt_length - 1:-1].float().log_softmax(-1)  # position t predicts token t + 1
    return predicting.gather(-1, rollout_ids[:, prompt_length:].unsqueeze(-1)).squeeze(-1)


def ppo_step(policy: PolicyWithValue, optimizer: torch.optim.Optimizer, rollout: Rollout, scores: Tensor,
             kl_controller: KLController, settings: PPOSettings) -> dict[str, float]:
    """One PPO update on a scored rollout; returns what Ziegler et al. log per iteration."""
    mask, start = rollout.response_mask, rollout.prompt_length
    policy.eval()
    with torch.no_grad():
        logits, values = policy(rollout.ids, rollout.mask)
        old_logprobs = response_logprobs(logits, rollout.ids, start)
        ref_logprobs = response_logprobs(policy.reference_logits(rollout.ids, rollout.mask), rollout.ids, start)
        old_values = values[:, start - 1:-1]  # the value of the state before each response token
        rewards, kl = token_rewards(scores, old_logprobs, ref_logprobs, mask, kl_controller.value)
        if settings.whiten_rewards:
            rewards = whiten(rewards, mask, shift_mean=False)
        advantages, returns = estimate_advantages(old_values, rewards, mask, settings.gamma, settings.lam)
        advantages = whiten(advantages, mask)
        entropy = entropy_from_logits(logits[:, start - 1:-1], mask)
    policy.train()
    stats: dict[str, list[float]] = {"clip_fraction": [], "value_loss": [], "policy_loss": []}
    generator = torch.Generator().manual_seed(settings.seed)
    for _ in range(settings.ppo_epochs):
        for batch in torch.randperm(len(scores), generator=generator).split(settings.minibatch_size):
            logits, values = policy(rollout.ids[batch], rollout.mask[batch])
            logprobs = response_logprobs(logits, rollout.ids[batch], start)
            pg_loss, pg_stats = policy_loss(logprobs, old_logprobs[batch], advantages[batch], mask[batch],
                                            settings.clip_range)
            vf_loss, _ = value_loss(values[:, start - 1:-1], old_values[batch], returns[batch], mask[batch],
                                    settings.clip_range_value)
            optimizer.zero_grad()
            (pg_loss + settings.value_coef * vf_loss).backward()
            nn.utils.clip_grad_norm_([p for p in policy.parameters() if p.requires_grad], settings.max_grad_norm)
            optimizer.step()
            stats["clip_fraction"].append(pg_stats["clip_fraction"])
            stats["value_loss"].append(vf_loss.item())
            stats["policy_loss"].append(pg_loss.item())
    mean_kl = float(kl.sum(1).mean())  # summed over a response's tokens (0 in the padding), mean over responses
    kl_controller.update(mean_kl, len(scores))
    return {"reward": float(scores.mean()), "kl": mean_kl, "kl_coef": kl_controller.value, "entropy": float(entropy),
            "explained_variance": explained_variance(old_values, returns, mask),
            **{name: sum(values) / len(values) for name, values in stats.items()}}


def ppo_iteration(policy: PolicyWithValue, optimizer: torch.optim.Optimizer, tokenizer, prompts: list[str],
                  reward: Callable[[list[str]], Tensor], kl_controller: KLController,
                  settings: PPOSettings) -> dict[str, float]:
    """Generate, score the decoded prompt + response texts, step."""
    rollout = generate_rollout(policy, tokenizer, prompts, settings)
    return ppo_step(policy, optimizer, rollout, reward(decode(tokenizer, rollout)), kl_controller, settings)


def policy_from_sft(run: Path) -> tuple[PolicyWithValue, Any]:
    """The SFT run's model with its delta folded into the base, and a fresh LoRA on top: disabling that LoRA then
    gives back the SFT policy itself, the reference that the KL penalty holds PPO to (Ziegler et al.)."""
    loaded = load_run(run)
    if loaded.config.task != "generation":
        raise TunelabError(f"{run} is a {loaded.config.task} run; PPO starts from a causal LM (`tunelab rlhf sft`)")
    get_strategy(loaded.config.strategy.name).merge(loaded.model)
    return PolicyWithValue(with_lora(loaded.model.backbone)), loaded.tokenizer


@torch.no_grad()
def evaluate_policy(policy: PolicyWithValue, tokenizer, prompts: list[str], reward: Callable[[list[str]], Tensor],
                    settings: PPOSettings) -> dict[str, Any]:
    """Mean reward of sampled responses to held-out prompts, and their KL to the reference (summed over each
    response's tokens, k1), with a few samples to read."""
    torch.manual_seed(settings.seed)  # the same draws before and after training
    rewards, kls, samples = [], [], []
    for start in range(0, len(prompts), settings.rollout_size):
        rollout = generate_rollout(policy, tokenizer, prompts[start:start + settings.rollout_size], settings)
        texts = decode(tokenizer, rollout)
        logprobs = response_logprobs(policy(rollout.ids, rollout.mask)[0], rollout.ids, rollout.prompt_length)
        reference = response_logprobs(policy.reference_logits(rollout.ids, rollout.mask), rollout.ids,
                                      rollout.prompt_length)
        rewards.append(reward(texts))
        kls.append(sequence_kl(logprobs, reference, rollout.response_mask))
        samples += texts
    return {"reward": float(torch.cat(rewards).mean()), "kl": float(torch.cat(kls).mean()),
            "prompts": len(prompts), "samples": samples[:5]}


def decode(tokenizer, rollout: Rollout) -> list[str]:
    """Prompt + response texts without padding: what the reward model reads, in its own tokenizer."""
    return [tokenizer.decode(ids[keep.bool()], skip_special_tokens=True)
            for ids, keep in zip(rollout.ids, rollout.mask, strict=True)]
