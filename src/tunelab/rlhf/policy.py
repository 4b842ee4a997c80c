"""Policy runs, what PPO and DPO write: a LoRA delta trained on top of an SFT run whose own delta is merged into
the base. Disabling the LoRA gives back the SFT policy, the reference both methods hold the policy to (Ziegler et al.
2019; Rafailov et al. 2023), with no second copy of the model in memory.

A policy run holds `policy.yaml` (the stage, the SFT run, the stage's settings), the adapter, metrics.json and
resources.json; `load_policy` rebuilds it from the SFT run, so `tunelab generate` samples from any stage.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from peft import LoraConfig, PeftModel, get_peft_model

from tunelab.errors import TunelabError
from tunelab.recipes.runs import load_run
from tunelab.runs import verify_manifest, write_text_atomic
from tunelab.strategies.registry import get_strategy
from tunelab.tasks.generation import CausalLM

POLICY_FILE = "policy.yaml"
ADAPTER_FOLDER = "adapter"


@dataclass
class Policy:
    model: CausalLM  # the SFT model; its backbone carries the LoRA layers (what `generate` runs)
    lm: PeftModel  # the same weights behind PEFT's interface: `disable_adapter()` gives the SFT policy
    tokenizer: Any


def policy_lora(r: int = 8, alpha: int = 16) -> LoraConfig:
    """The policy's delta: LoRA on PEFT's default targets for the architecture; the base stays frozen."""
    return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0, task_type="CAUSAL_LM")


def merged_sft(sft_run: Path) -> tuple[CausalLM, Any]:
    """The SFT run's model with its delta folded into the base weights, and its tokenizer."""
    if not sft_run.exists():
        raise TunelabError(f"SFT run {sft_run} not found; pass the --output of `tunelab rlhf sft`")
    loaded = load_run(sft_run, "fp32")  # weights to merge and train on; a stage sets its own precision
    if loaded.config.task != "generation":
        raise TunelabError(f"{sft_run} is a {loaded.config.task} run; the policy starts from a causal LM "
                           f"(`tunelab rlhf sft`)")
    get_strategy(loaded.config.strategy.name).merge(loaded.model)
    return loaded.model, loaded.tokenizer


def policy_from_sft(sft_run: Path) -> Policy:
    """A fresh (zero) LoRA on the merged SFT model: the policy starts exactly at the SFT policy."""
    model, tokenizer = merged_sft(sft_run)
    return Policy(model, get_peft_model(model.backbone, policy_lora()), tokenizer)


def is_policy_run(run: Path) -> bool:
    return (run / POLICY_FILE).exists()


def save_policy(path: Path, lm: PeftModel, stage: str, sft_run: Path, settings: dict[str, Any]) -> None:
    """The adapter and policy.yaml; the SFT run is recorded as an absolute path, so the run loads from anywhere."""
    lm.save_pretrained(path / ADAPTER_FOLDER)
    write_text_atomic(path / POLICY_FILE, yaml.safe_dump(
        {"stage": stage, "sft_run": str(sft_run.resolve()), **settings}, sort_keys=False))


def read_policy_settings(run: Path) -> dict[str, Any]:
    if not is_policy_run(run):
        raise TunelabError(f"{run} is not a PPO or DPO run (no {POLICY_FILE}); pass the --output of "
                           f"`tunelab rlhf ppo` or `tunelab rlhf dpo`")
    return yaml.safe_load((run / POLICY_FILE).read_text(encoding="utf-8"))


def load_policy(run: Path) -> Policy:
    """A PPO or DPO run's policy: its SFT run, merged, with the run's adapter on top."""
    verify_manifest(run)
    sft_run = Path(read_policy_settings(run)["sft_run"])
    model, tokenizer = merged_sft(sft_run)
    lm = PeftModel.from_pretrained(model.backbone, run / ADAPTER_FOLDER)
    return Policy(model.eval(), lm.eval(), tokenizer)
