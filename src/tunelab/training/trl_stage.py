"""What the RLHF stages share: the TRL stages' (SFT, reward model, DPO) trainer settings, quiet progress and timed
training, and for every stage (PPO too) a commit with the same resources.json as every other run. Under torchrun the
TRL stages train in every process (DDP, each on its share of the global batch) and the first process alone writes."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any

import datasets
import torch
from torch import nn

from tunelab.config import Precision
from tunelab.precision import resolve_precision, trainer_flags
from tunelab.ranks import is_main, per_process, world_size
from tunelab.resources import PeakMemory, run_resources
from tunelab.runs import CHECKPOINTS, METRICS_FILE, RESOURCES_FILE, StagedRun, write_json
from tunelab.training.resume import RESUME_FILE, latest_checkpoint

TRL_SCRATCH = CHECKPOINTS  # TRL's output_dir: resumable checkpoints, if any; a stage removes it before committing


def trl_stage_settings(run_path: Path, progress: bool, precision: Precision, batch_size: int,
                       eval_batch_size: int | None = None, checkpoint_every: int | None = None) -> dict[str, Any]:
    """The config fields every TRL stage (SFT, reward model, DPO) shares: no evaluation during training (each stage
    evaluates before and after itself), resumable checkpoints only every `checkpoint_every` steps, no reporting, bars
    as asked, and the stage's precision resolved for the hardware: TRL's configs default to bf16 and gradient
    checkpointing, and on a CPU without native bf16 neither helps a small model. The batch sizes are global: under
    torchrun each process takes its share."""
    gpu = torch.cuda.is_available()
    batches = {"per_device_train_batch_size": per_process(batch_size, "--batch-size")}
    if eval_batch_size is not None:
        batches["per_device_eval_batch_size"] = max(1, eval_batch_size // world_size())
    saving = {"save_strategy": "steps", "save_steps": checkpoint_every, "save_total_limit": 1} if checkpoint_every \
        else {"save_strategy": "no"}
    return {"output_dir": str(run_path / TRL_SCRATCH), **saving, "eval_strategy": "no",
            "report_to": "none", "disable_tqdm": not progress, **trainer_flags(resolve_precision(precision)),
            "gradient_checkpointing": gpu, "dataloader_pin_memory": gpu, **batches}


def staged_on_main(staged: StagedRun) -> AbstractContextManager:
    """The staged folder, entered by the first process alone: under torchrun the others train and write nothing."""
    return staged if is_main() else nullcontext(staged)


@contextmanager
def trl_quiet(progress: bool) -> Iterator[None]:
    """Without progress, also silence the bars TRL draws outside the Trainer: the datasets library's passes over
    the data and the reference log-probabilities DPO precomputes (which only TQDM_DISABLE turns off)."""
    if progress:
        yield
        return
    datasets.disable_progress_bars()
    before = os.environ.get("TQDM_DISABLE")
    os.environ["TQDM_DISABLE"] = "1"
    try:
        yield
    finally:  # the user's own setting, or none, as it was
        if before is None:
            os.environ.pop("TQDM_DISABLE", None)
        else:
            os.environ["TQDM_DISABLE"] = before


def train_stage(trainer: Any, staged: StagedRun) -> tuple[dict[str, float], PeakMemory]:
    """Train a TRL trainer, timed and its peak memory measured, from the newest checkpoint an interrupted run of it
    left (kept only with checkpoints on); then its checkpoints go."""
    resume = latest_checkpoint(staged.path / TRL_SCRATCH)
    start = time.perf_counter()
    with PeakMemory() as memory:
        trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    timings = {"train_s": time.perf_counter() - start}
    if is_main():
        shutil.rmtree(staged.path / TRL_SCRATCH, ignore_errors=True)
    return timings, memory


def files_under(folder: Path) -> list[Path]:
    return [path for path in folder.rglob("*") if path.is_file()]


def commit_stage(staged: StagedRun, model: nn.Module, metrics: dict[str, Any], timings: dict[str, float],
                 memory: PeakMemory, delta_files: list[Path], **facts: Any) -> dict[str, Any]:
    """Write a stage's metrics and costs (the schema of every run; no latency, which a stage does not measure) and
    rename its staged folder into place; returns the costs."""
    resources = {**run_resources(model, timings, memory, delta_files, None), **facts}
    (staged.path / RESUME_FILE).unlink(missing_ok=True)
    write_json(staged.path / METRICS_FILE, metrics)
    write_json(staged.path / RESOURCES_FILE, resources)
    staged.commit()
    return resources
