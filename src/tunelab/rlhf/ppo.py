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

import torch
from peft import PeftModel
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn
from transformers import PreTrainedModel

from tunelab.rlhf.ppo_math import (
    KLController,
    entropy_from_logits,
    estimate_advantages,
    explained_variance,
    policy_loss,
    token_rewards,
    value_loss,
    whiten,
)


class PPOSettings(BaseModel):
    """One PPO run's knobs; defaults after Ziegler et al. 2019 and TRL's former PPOConfig (KL coefficient 0.2, target
    6), sized for a CPU: 60 iterations of 16 prompts. The controller's horizon is scaled to such a short run (TRL's
    10,000 episodes would leave the coefficient where it started), and a LoRA takes a larger learning rate than the
    full model Ziegler et al. trained."""

    model_config = ConfigDict(extra="forbid")

    iterations: int = Field(60, gt=0)
    rollout_size: int = Field(16, gt=0, description="prompts per iteration")
    minibatch_size: int = Field(8, gt=0)
    ppo_epochs: int = Field(4, gt=0, description="passes over each rollout")
    max_new_tokens: int = Field(24, gt=0)
    temperature: float = Field(1.0, gt=0)
    learning_rate: float = Field(5e-4, gt=0, description="the policy's LoRA delta")
    value_learning_rate: float = Field(1e-3, gt=0, description="the value head: a fresh linear layer learns faster")
    clip_range: float = Field(0.2, gt=0)
    clip_range_value: float = Field(0.2, gt=0)
    value_coef: float = Field(0.1, ge=0)
    gamma: float = Field(1.0, gt=0, le=1)
    lam: float = Field(0.95, ge=0, le=1)
    init_kl_coef: float = Field(0.2, ge=0)
    target_kl: float | None = Field(6.0, gt=0, description="adaptive KL controller's target; None: fixed coefficient")
    kl_horizon: int = Field(100, gt=0, description="episodes over which the KL coefficient may change by ~20 %")
    min_kl_coef: float = Field(0.2, ge=0, description="the adaptive controller never lowers the coefficient below "
                                                      "this (0: no floor, as in Ziegler et al.)")
    whiten_rewards: bool = True
    max_grad_norm: float = Field(1.0, gt=0)
    checkpoint_every: int = Field(10, gt=0, description="iterations between the checkpoints a run resumes from")
    seed: int = 42


class PolicyWithValue(nn.Module):
    """A LoRA policy and a value head on its last hidden state; `reference_logits(policy.lm, ...)` runs the same
    weights without the delta."""

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



def policy_logits(lm: PreTrainedModel | PeftModel, ids: Tensor, mask: Tensor) -> Tensor:
    """(B, L, V) logits of left-padded sequences, positions counted as generation counted them."""
    return lm(input_ids=ids, attention_mask=mask, position_ids=positions(mask)).logits


@torch.no_grad()
def reference_logits(lm: PeftModel, ids: Tensor, mask: Tensor) -> Tensor:
    """The logits of the model without its LoRA delta: the reference policy."""
    with lm.disable_adapter():
        return policy_logits(lm, ids, mask)


def ppo_optimizer(policy: PolicyWithValue, settings: PPOSettings) -> torch.optim.Optimizer:
    """Adam over the LoRA delta and the value head, each at its own learning rate."""
    delta = [p for p in policy.lm.parameters() if p.requires_grad]
    return torch.optim.Adam([{"params": delta, "lr": settings.learning_rate},
                             {"params": policy.value_head.parameters(), "lr": settings.value_learning_rate}])


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
def generate_rollout(lm: PreTrainedModel | PeftModel, tokenizer, prompts: list[str], max_new_tokens: int,
                     temperature: float = 1.0) -> Rollout:
    """Sample one response per prompt from `lm` as it is (a PeftModel under `disable_adapter()` samples the
    reference); pure sampling, no top-k or top-p, so the samples come from the distribution the KL and the ratios
    are computed on."""
    side, tokenizer.padding_side = tokenizer.padding_side, "left"  # prompts end where the responses begin
    try:
        batch = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(lm.device)
    finally:
        tokenizer.padding_side = side
    lm.eval()
    ids = lm.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], do_sample=True,
                      temperature=temperature, top_k=0, top_p=1.0, max_new_tokens=max_new_tokens,
                      pad_token_id=tokenizer.pad_token_id)
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
    mask, start, scores = rollout.response_mask, rollout.prompt_length, scores.to(rollout.ids.device)
    policy.eval()
    with torch.no_grad():
        logits, values = policy(rollout.ids, rollout.mask)
        old_logprobs = response_logprobs(logits, rollout.ids, start)
        ref_logprobs = response_logprobs(reference_logits(policy.lm, rollout.ids, rollout.mask), rollout.ids, start)
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
        for batch in torch.randperm(len(scores), generator=generator).to(scores.device).split(settings.minibatch_size):
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
    rollout = generate_rollout(policy.lm, tokenizer, prompts, settings.max_new_tokens, settings.temperature)
    return ppo_step(policy, optimizer, rollout, reward(decode(tokenizer, rollout)), kl_controller, settings)


def decode(tokenizer, rollout: Rollout) -> list[str]:
    """Prompt + response texts without padding: what the reward model reads, in its own tokenizer."""
    return [tokenizer.decode(ids[keep.bool()], skip_special_tokens=True)
            for ids, keep in zip(rollout.ids, rollout.mask, strict=True)]
