"""The PPO recipe: policy from an SFT run, reward from a reward-model run, iterations over the training prompts,
held-out reward and KL before and after, and a run directory with the new LoRA delta and the value head."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
import yaml
from rich.progress import Progress
from safetensors.torch import save_file

from tunelab.rlhf.ppo import PPOSettings, evaluate_policy, policy_from_sft, ppo_iteration
from tunelab.rlhf.ppo_math import AdaptiveKLController, FixedKLController, KLController
from tunelab.rlhf.reward import load_reward_model, score_texts
from tunelab.runs import METRICS_FILE, RESOURCES_FILE, StagedRun, write_json, write_text_atomic
from tunelab.training.resources import PeakMemory

PPO_CONFIG_FILE = "ppo.yaml"


def kl_controller(settings: PPOSettings) -> KLController:
    if settings.target_kl is None:
        return FixedKLController(settings.init_kl_coef)
    return AdaptiveKLController(settings.init_kl_coef, settings.target_kl, settings.kl_horizon)


def train_ppo(settings: PPOSettings, sft_run: Path, reward_run: Path, prompts_train: list[str],
              prompts_test: list[str], output: Path, overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """`settings.iterations` PPO iterations of `rollout_size` training prompts each (in a seeded order, cycling)."""
    staged = StagedRun(output, overwrite, marker=PPO_CONFIG_FILE, kind="tunelab PPO run")
    torch.manual_seed(settings.seed)
    policy, tokenizer = policy_from_sft(sft_run)
    reward_model, reward_tokenizer, reward_settings = load_reward_model(reward_run)
    reward = lambda texts: torch.from_numpy(  # noqa: E731
        score_texts(reward_model, reward_tokenizer, texts, reward_settings.max_length))
    order = torch.randperm(len(prompts_train), generator=torch.Generator().manual_seed(settings.seed)).tolist()
    optimizer = torch.optim.Adam([p for p in policy.parameters() if p.requires_grad], lr=settings.learning_rate)
    controller = kl_controller(settings)
    with staged:
        before = evaluate_policy(policy, tokenizer, prompts_test, reward, settings)
        history, start = [], time.perf_counter()
        with PeakMemory() as memory, Progress(disable=not progress) as bar:
            task = bar.add_task("PPO", total=settings.iterations)
            for iteration in range(settings.iterations):
                batch = [prompts_train[order[(iteration * settings.rollout_size + k) % len(order)]]
                         for k in range(settings.rollout_size)]
                history.append(ppo_iteration(policy, optimizer, tokenizer, batch, reward, controller, settings))
                bar.update(task, advance=1, description=f"PPO reward {history[-1]['reward']:+.2f} "
                                                        f"KL {history[-1]['kl']:.2f}")
        train_s = time.perf_counter() - start
        after = evaluate_policy(policy, tokenizer, prompts_test, reward, settings)
        policy.lm.save_pretrained(staged.path / "adapter")
        save_file({name: tensor.contiguous() for name, tensor in policy.value_head.state_dict().items()},
                  str(staged.path / "value_head.safetensors"))
        write_text_atomic(staged.path / PPO_CONFIG_FILE, yaml.safe_dump(
            {"sft_run": str(sft_run), "reward_run": str(reward_run), **settings.model_dump()}, sort_keys=False))
        metrics = {"test": after, "sft_test": before, "iterations": history}
        write_json(staged.path / METRICS_FILE, metrics)
        write_json(staged.path / RESOURCES_FILE, {"train_s": round(train_s, 3), "peak_memory_bytes": memory.peak_bytes})
        staged.commit()
    return metrics
