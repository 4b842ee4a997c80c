"""The PPO recipe: policy from an SFT run, reward from a reward-model run, iterations over the training prompts with
checkpoints, the held-out prompts judged before and after, and a policy run with the new LoRA delta and the value
head."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from rich.progress import Progress
from safetensors.torch import save_file

from tunelab.resources import PeakMemory
from tunelab.rlhf.evaluation import SFT, judge, sample_policy
from tunelab.rlhf.policy import ADAPTER_FOLDER, POLICY_FILE, policy_from_sft, save_policy
from tunelab.rlhf.ppo import PolicyWithValue, PPOSettings, ppo_iteration, ppo_optimizer
from tunelab.rlhf.ppo_checkpoint import remove_checkpoint, restore_checkpoint, save_checkpoint
from tunelab.rlhf.ppo_math import AdaptiveKLController, FixedKLController, KLController
from tunelab.rlhf.reward import reward_function
from tunelab.runs import StagedRun
from tunelab.training.trainer import best_device
from tunelab.training.trl_stage import commit_stage, files_under

VALUE_HEAD_FILE = "value_head.safetensors"


def kl_controller(settings: PPOSettings) -> KLController:
    if settings.target_kl is None:
        return FixedKLController(settings.init_kl_coef)
    return AdaptiveKLController(settings.init_kl_coef, settings.target_kl, settings.kl_horizon, settings.min_kl_coef)


def train_ppo(settings: PPOSettings, sft_run: Path, reward_run: Path, prompts_train: list[str],
              prompts_test: list[str], output: Path, overwrite: bool = False, progress: bool = True,
              announce: Callable[[str], None] = print) -> dict[str, Any]:
    """`settings.iterations` PPO iterations of `rollout_size` training prompts each (in a seeded order, cycling);
    the held-out prompts are judged for the SFT policy and the PPO policy with the same sampling seed. A checkpoint
    every `checkpoint_every` iterations lets the same call resume after an interruption."""
    staged = StagedRun(output, overwrite, marker=POLICY_FILE, kind="tunelab policy run")
    torch.manual_seed(settings.seed)
    start = policy_from_sft(sft_run)
    policy, tokenizer = PolicyWithValue(start.lm).to(best_device()), start.tokenizer
    reward = reward_function(reward_run)
    order = torch.randperm(len(prompts_train), generator=torch.Generator().manual_seed(settings.seed)).tolist()
    optimizer = ppo_optimizer(policy, settings)
    controller = kl_controller(settings)
    identity = {"sft_run": str(sft_run.resolve()), "reward_run": str(reward_run.resolve()),
                "prompts": len(prompts_train), **settings.model_dump()}
    held_out = lambda adapter: sample_policy(policy.lm, tokenizer, prompts_test,  # noqa: E731
                                             settings.max_new_tokens, settings.seed, adapter)
    with staged:
        resumed = restore_checkpoint(output, identity, policy, optimizer, controller)
        if resumed is None:
            done, history, before = 0, [], held_out(False)
        else:
            done, history, before = resumed
            announce(f"resuming PPO from its checkpoint after iteration {done}")
        start_time = time.perf_counter()
        with PeakMemory() as memory, Progress(disable=not progress) as bar:
            task = bar.add_task("PPO", total=settings.iterations, completed=done)
            for iteration in range(done, settings.iterations):
                batch = [prompts_train[order[(iteration * settings.rollout_size + k) % len(order)]]
                         for k in range(settings.rollout_size)]
                history.append(ppo_iteration(policy, optimizer, tokenizer, batch, reward, controller, settings))
                said = f"PPO reward {history[-1]['reward']:+.2f} KL {history[-1]['kl']:.2f}"
                bar.update(task, advance=1, description=said)
                if progress and not bar.console.is_terminal:  # a log (nohup, CI): a bar draws nothing there
                    announce(f"iteration {iteration + 1}/{settings.iterations}: {said}")
                if (iteration + 1) % settings.checkpoint_every == 0 and iteration + 1 < settings.iterations:
                    save_checkpoint(output, identity, iteration + 1, policy, optimizer, controller, history, before)
        train_s = time.perf_counter() - start_time
        judged = judge({SFT: before, "ppo": held_out(True)}, reward)
        save_policy(staged.path, policy.lm, "ppo", sft_run, {"reward_run": str(reward_run.resolve()),
                                                             **settings.model_dump()})
        save_file({name: tensor.contiguous() for name, tensor in policy.value_head.state_dict().items()},
                  str(staged.path / VALUE_HEAD_FILE))
        metrics = {"test": judged["ppo"], "sft_test": judged[SFT], "iterations": history}
        commit_stage(staged, policy, metrics, {"train_s": train_s}, memory,
                     [*files_under(staged.path / ADAPTER_FOLDER), staged.path / VALUE_HEAD_FILE],
                     resumed_at_iteration=done)
    remove_checkpoint(output)
    return metrics
