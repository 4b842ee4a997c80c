"""PPO checkpoints: everything an interrupted run needs to go on exactly where it stopped (the trainable weights,
Adam's moments, the KL coefficient, the log so far, the random-number states that sampling draws from, and the SFT
policy's held-out samples drawn before training).

They live beside the run being written, in `.<name>.checkpoint/`, because a failed run's staging folder is removed;
the next `tunelab rlhf ppo` with the same settings, SFT run and reward run resumes from them, and a finished run
removes them.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from tunelab.errors import TunelabError
from tunelab.rlhf.evaluation import PolicySamples
from tunelab.rlhf.ppo import PolicyWithValue
from tunelab.rlhf.ppo_math import KLController

STATE_FILE = "state.pt"


def checkpoint_folder(output: Path) -> Path:
    return output.with_name(f".{output.name}.checkpoint")


def save_checkpoint(output: Path, identity: dict[str, Any], iteration: int, policy: PolicyWithValue,
                    optimizer: torch.optim.Optimizer, controller: KLController, history: list[dict[str, float]],
                    before: PolicySamples) -> None:
    """The state after `iteration` finished iterations, replaced atomically."""
    folder = checkpoint_folder(output)
    folder.mkdir(parents=True, exist_ok=True)
    state = {"identity": identity, "iteration": iteration, "kl_coef": controller.value, "history": history,
             "trainable": {name: p.detach().clone() for name, p in policy.named_parameters() if p.requires_grad},
             "optimizer": optimizer.state_dict(), "rng": torch.get_rng_state(), "before": asdict(before),
             "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}
    torch.save(state, folder / f"{STATE_FILE}.tmp")
    os.replace(folder / f"{STATE_FILE}.tmp", folder / STATE_FILE)


def restore_checkpoint(output: Path, identity: dict[str, Any], policy: PolicyWithValue,
                       optimizer: torch.optim.Optimizer, controller: KLController
                       ) -> tuple[int, list[dict[str, float]], PolicySamples] | None:
    """Load a checkpoint of this very run into the policy, optimizer and controller: (finished iterations, the log,
    the SFT policy's held-out samples); None when there is none."""
    path = checkpoint_folder(output) / STATE_FILE
    if not path.exists():
        return None
    state = torch.load(path, weights_only=False)
    if state["identity"] != identity:
        changed = ", ".join(key for key in identity if state["identity"].get(key) != identity[key])
        raise TunelabError(f"{path.parent} holds a checkpoint of a PPO run with other {changed}; repeat its "
                           f"settings to resume it, or delete the folder to start over")
    policy.load_state_dict(state["trainable"], strict=False)
    optimizer.load_state_dict(state["optimizer"])
    controller.value = state["kl_coef"]
    torch.set_rng_state(state["rng"])
    if state["rng_cuda"] is not None:
        torch.cuda.set_rng_state_all(state["rng_cuda"])
    return state["iteration"], state["history"], PolicySamples(**state["before"])


def remove_checkpoint(output: Path) -> None:
    shutil.rmtree(checkpoint_folder(output), ignore_errors=True)
