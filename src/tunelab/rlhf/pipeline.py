"""The whole RLHF pipeline on a preset, one command: SFT, the reward model, PPO from both, DPO from SFT beside it,
then every policy judged on the same held-out prompts (`evaluation.py`), with a report and PPO's training curves.

Each stage is an ordinary run under the pipeline's folder (`sft/`, `reward/`, `ppo/`, `dpo/`), usable on its own.
A stage whose run exists is finished (runs are committed atomically), so running the same command again resumes
after the last finished stage; the settings are kept in `pipeline.yaml` and resuming with others is refused.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from tunelab.config import Precision, build_config
from tunelab.errors import TunelabError
from tunelab.rlhf.data import SentimentPreset, load_movie_sentiment
from tunelab.rlhf.dpo import DPOSettings, train_dpo
from tunelab.rlhf.evaluation import evaluate_policies
from tunelab.rlhf.plots import ppo_curves
from tunelab.rlhf.ppo import PPOSettings
from tunelab.rlhf.ppo_train import train_ppo
from tunelab.rlhf.reward import RewardSettings, reward_function, train_reward_model
from tunelab.rlhf.sft import train_sft
from tunelab.runs import METRICS_FILE, open_resumable, read_json, write_json

PIPELINE_FILE = "pipeline.yaml"
REPORT_FILE = "report.json"
CURVES_FILE = "ppo_curves.svg"
TIMINGS_FILE = "seconds.json"  # per stage, kept across resumed invocations
PRESETS = ("movie-sentiment",)
STAGES = ("sft", "reward", "ppo", "dpo")


class PipelineSettings(BaseModel):
    """Every stage's settings; the defaults are sized so that the preset runs in well under 45 minutes on 2 CPU
    cores (measured in the README)."""

    model_config = ConfigDict(extra="forbid")

    preset: str = "movie-sentiment"
    policy_model: str = "smollm2"
    reward_model: str = "minilm"
    sft_examples: int = Field(1000, gt=0, description="training snippets for SFT (one epoch of LoRA)")
    sft_held_out: int = Field(256, gt=0)
    reward_pairs: int = Field(2000, gt=0, description="training pairs of the reward model")
    dpo_pairs: int = Field(1000, gt=0, description="training pairs of DPO (0.6 s a pair with SmolLM2 on 2 cores)")
    reward: RewardSettings = RewardSettings()
    ppo: PPOSettings = PPOSettings(target_kl=8.0)  # PPO's reward levelled off near 8 nats in the measured runs
    dpo: DPOSettings = DPOSettings()
    dpo_held_out: int = Field(200, gt=0, description="held-out pairs for DPO's loss and preference accuracy")
    judge_prompts: int = Field(256, gt=0, description="held-out prompts every policy answers")
    seed: int = 42
    precision: Precision = Field("auto", description="SFT's, the reward model's and DPO's (PPO computes in fp32)")


def _sft(settings: PipelineSettings, preset: SentimentPreset, output: Path, progress: bool) -> dict[str, Any]:
    config = build_config({"model": settings.policy_model, "task": "generation", "data": {"source": settings.preset},
                           "strategy": {"name": "lora"}, "output": str(output),
                           "training": {"epochs": 1, "batch_size": 8, "max_length": 64, "seed": settings.seed,
                                        "precision": settings.precision}})
    return train_sft(config, preset.sft.iloc[:settings.sft_examples], preset.sft_test.iloc[:settings.sft_held_out],
                     progress=progress)


def _reward(settings: PipelineSettings, preset: SentimentPreset, output: Path, progress: bool) -> dict[str, Any]:
    reward = settings.reward.model_copy(update={"model": settings.reward_model, "data": settings.preset,
                                                "precision": settings.precision})
    return train_reward_model(reward, preset.pairs_train.iloc[:settings.reward_pairs], preset.pairs_test, output,
                              progress=progress)


def _ppo(settings: PipelineSettings, preset: SentimentPreset, output: Path, progress: bool) -> dict[str, Any]:
    return train_ppo(settings.ppo, output.parent / "sft", output.parent / "reward",
                     preset.prompts_train["prompt"].tolist(), preset.prompts_test["prompt"][:32].tolist(), output,
                     progress=progress)


def _dpo(settings: PipelineSettings, preset: SentimentPreset, output: Path, progress: bool) -> dict[str, Any]:
    dpo = settings.dpo.model_copy(update={"precision": settings.precision})
    return train_dpo(dpo, output.parent / "sft", preset.pairs_train.iloc[:settings.dpo_pairs],
                     preset.pairs_test.iloc[:settings.dpo_held_out], output, progress=progress)


STAGE_RUNS: dict[str, Callable[[PipelineSettings, SentimentPreset, Path, bool], dict[str, Any]]] = {
    "sft": _sft, "reward": _reward, "ppo": _ppo, "dpo": _dpo}


def run_pipeline(settings: PipelineSettings, output: Path, progress: bool = True,
                 announce: Callable[[str], None] = print) -> dict[str, Any]:
    """Run (or resume) every stage, judge the policies, and write report.json; returns the report."""
    if settings.preset not in PRESETS:
        raise TunelabError(f"unknown preset '{settings.preset}'; presets: {', '.join(PRESETS)}")
    open_resumable(output, PIPELINE_FILE, settings.model_dump(exclude_defaults=True), "RLHF pipeline")
    preset = load_movie_sentiment()
    timings = output / TIMINGS_FILE
    stage_seconds: dict[str, float] = read_json(timings) if timings.exists() else {}
    for number, stage in enumerate(STAGES, start=1):
        if (output / stage / METRICS_FILE).exists():
            announce(f"[{number}/5] {stage}: finished earlier, kept")
            continue
        announce(f"[{number}/5] {stage}")
        start = time.perf_counter()
        STAGE_RUNS[stage](settings, preset, output / stage, progress)
        stage_seconds[stage] = round(time.perf_counter() - start, 1)
        write_json(timings, stage_seconds)
    announce("[5/5] judging SFT, PPO and DPO on the same held-out prompts")
    start = time.perf_counter()
    prompts = preset.prompts_test["prompt"][:settings.judge_prompts].tolist()
    judged = evaluate_policies(output / "sft", {"ppo": output / "ppo", "dpo": output / "dpo"},
                               reward_function(output / "reward"), prompts, settings.ppo.max_new_tokens,
                               settings.seed)
    stage_seconds["judge"] = round(time.perf_counter() - start, 1)
    report = {"policies": judged, "stages": {stage: read_json(output / stage / METRICS_FILE) for stage in STAGES},
              "seconds": stage_seconds, "target_kl": settings.ppo.target_kl}
    write_json(output / REPORT_FILE, report)
    (output / CURVES_FILE).write_text(ppo_curves(report["stages"]["ppo"]["iterations"], settings.ppo.target_kl),
                                      encoding="utf-8")
    return report
