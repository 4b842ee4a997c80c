"""PPO math: GAE, rewards, losses, KL and the KL controllers against hand computations and naive references."""

import math

import pytest
import torch

from tunelab.rlhf.ppo_math import (
    AdaptiveKLController,
    FixedKLController,
    KLController,
    entropy_from_logits,
    estimate_advantages,
    explained_variance,
    masked_mean,
    masked_var,
    per_token_kl,
    policy_loss,
    token_rewards,
    value_loss,
    whiten,
)

F64 = torch.float64


def _t(rows: list) -> torch.Tensor:
    return torch.tensor(rows, dtype=F64)


def _right_padded_mask(lengths: list[int], width: int) -> torch.Tensor:
    return (torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]).to(F64)  # (B, T)


def _naive_gae(values: torch.Tensor, rewards: torch.Tensor, mask: torch.Tensor, gamma: float,
               lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE row by row in plain Python floats, over each row's real tokens only."""
    advantages, returns = torch.zeros_like(values), torch.zeros_like(values)
    for b in range(values.size(0)):
        n = int(mask[b].sum())
        v, r = values[b, :n].tolist(), rewards[b, :n].tolist()
        running = 0.0
        for t in reversed(range(n)):
            next_value = v[t + 1] if t + 1 < n else 0.0
            running = r[t] + gamma * next_value - v[t] + gamma * lam * running
            advantages[b, t], returns[b, t] = running, running + v[t]
    return advantages, returns


# ----- GAE -----

def test_gae_single_row_by_hand():
    # gamma 0.9, lam 0.8 (gamma lam = 0.72); V after the last token is 0.
    # t=2: delta = 2 - 3 = -1                 A = -1
    # t=1: delta = -1 + 0.9*3 - 2 = -0.3      A = -0.3 + 0.72*(-1) = -1.02
    # t=0: delta = 0.5 + 0.9*2 - 1 = 1.3      A = 1.3 + 0.72*(-1.02) = 0.5656
    values, rewards, mask = _t([[1.0, 2.0, 3.0]]), _t([[0.5, -1.0, 2.0]]), _t([[1.0, 1.0, 1.0]])
    advantages, returns = estimate_advantages(values, rewards, mask, gamma=0.9, lam=0.8)
    torch.testing.assert_close(advantages, _t([[0.5656, -1.02, -1.0]]))
    torch.testing.assert_close(returns, _t([[1.5656, 0.98, 2.0]]))


def test_gae_two_rows_with_padding_by_hand():
    # gamma 0.5, lam 0.5 (gamma lam = 0.25). Row 0 has two real tokens; its third column is garbage.
    # row 0: t=1: delta = 1 - 2 = -1                   A = -1
    #        t=0: delta = 0.2 + 0.5*2 - 0.5 = 0.7       A = 0.7 + 0.25*(-1) = 0.45
    # row 1: t=2: delta = 1 - (-1) = 2                  A = 2
    #        t=1: delta = 0 + 0.5*(-1) - 0.4 = -0.9     A = -0.9 + 0.25*2 = -0.4
    #        t=0: delta = 0 + 0.5*0.4 - 1 = -0.8        A = -0.8 + 0.25*(-0.4) = -0.9
    values = _t([[0.5, 2.0, 9.0], [1.0, 0.4, -1.0]])
    rewards = _t([[0.2, 1.0, 7.0], [0.0, 0.0, 1.0]])
    mask = _right_padded_mask([2, 3], 3)
    advantages, returns = estimate_advantages(values, rewards, mask, gamma=0.5, lam=0.5)
    torch.testing.assert_close(advantages, _t([[0.45, -1.0, 0.0], [-0.9, -0.4, 2.0]]))
    torch.testing.assert_close(returns, _t([[0.95, 1.0, 0.0], [0.1, 0.0, 1.0]]))


def test_gae_matches_naive_loop_on_random_data():
    generator = torch.Generator().manual_seed(0)
    values = torch.randn(6, 9, generator=generator, dtype=F64)
    rewards = torch.randn(6, 9, generator=generator, dtype=F64)
    mask = _right_padded_mask([9, 1, 4, 7, 2, 9], 9)
    advantages, returns = estimate_advantages(values, rewards, mask, gamma=0.97, lam=0.9)
    expected_advantages, expected_returns = _naive_gae(values, rewards, mask, 0.97, 0.9)
    torch.testing.assert_close(advantages, expected_advantages)
    torch.testing.assert_close(returns, expected_returns)


def test_gae_carries_no_gradient():
    values = torch.randn(2, 4, dtype=F64, requires_grad=True)
    advantages, returns = estimate_advantages(values, torch.randn(2, 4, dtype=F64), torch.ones(2, 4, dtype=F64))
    assert not advantages.requires_grad and not returns.requires_grad


# ----- rewards and KL -----

def test_token_rewards_score_at_last_real_token_and_kl_everywhere_real():
    logprobs = _t([[-1.0, -2.0, -0.5], [-0.3, -1.2, 5.0]])
    ref_logprobs = _t([[-1.5, -1.0, -0.5], [-0.1, -2.2, -9.0]])
    mask = _right_padded_mask([3, 2], 3)
    rewards, kl = token_rewards(_t([2.0, -1.0]), logprobs, ref_logprobs, mask, kl_coef=0.1)
    torch.testing.assert_close(kl, _t([[0.5, -1.0, 0.0], [-0.2, 1.0, 0.0]]))
    torch.testing.assert_close(rewards, _t([[-0.05, 0.1, 2.0], [0.02, -0.1 - 1.0, 0.0]]))


def test_kl_estimators_by_hand():
    logprobs, ref_logprobs = _t([math.log(0.5), math.log(0.25)]), _t([math.log(0.25), math.log(0.5)])
    torch.testing.assert_close(per_token_kl(logprobs, ref_logprobs, "k1"), _t([math.log(2), -math.log(2)]))
    # k3 = (r - 1) - log r with r = p_ref / p: r = 0.5 and r = 2.
    torch.testing.assert_close(per_token_kl(logprobs, ref_logprobs, "k3"),
                               _t([-0.5 + math.log(2), 1.0 - math.log(2)]))
    torch.testing.assert_close(per_token_kl(logprobs, ref_logprobs), per_token_kl(logprobs, ref_logprobs, "k1"))
    with pytest.raises(ValueError, match="unknown KL estimator"):
        per_token_kl(logprobs, ref_logprobs, "k2")


def test_k3_is_never_negative():
    generator = torch.Generator().manual_seed(1)
    logprobs, ref_logprobs = (torch.randn(64, 32, generator=generator, dtype=F64) * 3 for _ in range(2))
    assert (per_token_kl(logprobs, ref_logprobs, "k3") >= 0).all()


# ----- losses -----

def test_policy_loss_by_hand_with_clipping_in_both_directions():
    # eps = 0.2; per token max(-A r, -A clip(r)):
    #   A=+1, r=1.5 -> max(-1.5, -1.2) = -1.2  clipped (A > 0, r > 1 + eps)
    #   A=-2, r=0.5 -> max( 1.0,  1.6) =  1.6  clipped (A < 0, r < 1 - eps)
    #   A=+1, r=1.1 -> -1.1                   inside the range
    #   A=-1, r=1.5 -> max( 1.5,  1.2) =  1.5  unclipped (the pessimistic side)
    #   A=+1, r=0.5 -> max(-0.5, -0.8) = -0.5  unclipped (the pessimistic side)
    ratios, advantages = [1.5, 0.5, 1.1, 1.5, 0.5], [1.0, -2.0, 1.0, -1.0, 1.0]
    logprobs = torch.log(_t([ratios])).requires_grad_()
    old_logprobs, mask = torch.zeros(1, 5, dtype=F64), torch.ones(1, 5, dtype=F64)
    loss, stats = policy_loss(logprobs, old_logprobs, _t([advantages]), mask, clip_range=0.2)
    torch.testing.assert_close(loss, torch.tensor((-1.2 + 1.6 - 1.1 + 1.5 - 0.5) / 5, dtype=F64))
    assert stats["clip_fraction"] == pytest.approx(2 / 5)
    assert stats["ratio_mean"] == pytest.approx(sum(ratios) / 5)
    assert stats["approx_kl"] == pytest.approx(sum(0.5 * math.log(r) ** 2 for r in ratios) / 5)
    loss.backward()
    assert logprobs.grad[0, :2].tolist() == [0.0, 0.0]  # the clip stops the gradient where it is active
    assert (logprobs.grad[0, 2:] != 0).all()


def test_value_loss_with_clipping_active():
    # eps = 0.2, V_old = 1 everywhere; per token max((V - R)^2, (clip(V) - R)^2):
    #   V=1.5, R=2 -> max(0.25, (1.2 - 2)^2 = 0.64) = 0.64  clipped
    #   V=1.1, R=0 -> 1.21                                  inside the range
    #   V=0.5, R=0 -> max(0.25, 0.8^2 = 0.64) = 0.64        clipped
    #   V=1.5, R=0 -> max(2.25, 1.2^2 = 1.44) = 2.25        unclipped
    values, returns = _t([[1.5, 1.1, 0.5, 1.5]]), _t([[2.0, 0.0, 0.0, 0.0]])
    old_values, mask = torch.ones(1, 4, dtype=F64), torch.ones(1, 4, dtype=F64)
    loss, stats = value_loss(values, old_values, returns, mask, clip_range_value=0.2)
    torch.testing.assert_close(loss, torch.tensor(0.5 * (0.64 + 1.21 + 0.64 + 2.25) / 4, dtype=F64))
    assert stats["value_clip_fraction"] == pytest.approx(0.5)


def test_value_loss_without_clipping_is_half_the_squared_error():
    values, returns = _t([[1.5, 1.1, 0.5, 1.5]]), _t([[2.0, 0.0, 0.0, 0.0]])
    old_values, mask = values - 0.1, torch.ones(1, 4, dtype=F64)
    loss, stats = value_loss(values, old_values, returns, mask, clip_range_value=0.2)
    torch.testing.assert_close(loss, 0.5 * ((values - returns) ** 2).mean())
    assert stats["value_clip_fraction"] == 0.0


# ----- KL controllers -----

def test_adaptive_kl_controller_follows_the_formula():
    controller = AdaptiveKLController(init_kl_coef=0.2, target=6.0, horizon=10_000)
    # current/target - 1 = 0.5 -> clipped to 0.2; 0.1; -0.5 -> clipped to -0.2; with n_steps = 256.
    expected = 0.2
    for current_kl, error in [(9.0, 0.2), (6.6, 0.1), (3.0, -0.2)]:
        controller.update(current_kl, n_steps=256)
        expected *= 1 + error * 256 / 10_000
        assert controller.value == pytest.approx(expected)
    assert controller.value == pytest.approx(0.2 * 1.00512 * 1.00256 * 0.99488)


def test_adaptive_kl_controller_moves_towards_the_target():
    controller = AdaptiveKLController(init_kl_coef=0.1, target=6.0, horizon=1000)
    controller.update(8.0, n_steps=64)
    assert controller.value > 0.1  # KL above target: penalise it more
    before = controller.value
    controller.update(4.0, n_steps=64)
    assert controller.value < before  # KL below target: penalise it less


def test_the_floor_keeps_the_coefficient_from_falling_below_it():
    controller = AdaptiveKLController(init_kl_coef=0.2, target=6.0, horizon=100, floor=0.2)
    controller.update(0.0, n_steps=16)  # a run's start: KL 0, far under the target
    assert controller.value == 0.2
    controller.update(9.0, n_steps=16)
    assert controller.value == pytest.approx(0.2 * (1 + 0.2 * 16 / 100))  # above the target it still rises
    for _ in range(50):
        controller.update(1.0, n_steps=16)
    assert controller.value == 0.2


def test_fixed_kl_controller_never_moves():
    controller: KLController = FixedKLController(0.05)
    controller.update(100.0, n_steps=512)
    assert controller.value == 0.05


# ----- statistics -----

def test_masked_mean_and_var():
    values, mask = _t([[1.0, 2.0, 3.0], [5.0, 100.0, 100.0]]), _right_padded_mask([3, 1], 3)
    torch.testing.assert_close(masked_mean(values, mask), torch.tensor(11 / 4, dtype=F64))
    torch.testing.assert_close(masked_mean(values, mask, dim=1), _t([2.0, 5.0]))
    expected = torch.tensor([1.0, 2.0, 3.0, 5.0], dtype=F64)
    torch.testing.assert_close(masked_var(values, mask), expected.var())
    torch.testing.assert_close(masked_var(values, mask, unbiased=False), expected.var(unbiased=False))


def test_whiten_standardises_real_tokens_and_zeroes_padding():
    generator = torch.Generator().manual_seed(2)
    values = torch.randn(4, 6, generator=generator, dtype=F64) * 3 + 2
    mask = _right_padded_mask([6, 2, 5, 3], 6)
    whitened = whiten(values, mask)
    torch.testing.assert_close(masked_mean(whitened, mask), torch.tensor(0.0, dtype=F64))
    torch.testing.assert_close(masked_var(whitened, mask), torch.tensor(1.0, dtype=F64))
    assert (whitened[mask == 0] == 0).all()
    kept = whiten(values, mask, shift_mean=False)
    torch.testing.assert_close(masked_mean(kept, mask), masked_mean(values, mask))
    torch.testing.assert_close(masked_var(kept, mask), torch.tensor(1.0, dtype=F64))
    assert (kept[mask == 0] == 0).all()


def test_explained_variance():
    returns, mask = _t([[1.0, 3.0, 2.0], [0.0, 5.0, -7.0]]), _right_padded_mask([3, 2], 3)
    assert explained_variance(returns, returns, mask) == pytest.approx(1.0)
    constant = torch.full_like(returns, masked_mean(returns, mask).item())
    assert explained_variance(constant, returns, mask) == pytest.approx(0.0, abs=1e-12)
    assert math.isnan(explained_variance(returns, torch.ones_like(returns), mask))


def test_entropy_of_uniform_logits_is_log_vocabulary():
    logits, mask = torch.zeros(2, 3, 11, dtype=F64), _right_padded_mask([3, 1], 3)
    torch.testing.assert_close(entropy_from_logits(logits, mask), torch.tensor(math.log(11), dtype=F64))


# ----- padding never matters -----

def _inputs(generator: torch.Generator) -> dict[str, torch.Tensor]:
    shape = (4, 5)
    names = ["logprobs", "old_logprobs", "ref_logprobs", "values", "old_values", "rewards", "advantages", "returns"]
    inputs = {name: torch.randn(*shape, generator=generator, dtype=F64) for name in names}
    inputs["logits"] = torch.randn(*shape, 7, generator=generator, dtype=F64)
    inputs["mask"] = _right_padded_mask([5, 1, 3, 4], 5)
    inputs["scores"] = torch.randn(4, generator=generator, dtype=F64)
    return inputs


def _garbled(inputs: dict[str, torch.Tensor], extra: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """The same inputs with `extra` padded columns appended and every padded position filled with garbage."""
    mask = torch.cat([inputs["mask"], torch.zeros(4, extra, dtype=F64)], dim=1)
    garbled = {"mask": mask, "scores": inputs["scores"]}
    for name, tensor in inputs.items():
        if name in garbled:
            continue
        padded = torch.cat([tensor, torch.zeros(4, extra, *tensor.shape[2:], dtype=F64)], dim=1)
        garbage = torch.randn(padded.shape, generator=generator, dtype=F64) * 1e3
        garbage[:, -1] = math.nan
        padding = (mask == 0).reshape(*mask.shape, *([1] * (padded.dim() - 2))).expand_as(padded)
        garbled[name] = torch.where(padding, garbage, padded)
    return garbled


PADDING_CASES = {
    "masked_mean": lambda x: masked_mean(x["values"], x["mask"]),
    "masked_mean_dim1": lambda x: masked_mean(x["values"], x["mask"], dim=1),
    "masked_var": lambda x: masked_var(x["values"], x["mask"]),
    "whiten": lambda x: whiten(x["values"], x["mask"]),
    "whiten_keep_mean": lambda x: whiten(x["rewards"], x["mask"], shift_mean=False),
    # per_token_kl takes no mask: it works token by token, so its real entries must not depend on padding.
    "per_token_kl_k1": lambda x: per_token_kl(x["logprobs"], x["ref_logprobs"], "k1")[x["mask"].bool()],
    "per_token_kl_k3": lambda x: per_token_kl(x["logprobs"], x["ref_logprobs"], "k3")[x["mask"].bool()],
    "token_rewards": lambda x: token_rewards(x["scores"], x["logprobs"], x["ref_logprobs"], x["mask"], 0.1),
    "token_rewards_k3": lambda x: token_rewards(x["scores"], x["logprobs"], x["ref_logprobs"], x["mask"], 0.1,
                                                estimator="k3"),
    "estimate_advantages": lambda x: estimate_advantages(x["values"], x["rewards"], x["mask"], 0.9, 0.8),
    "policy_loss": lambda x: policy_loss(x["logprobs"], x["old_logprobs"], x["advantages"], x["mask"]),
    "value_loss": lambda x: value_loss(x["values"], x["old_values"], x["returns"], x["mask"]),
    "explained_variance": lambda x: explained_variance(x["values"], x["returns"], x["mask"]),
    "entropy_from_logits": lambda x: entropy_from_logits(x["logits"], x["mask"]),
}


def _flat(output, width: int) -> list[float]:
    """Every number in an output, per-token tensors cut to the first `width` columns."""
    if isinstance(output, tuple):
        return [number for part in output for number in _flat(part, width)]
    if isinstance(output, dict):
        return [output[key] for key in sorted(output)]
    if isinstance(output, torch.Tensor):
        return (output[:, :width] if output.dim() >= 2 else output).detach().reshape(-1).tolist()
    return [output]


@pytest.mark.parametrize("name", PADDING_CASES)
def test_padding_never_changes_a_result(name: str):
    generator = torch.Generator().manual_seed(3)
    inputs = _inputs(generator)
    case = PADDING_CASES[name]
    clean = _flat(case(inputs), 5)
    padded_output = case(_garbled(inputs, extra=3, generator=generator))
    assert _flat(padded_output, 5) == pytest.approx(clean, rel=1e-12, abs=1e-12)
    per_token = [part for part in (padded_output if isinstance(padded_output, tuple) else (padded_output,))
                 if isinstance(part, torch.Tensor) and part.dim() == 2]
    assert all((part[:, 5:] == 0).all() for part in per_token)  # appended padding comes out as 0


def test_sequence_kl_sums_the_real_tokens_only():
    from tunelab.rlhf.ppo_math import sequence_kl

    logprobs = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, float("nan"), 7.0]], dtype=torch.float64)
    reference = torch.tensor([[-1.5, -1.0, -2.0], [-1.0, 3.0, 1.0]], dtype=torch.float64)
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(sequence_kl(logprobs, reference, mask), torch.tensor([-1.5, 0.5], dtype=torch.float64))

