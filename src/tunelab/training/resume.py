"""Resuming an interrupted `train`: checkpoints every N optimizer steps (the Trainer's own: what trains, optimizer,
scheduler, RNG states and its log, with the data order a function of the seed and the epoch), kept in the staged run
with the settings they were written with, so that the same command picks up where a killed one stopped and ends
with the metrics an uninterrupted run would have had."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import yaml
from pydantic import BaseModel
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from tunelab.errors import TunelabError
from tunelab.runs import CHECKPOINTS, StagedRun, write_text_atomic

CHECKPOINT_EVERY = "a resumable checkpoint every N optimizer steps: a killed run resumes when run again"
Resume = Literal["auto", "require", "restart"]  # what `train` does with an interrupted run's checkpoints
RESUME_FILE = ".resume.yaml"  # in a staging folder: the settings and data its checkpoints were written with
TRAINER_STATE = "trainer_state.json"
# What a resumable checkpoint holds besides the trainable weights; the Trainer writes its state last.
RESUME_STATE = ("optimizer.pt", "scheduler.pt", TRAINER_STATE)
# Settings that change how often progress is kept, or how a batch is computed (in micro-batches that fit), not what
# is trained: a resume may change them (a run that ran out of memory resumes with --batch-size auto).
FREE_SETTINGS = ("checkpoint_every", "keep_checkpoints", "micro_batch_size")


class CheckpointEvery(TrainerCallback):
    """A resumable checkpoint every `steps` optimizer steps, beside the Trainer's checkpoint of each epoch; the loss
    is logged at every checkpoint too. The Trainer logs the mean loss since its last log, and a resumed run starts
    counting at its checkpoint, so a checkpoint must fall on a log for the resumed loss curve to be exact."""

    def __init__(self, steps: int):
        self.steps = steps

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                    **kwargs: Any) -> TrainerControl:
        if state.global_step % self.steps == 0:
            control.should_save = control.should_log = True
        return control

    def on_epoch_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                     **kwargs: Any) -> TrainerControl:
        control.should_log = True  # the epoch's own checkpoint follows
        return control


def _step(checkpoint: Path) -> int:
    return int(checkpoint.name.rpartition("-")[2])


def _complete(checkpoint: Path) -> bool:
    """Every file written and the state readable: a process killed while saving leaves a checkpoint without its
    state, or with half of it."""
    if not all((checkpoint / name).is_file() for name in RESUME_STATE):
        return False
    try:
        json.loads((checkpoint / TRAINER_STATE).read_text(encoding="utf-8"))
    except ValueError:
        return False
    return True


def latest_checkpoint(checkpoints: Path) -> Path | None:
    """The newest complete checkpoint in a Trainer's checkpoints folder, or None."""
    found = [path for path in checkpoints.glob("checkpoint-*") if path.name[11:].isdigit()]
    return max((path for path in found if _complete(path)), key=_step, default=None)


def checkpoint_step(run: Path) -> int | None:
    """The optimizer step a staged run would resume from, or None."""
    checkpoint = latest_checkpoint(run / CHECKPOINTS)
    return None if checkpoint is None else _step(checkpoint)


def has_checkpoint(run: Path) -> bool:
    """Whether a staged run holds training worth resuming."""
    return checkpoint_step(run) is not None


def _fingerprint(rows: pd.DataFrame) -> str:
    return hashlib.sha256(rows.to_json(orient="split", default_handler=str).encode("utf-8")).hexdigest()


def _flat(settings: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in settings.items():
        name = f"{prefix}{key}"
        flat.update(_flat(value, f"{name}.") if isinstance(value, dict) and value else {name: value})
    return flat


def _settings(settings: BaseModel, train: pd.DataFrame) -> dict[str, Any]:
    kept = {key: value for key, value in _flat(settings.model_dump(mode="json")).items()
            if key.rpartition(".")[2] not in FREE_SETTINGS}
    return {**kept, "training data": _fingerprint(train)}


def _check_settings(staged: StagedRun, settings: BaseModel, train: pd.DataFrame) -> None:
    """Refuse to resume checkpoints written with other settings or other training data, naming what differs."""
    stored_file = staged.path / RESUME_FILE
    stored = yaml.safe_load(stored_file.read_text(encoding="utf-8")) if stored_file.exists() else {}
    now = _settings(settings, train)
    changed = [key if key == "training data" else f"{key} ({stored.get(key)!r} then, {value!r} now)"
               for key, value in now.items() if stored.get(key) != value]
    if changed:
        raise TunelabError(f"{staged.final} has an interrupted run with other settings: {'; '.join(changed[:3])}"
                           f"{' ...' if len(changed) > 3 else ''}; repeat its settings to resume it, or pass "
                           f"--restart to discard it")


def resumable(checkpoint_every: int | None) -> Callable[[Path], bool] | None:
    """What a `StagedRun` keeps of an interrupted run: its checkpoints, when the run makes them."""
    return has_checkpoint if checkpoint_every else None


def prepare_resume(staged: StagedRun, settings: BaseModel, train: pd.DataFrame, resume: Resume,
                   say: Callable[[str], None] | None = None) -> None:
    """Before training with checkpoints: keep the staged run's checkpoints if they were written with these settings
    and this training data (refused otherwise, naming the difference), or discard them when asked; then record the
    settings for the next run to compare with."""
    if resume == "restart":
        staged.clear()
    elif staged.resumes():
        _check_settings(staged, settings, train)
        if say is not None:
            say(f"resuming the interrupted run from step {checkpoint_step(staged.path)}")
    elif resume == "require":
        raise TunelabError(f"there is no interrupted run of {staged.final} to resume; leave out --resume to start one")
    write_text_atomic(staged.path / RESUME_FILE, yaml.safe_dump(_settings(settings, train), sort_keys=True))


def interrupted(run: Path) -> str:
    """What a user hears when a run stops before its end: whether and how it resumes."""
    step = checkpoint_step(run)
    if step is None:
        return "interrupted; nothing was kept (pass --checkpoint-every N to make a long run resumable)"
    return f"interrupted; training is kept up to step {step}: the same command resumes it"
