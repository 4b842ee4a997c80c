"""Direct preference optimisation (Rafailov et al. 2023) with TRL's `DPOTrainer`: the policy learns from preference
pairs directly, with no reward model and no sampling, under the loss -log σ(β·(Δ_chosen − Δ_rejected)), Δ being the
policy's log-probability gain over the reference.

The policy is a fresh LoRA on the merged SFT model (`rlhf/policy.py`), handed to TRL as a `peft_config`, so TRL's
reference is the adapter-disabled model, the SFT policy, with no second copy. The reference's log-probabilities never
change, so they are computed once before training (`precompute_ref_log_probs`) instead of at every step; under
torchrun at every step after all, since TRL caches them in a file each process names in its own temporary folder for
in-memory data, which the other processes then cannot find.

Pairs with an implicit prompt (two whole texts, as in the movie-sentiment preset) get the tokenizer's
beginning-of-text token as their prompt: TRL would otherwise take the texts' longest common prefix, which for two
unrelated snippets is a few stray characters or nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import datasets
import pandas as pd
import torch
from pydantic import BaseModel, ConfigDict, Field

from tunelab.config import Precision
from tunelab.errors import TunelabError
from tunelab.ranks import is_main, world_size
from tunelab.rlhf.policy import ADAPTER_FOLDER, POLICY_FILE, merged_sft, policy_lora, save_policy
from tunelab.runs import StagedRun
from tunelab.training.resume import CHECKPOINT_EVERY, Resume, prepare_resume, resumable
from tunelab.training.trainer import quiet_when_asked
from tunelab.training.trl_stage import (
    commit_stage,
    files_under,
    staged_on_main,
    train_stage,
    trl_quiet,
    trl_stage_settings,
)


class DPOSettings(BaseModel):
    """How a DPO policy trains; saved with the run."""

    model_config = ConfigDict(extra="forbid")

    data: str = "movie-sentiment"
    beta: float = Field(0.1, gt=0, description="strength of the pull towards the reference (the paper's default)")
    epochs: float = Field(1.0, gt=0)
    learning_rate: float = Field(5e-4, gt=0, description="the LoRA delta's peak learning rate")
    batch_size: int = Field(8, gt=0, description="pairs per step")
    max_length: int = Field(64, gt=0, description="tokens per prompt + answer")
    seed: int = 42
    precision: Precision = Field("auto", description="fp32, bf16 or fp16 autocast; auto: bf16 where the hardware "
                                                     "computes it natively")
    checkpoint_every: int | None = Field(None, gt=0, description=CHECKPOINT_EVERY)


def with_explicit_prompt(pairs: pd.DataFrame, tokenizer: Any) -> pd.DataFrame:
    """`prompt`, `chosen`, `rejected`: an implicit prompt becomes the beginning-of-text token (EOS where a tokenizer
    has no BOS, as GPT-style models separate documents with it)."""
    if "prompt" in pairs.columns:
        return pairs[["prompt", "chosen", "rejected"]]
    start = tokenizer.bos_token or tokenizer.eos_token
    if start is None:
        raise TunelabError("the pairs have no prompt column and the tokenizer has no BOS or EOS token to start them "
                           "with; add a prompt column")
    return pd.DataFrame({"prompt": start, "chosen": pairs["chosen"], "rejected": pairs["rejected"]})


def _held_out(trainer: Any) -> dict[str, float]:
    """DPO loss, and the share of pairs whose implicit reward ranks the chosen answer first, on the held-out pairs."""
    scores = trainer.evaluate()
    return {"loss": scores["eval_loss"], "preference_accuracy": scores["eval_rewards/accuracies"],
            "reward_margin": scores["eval_rewards/margins"]}


def train_dpo(settings: DPOSettings, sft_run: Path, train_pairs: pd.DataFrame, test_pairs: pd.DataFrame,
              output: Path, overwrite: bool = False, progress: bool = True, resume: Resume = "auto") -> dict[str, Any]:
    """Train a LoRA policy on `train_pairs` from the SFT run; held-out DPO loss and preference accuracy after; with
    `checkpoint_every`, resumable."""
    from trl import DPOConfig, DPOTrainer

    if train_pairs.empty or test_pairs.empty:
        raise TunelabError("DPO needs training and held-out preference pairs; the data has too few")
    staged = StagedRun(output, overwrite, marker=POLICY_FILE, kind="tunelab policy run",
                       resumable=resumable(settings.checkpoint_every))
    torch.manual_seed(settings.seed)
    model, tokenizer = merged_sft(sft_run)
    as_dataset = lambda pairs: datasets.Dataset.from_pandas(  # noqa: E731
        with_explicit_prompt(pairs, tokenizer).reset_index(drop=True))
    with staged_on_main(staged), trl_quiet(progress):
        if is_main() and settings.checkpoint_every:
            prepare_resume(staged, settings, train_pairs, resume)
        args = DPOConfig(beta=settings.beta, num_train_epochs=settings.epochs, learning_rate=settings.learning_rate,
                         max_length=settings.max_length, precompute_ref_log_probs=world_size() == 1,
                         seed=settings.seed,
                         logging_steps=25, **trl_stage_settings(staged.path, progress, settings.precision,
                                                                settings.batch_size, 32, settings.checkpoint_every))
        trainer = quiet_when_asked(DPOTrainer(model=model.backbone, args=args, processing_class=tokenizer,
                                              train_dataset=as_dataset(train_pairs),
                                              eval_dataset=as_dataset(test_pairs), peft_config=policy_lora()))
        timings, memory = train_stage(trainer, staged)
        metrics = {"test": {**_held_out(trainer), "pairs": len(test_pairs)}, "train_pairs": len(train_pairs)}
        if not is_main():  # under torchrun every process evaluates (together); the first one writes
            return metrics
        save_policy(staged.path, trainer.model, "dpo", sft_run, settings.model_dump())
        commit_stage(staged, trainer.model, metrics, timings, memory, files_under(staged.path / ADAPTER_FOLDER))
    return metrics
