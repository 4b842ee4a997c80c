"""The math of PPO for language models, as small pure functions over response tokens.

Follows Ziegler et al. 2019, "Fine-Tuning Language Models from Human Preferences" (a per-token KL penalty to
a frozen reference, the reward-model score at the last token, an adaptive KL coefficient), Schulman et al.
2017, "Proximal Policy Optimization Algorithms" (the clipped surrogate) and Schulman et al. 2016,
"High-Dimensional Continuous Control Using Generalized Advantage Estimation" (GAE).

Conventions: tensors are (B, T) over response tokens only; `mask` (B, T) is 1.0 for real tokens and 0.0 for
the right padding after each response's end, and every row has at least one real token. Padded positions
never change a result: inputs there are replaced by zeros before any arithmetic (so even NaN padding is
harmless) and per-token outputs are 0 there.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol

import torch
from torch import Tensor


def _real(values: Tensor, mask: Tensor) -> Tensor:
    """`values` with padded positions set to 0; `torch.where`, not a product, so NaN or inf padding drops out."""
    return torch.where(mask.bool(), values, torch.zeros_like(values))


def masked_mean(values: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of `values` (B, T) over the real tokens: a scalar, or (B,) / (T,) along `dim`."""
    if dim is None:
        return _real(values, mask).sum() / mask.sum()
    return _real(values, mask).sum(dim) / mask.sum(dim)


def masked_var(values: Tensor, mask: Tensor, unbiased: bool = True) -> Tensor:
    """Variance (a scalar) of `values` (B, T) over the real tokens, with Bessel's correction when `unbiased`."""
    count = mask.sum()
    if count < (2 if unbiased else 1):
        raise ValueError(f"masked_var needs at least {2 if unbiased else 1} real tokens, got {int(count)}")
    variance = masked_mean((values - masked_mean(values, mask)) ** 2, mask)
    return variance * count / (count - 1) if unbiased else variance


def whiten(values: Tensor, mask: Tensor, shift_mean: bool = True) -> Tensor:
    """(B, T) values standardised over the real tokens; padded positions are 0.

    Advantages are whitened with the mean removed (about half the tokens pushed up, half down); rewards are
    scaled only (`shift_mean=False` adds the mean back) so that a good response keeps a positive reward.
    """
    mean, variance = masked_mean(values, mask), masked_var(values, mask)
    whitened = (values - mean) * torch.rsqrt(variance + 1e-8)
    return _real(whitened if shift_mean else whitened + mean, mask)


def _kl_k1(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    return logprobs - ref_logprobs


def _kl_k3(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    log_ratio = ref_logprobs - logprobs  # log r, r = p_ref / p
    return torch.expm1(log_ratio) - log_ratio


KL_ESTIMATORS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {"k1": _kl_k1, "k3": _kl_k3}


def per_token_kl(logprobs: Tensor, ref_logprobs: Tensor, estimator: str = "k1") -> Tensor:
    """(B, T) single-sample estimates of KL(policy || reference) at the sampled tokens.

    Both are from J. Schulman, "Approximating KL Divergence" (2020, http://joschu.net/blog/kl-approx.html):
    k1 = log p - log p_ref is unbiased but can be negative per token; k3 = (r - 1) - log r with
    r = p_ref / p is also unbiased, never negative and of lower variance.
    """
    if estimator not in KL_ESTIMATORS:
        raise ValueError(f"unknown KL estimator {estimator!r}; expected one of {sorted(KL_ESTIMATORS)}")
    return KL_ESTIMATORS[estimator](logprobs, ref_logprobs)


def sequence_kl(logprobs: Tensor, ref_logprobs: Tensor, mask: Tensor, estimator: str = "k1") -> Tensor:
    """(B,) KL of each response to the reference: the per-token estimates summed over its real tokens."""
    return _real(per_token_kl(logprobs, ref_logprobs, estimator), mask).sum(1)


def last_token_index(mask: Tensor) -> Tensor:
    """(B,) index of each row's last real token in `mask` (B, T)."""
    return mask.size(1) - 1 - mask.flip(1).argmax(1)  # argmax returns the first maximum: the last 1 unflipped


def token_rewards(scores: Tensor, logprobs: Tensor, ref_logprobs: Tensor, mask: Tensor, kl_coef: float,
                  estimator: str = "k1") -> tuple[Tensor, Tensor]:
    """Per-token rewards (B, T) and the KL (B, T) they were penalised by; padded positions are 0.

    Ziegler et al. 2019 (eq. 2): R = r(x, y) - beta * log(pi(y|x) / rho(y|x)). The KL term is spread over
    every generated token, and the reward model's sequence score `scores` (B,), which only judges the
    finished text, is paid at each row's last real token.
    """
    kl = _real(per_token_kl(logprobs, ref_logprobs, estimator), mask)  # (B, T)
    rewards = -kl_coef * kl
    rows = torch.arange(mask.size(0), device=mask.device)
    rewards[rows, last_token_index(mask)] += scores.to(rewards.dtype)
    return rewards, kl


@torch.no_grad()
def estimate_advantages(values: Tensor, rewards: Tensor, mask: Tensor, gamma: float = 1.0,
                        lam: float = 0.95) -> tuple[Tensor, Tensor]:
    """GAE advantages (B, T) and returns (B, T), raw (the caller whitens advantages); padded positions 0.

    Schulman et al. 2016: delta_t = r_t + gamma V_{t+1} - V_t and A_t = delta_t + gamma lam A_{t+1}, run
    backwards; past a response's last token V and A are 0, which `mask` at t + 1 enforces. The returns
    A + V are the value head's regression targets (the lam-return). No gradient: they are fixed targets.
    """
    values, rewards, mask = _real(values, mask), _real(rewards, mask), mask.to(values.dtype)
    next_value = next_advantage = torch.zeros_like(values[:, 0])  # (B,)
    next_mask = torch.zeros_like(mask[:, 0])
    advantages = []
    for t in reversed(range(values.size(1))):
        delta = rewards[:, t] + gamma * next_value * next_mask - values[:, t]
        next_advantage = delta + gamma * lam * next_mask * next_advantage
        next_value, next_mask = values[:, t], mask[:, t]
        advantages.append(next_advantage)
    advantages = _real(torch.stack(advantages[::-1], dim=1), mask)  # (B, T)
    return advantages, _real(advantages + values, mask)


def policy_loss(logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor,
                clip_range: float = 0.2) -> tuple[Tensor, dict[str, float]]:
    """The clipped surrogate loss (a scalar) of Schulman et al. 2017 (eq. 7), negated, over real tokens.

    Taking the larger of -A ratio and -A clip(ratio) is the pessimistic bound: once the ratio has moved
    past 1 +/- eps in the direction the advantage rewards, the clipped term wins and its gradient is zero,
    so the several minibatch epochs over one rollout cannot push the policy far from the one that sampled it.
    """
    log_ratio = _real(logprobs - old_logprobs, mask)  # (B, T)
    ratio, advantages = torch.exp(log_ratio), _real(advantages, mask)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        stats = {"clip_fraction": masked_mean((clipped > unclipped).to(ratio.dtype), mask).item(),
                 "approx_kl": masked_mean(0.5 * log_ratio**2, mask).item(),
                 "ratio_mean": masked_mean(ratio, mask).item()}
    return loss, stats


def value_loss(values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor,
               clip_range_value: float = 0.2) -> tuple[Tensor, dict[str, float]]:
    """Clipped value loss (a scalar): 0.5 * mean of max((V - R)^2, (V_clipped - R)^2) over real tokens.

    As in the PPO implementation of Ziegler et al. (openai/lm-human-preferences): the value head, like the
    policy, may move at most `clip_range_value` from its rollout prediction before the loss stops rewarding it.
    """
    values, old_values, returns = _real(values, mask), _real(old_values, mask), _real(returns, mask)
    clipped = old_values + torch.clamp(values - old_values, -clip_range_value, clip_range_value)
    unclipped_error, clipped_error = (values - returns) ** 2, (clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped_error, clipped_error), mask)
    with torch.no_grad():
        fraction = masked_mean((clipped_error > unclipped_error).to(values.dtype), mask).item()
    return loss, {"value_clip_fraction": fraction}


@torch.no_grad()
def explained_variance(values: Tensor, returns: Tensor, mask: Tensor) -> float:
    """1 - Var[R - V] / Var[R] over real tokens: 1 for a perfect value head, 0 for one that predicts the mean.

    NaN when the returns are constant (Var[R] = 0), where the ratio means nothing.
    """
    returns_variance = masked_var(returns, mask, unbiased=False)
    if returns_variance == 0:
        return math.nan
    return (1 - masked_var(returns - values, mask, unbiased=False) / returns_variance).item()


def entropy_from_logits(logits: Tensor, mask: Tensor) -> Tensor:
    """Mean (a scalar) over real tokens of the entropy of the next-token distribution; logits (B, T, V).

    A collapsing entropy is the usual early sign of a policy exploiting the reward model.
    """
    logits = torch.where(mask.bool().unsqueeze(-1), logits, torch.zeros_like(logits))
    log_probs = torch.log_softmax(logits, dim=-1)  # (B, T, V)
    return masked_mean(-(log_probs.exp() * log_probs).sum(-1), mask)


class KLController(Protocol):
    """The KL coefficient beta of the reward, read as `value` and updated once per rollout."""

    value: float

    def update(self, current_kl: float, n_steps: int) -> None: ...


class AdaptiveKLController:
    """Steers beta so that the policy's KL to the reference tracks `target` (Ziegler et al. 2019, eq. 3).

    e = clip(KL / target - 1, -0.2, 0.2) and beta <- max(floor, beta (1 + e n_steps / horizon)): a proportional
    controller whose clip keeps one unusual batch from moving beta far. The floor (0: none, as in the paper) keeps
    a short run, which starts at KL 0 far under any target, from spending its first iterations lowering beta.
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: int, floor: float = 0.0) -> None:
        if target <= 0 or horizon <= 0:
            raise ValueError(f"target and horizon must be positive, got target={target}, horizon={horizon}")
        self.value, self.target, self.horizon, self.floor = init_kl_coef, target, horizon, floor

    def update(self, current_kl: float, n_steps: int) -> None:
        proportional_error = min(max(current_kl / self.target - 1, -0.2), 0.2)
        self.value = max(self.floor, self.value * (1 + proportional_error * n_steps / self.horizon))


class FixedKLController:
    """A constant beta, for runs that do not target a KL."""

    def __init__(self, kl_coef: float) -> None:
        self.value = kl_coef

    def update(self, current_kl: float, n_steps: int) -> None:
        """Nothing to do: the coefficient is fixed."""
