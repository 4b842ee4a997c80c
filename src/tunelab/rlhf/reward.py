"""The reward model: a sequence-classification backbone with one output, trained on preference pairs with TRL's
`RewardTrainer` (the Bradley-Terry loss -log σ(r_chosen − r_rejected); Ouyang et al. 2022), and judged by its
pairwise accuracy on held-out pairs: the share of pairs where the chosen text scores higher.

Pairs are tokenised here (TRL accepts `chosen_ids` / `rejected_ids`): TRL would append the tokenizer's EOS token as
text, which an encoder such as MiniLM does not have, and its own [SEP] already ends each sequence.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pandas as pd
import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field
from transformers import AutoModelForSequenceClassification, AutoTokenizer, PreTrainedModel

from tunelab.assets.models import resolve_model
from tunelab.batching import length_ordered_batches
from tunelab.config import Precision
from tunelab.errors import TunelabError
from tunelab.modeling import load_tokenizer
from tunelab.ranks import is_main
from tunelab.runs import StagedRun, verify_manifest, write_text_atomic
from tunelab.training.resume import CHECKPOINT_EVERY, Resume, prepare_resume, resumable
from tunelab.training.trainer import best_device, quiet_when_asked
from tunelab.training.trl_stage import (
    commit_stage,
    files_under,
    staged_on_main,
    train_stage,
    trl_quiet,
    trl_stage_settings,
)

REWARD_CONFIG_FILE = "reward.yaml"
MODEL_FOLDER = "model"


class RewardSettings(BaseModel):
    """How a reward model trains; saved with the run."""

    model_config = ConfigDict(extra="forbid")

    model: str = "minilm"
    data: str = "movie-sentiment"  # the preset, or a preference file
    epochs: float = Field(2.0, gt=0)
    learning_rate: float = Field(3e-5, gt=0)
    batch_size: int = Field(16, gt=0, description="pairs per step: twice as many sequences")
    max_length: int = Field(128, gt=0)
    seed: int = 42
    precision: Precision = Field("auto", description="fp32, bf16 or fp16 autocast; auto: bf16 where the hardware "
                                                     "computes it natively")
    checkpoint_every: int | None = Field(None, gt=0, description=CHECKPOINT_EVERY)


def pair_texts(pairs: pd.DataFrame) -> tuple[list[str], list[str]]:
    """The full texts the reward model reads: an explicit prompt is put before each answer."""
    prompt = pairs["prompt"] if "prompt" in pairs.columns else ""
    return (prompt + pairs["chosen"]).tolist(), (prompt + pairs["rejected"]).tolist()


def tokenize_pairs(pairs: pd.DataFrame, tokenizer: Any, max_length: int) -> datasets.Dataset:
    chosen, rejected = pair_texts(pairs)
    encode = lambda texts: tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]  # noqa: E731
    return datasets.Dataset.from_dict({"chosen_ids": encode(chosen), "rejected_ids": encode(rejected)})


@torch.no_grad()
def score_texts(model: PreTrainedModel, tokenizer: Any, texts: list[str], max_length: int,
                batch_size: int = 64) -> np.ndarray:
    """(N,) rewards, scored in batches of similar length and returned in the texts' order."""
    model.eval()
    scores = np.empty(len(texts), dtype=np.float32)
    for chunk in length_ordered_batches([len(text) for text in texts], batch_size):
        batch = tokenizer([texts[i] for i in chunk], truncation=True, max_length=max_length, padding=True,
                          return_tensors="pt").to(model.device)
        scores[chunk] = model(**batch).logits[:, 0].float().cpu().numpy()
    return scores


def pairwise_accuracy(model: PreTrainedModel, tokenizer: Any, pairs: pd.DataFrame, max_length: int) -> dict[str, Any]:
    """The share of pairs whose chosen text outscores the rejected one, the mean reward margin, and the
    Bradley-Terry loss the model was trained to lower, -log σ(margin)."""
    chosen, rejected = pair_texts(pairs)
    margin = score_texts(model, tokenizer, chosen, max_length) - score_texts(model, tokenizer, rejected, max_length)
    loss = float(torch.nn.functional.softplus(-torch.from_numpy(margin)).mean())  # -log σ(m) = softplus(-m)
    return {"pairwise_accuracy": float((margin > 0).mean()), "mean_margin": float(margin.mean()), "loss": loss,
            "pairs": len(pairs)}


def load_reward_backbone(name: str) -> tuple[PreTrainedModel, Any]:
    """Any sequence-classification backbone with a single output (a new head on top of the pre-trained model)."""
    spec = resolve_model(name)
    tokenizer = load_tokenizer(spec)
    model = AutoModelForSequenceClassification.from_pretrained(spec.path, num_labels=1, dtype=torch.float32)
    model.config.pad_token_id = tokenizer.pad_token_id  # causal backbones score the last non-pad token
    return model, tokenizer


def train_reward_model(settings: RewardSettings, train_pairs: pd.DataFrame, test_pairs: pd.DataFrame, output: Path,
                       overwrite: bool = False, progress: bool = True, resume: Resume = "auto") -> dict[str, Any]:
    """Train on `train_pairs`, score `test_pairs`, and write the run: reward.yaml, metrics.json,
    resources.json and the model (a plain transformers folder); with `checkpoint_every`, resumable."""
    from trl import RewardConfig, RewardTrainer

    if train_pairs.empty or test_pairs.empty:
        raise TunelabError("the reward model needs training and held-out preference pairs; the data has too few")
    staged = StagedRun(output, overwrite, marker=REWARD_CONFIG_FILE, kind="tunelab reward model run",
                       resumable=resumable(settings.checkpoint_every))
    torch.manual_seed(settings.seed)
    model, tokenizer = load_reward_backbone(settings.model)
    with staged_on_main(staged), trl_quiet(progress):
        if is_main() and settings.checkpoint_every:
            prepare_resume(staged, settings, train_pairs, resume)
        args = RewardConfig(num_train_epochs=settings.epochs, learning_rate=settings.learning_rate,
                            max_length=settings.max_length, seed=settings.seed, logging_steps=50,
                            **trl_stage_settings(staged.path, progress, settings.precision, settings.batch_size,
                                                 checkpoint_every=settings.checkpoint_every))
        trainer = quiet_when_asked(RewardTrainer(model=model, args=args, processing_class=tokenizer,
                                                 train_dataset=tokenize_pairs(train_pairs, tokenizer,
                                                                              settings.max_length)))
        base = pairwise_accuracy(model, tokenizer, test_pairs, settings.max_length) if is_main() else {}
        timings, memory = train_stage(trainer, staged)
        if not is_main():  # under torchrun the first process scores and writes
            return {}
        metrics = {"test": pairwise_accuracy(model, tokenizer, test_pairs, settings.max_length),
                   "untrained_test": base, "train_pairs": len(train_pairs)}
        model.save_pretrained(staged.path / MODEL_FOLDER)
        tokenizer.save_pretrained(staged.path / MODEL_FOLDER)
        write_text_atomic(staged.path / REWARD_CONFIG_FILE, yaml.safe_dump(settings.model_dump(), sort_keys=False))
        commit_stage(staged, model, metrics, timings, memory, files_under(staged.path / MODEL_FOLDER))
    return metrics


def require_reward_run(run: Path) -> None:
    if not (run / REWARD_CONFIG_FILE).exists():
        raise TunelabError(f"{run} is not a reward model run (no {REWARD_CONFIG_FILE}); pass the --output of "
                           f"`tunelab rlhf reward`")


def reward_function(run: Path) -> Callable[[list[str]], torch.Tensor]:
    """The reward model of a run as a function of texts, for the policies that learn from it or are judged by it."""
    model, tokenizer, settings = load_reward_model(run)
    model.to(best_device())
    return lambda texts: torch.from_numpy(score_texts(model, tokenizer, texts, settings.max_length))


def load_reward_model(run: Path) -> tuple[PreTrainedModel, Any, RewardSettings]:
    """A trained reward model, its tokenizer and settings, from its run directory."""
    require_reward_run(run)
    verify_manifest(run)
    settings = RewardSettings.model_validate(yaml.safe_load((run / REWARD_CONFIG_FILE).read_text(encoding="utf-8")))
    model = AutoModelForSequenceClassification.from_pretrained(run / MODEL_FOLDER, dtype=torch.float32)
    return model.eval(), AutoTokenizer.from_pretrained(run / MODEL_FOLDER), settings
