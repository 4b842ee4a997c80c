"""PPO's training curves as a picture: reward, KL against its target, and the value head's explained variance per
iteration, which a person reads faster than 40 rows of numbers."""

from __future__ import annotations

import matplotlib.pyplot as plt

from tunelab.compare.plots import svg_text


def ppo_curves(history: list[dict[str, float]], target_kl: float | None) -> str:
    """SVG text of three panels over the iterations of one PPO run."""
    steps = range(1, len(history) + 1)
    figure, (reward, kl, variance) = plt.subplots(1, 3, figsize=(13, 3.6))
    reward.plot(steps, [row["reward"] for row in history], marker=".")
    reward.set(title="mean reward of the rollout", xlabel="iteration")
    kl.plot(steps, [row["kl"] for row in history], marker=".", label="KL to SFT")
    if target_kl is not None:
        kl.axhline(target_kl, color="grey", linestyle="--", label=f"target {target_kl:g}")
    kl.set(title="KL to the SFT policy (nats per response)", xlabel="iteration")
    kl.legend(fontsize=8)
    variance.plot(steps, [row["explained_variance"] for row in history], marker=".")
    variance.set(title="value head: explained variance", xlabel="iteration")
    for axes in (reward, kl, variance):
        axes.grid(alpha=0.3)
    return svg_text(figure)
