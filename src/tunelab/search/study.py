"""The search's settings and its Optuna study: where trials are stored, how the next one is sampled, and how trials
interrupted by a killed process are found and run again.

Storage: a journal file in the search folder by default (Optuna's append-only log with file locks: safe for local
parallel workers, where SQLite fails with "database is locked", optuna #820 and #4994); a PostgreSQL or MySQL URL
for workers on several machines (with heartbeats, so a machine that dies has its trial retried by the others).
Sampler: TPE, multivariate and grouped (it models the parameters of each strategy family together, as the
define-by-run space is conditional), with the constant liar so parallel workers do not sample the same point;
multi-objective TPE when there are costs besides the quality.
"""

from __future__ import annotations

import os
import socket
import time
import warnings
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.storages import (
    BaseStorage,
    JournalStorage,
    RDBStorage,
    RetryHeartbeatStaleTrialCallback,
    fail_stale_trials,
)
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState
from pydantic import BaseModel, ConfigDict, Field

from tunelab.errors import TunelabError
from tunelab.runs import open_resumable
from tunelab.search.objectives import Objective, parse_objectives

SEARCH_FILE = "search.yaml"
RESULT_FILE = "search.json"
JOURNAL_FILE = "study.journal"
STUDY_NAME = "tunelab-search"
WORKER, INTERRUPTED, NAME = "worker", "interrupted", "name"  # trial user attributes
RETRIED = "retry_history"  # system attribute: the trials a database storage's stale-trial callback ran again
HEARTBEAT_S, GRACE_S = 30, 120
OPEN_ATTEMPTS = 3
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
SAMPLER = "TPE (multivariate, grouped by strategy family, constant liar)"

optuna.logging.set_verbosity(optuna.logging.WARNING)  # tunelab prints each trial itself


class SearchSpec(BaseModel):
    """What a search explores and optimises. `base` is the run config every trial shares (model, data, training)."""

    model_config = ConfigDict(extra="forbid")

    base: dict[str, Any] = Field(default_factory=dict)
    space: dict[str, dict[str, Any]]
    objectives: str = "accuracy,trainable-params"
    trials: int = Field(40, gt=0)
    eta: int = Field(3, ge=1, description="successive halving: the low rung trains on 1/eta of the rows; 1 is off")
    seed: int = 0
    reevaluate_seeds: list[int] = Field(default_factory=lambda: [1, 2, 3])
    hand_defaults: list[str] = Field(default_factory=lambda: ["lora", "ia3", "adapter", "prefix"])

    @property
    def parsed_objectives(self) -> list[Objective]:
        return parse_objectives(self.objectives)


def prepare_folder(folder: Path, spec: SearchSpec) -> None:
    """Create the search folder, or check that an existing one holds this very search (then it resumes)."""
    open_resumable(folder, SEARCH_FILE, spec.model_dump(), "configuration search")


def read_spec(folder: Path) -> SearchSpec:
    if not (folder / SEARCH_FILE).exists():
        raise TunelabError(f"{folder} is not a tunelab configuration search (no {SEARCH_FILE}); pass the --output of "
                           f"`tunelab search`")
    return SearchSpec.model_validate(yaml.safe_load((folder / SEARCH_FILE).read_text(encoding="utf-8")))


def check_storage(url: str | None) -> None:
    """Refuse a storage the search cannot share between workers, before anything is written."""
    if url is None:
        return
    if url.startswith("sqlite"):
        raise TunelabError("--storage: SQLite locks up under parallel workers (\"database is locked\"); leave "
                           "--storage out for a journal file in the search folder, or use postgresql://...")
    if not url.startswith(("postgresql", "mysql")):
        raise TunelabError(f"--storage {url!r}: give a database URL such as postgresql://user@host/db")


def open_storage(folder: Path, url: str | None) -> BaseStorage:
    """The journal file in `folder`, or the database at `url`."""
    check_storage(url)
    if url is None:
        return JournalStorage(JournalFileBackend(str(folder / JOURNAL_FILE)))
    for attempt in range(OPEN_ATTEMPTS):
        try:
            with warnings.catch_warnings():  # the retry callback is marked experimental; tunelab pins Optuna
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return RDBStorage(url, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
                                  heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=2))
        except Exception as error:  # the driver's own errors (missing, refused, bad password) differ by database
            if attempt + 1 == OPEN_ATTEMPTS:
                raise TunelabError(f"--storage: cannot open {url.split('@')[-1]}: "
                                   f"{str(error).splitlines()[0]}") from None
            time.sleep(1.0)  # machines starting together race to create the schema: the loser finds it made
    raise AssertionError("unreachable")


def open_study(storage: BaseStorage, spec: SearchSpec) -> optuna.Study:
    objectives = spec.parsed_objectives
    with warnings.catch_warnings():  # `group` and metric names are marked experimental; tunelab pins Optuna
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = optuna.samplers.TPESampler(seed=spec.seed, multivariate=True, group=True, constant_liar=True)
        study = optuna.create_study(study_name=STUDY_NAME, storage=storage, sampler=sampler, load_if_exists=True,
                                    directions=[objective.direction for objective in objectives])
        study.set_metric_names([objective.name for objective in objectives])
    study.set_user_attr("sampler", SAMPLER + (", multi-objective" if len(objectives) > 1 else ""))
    return study


def has_heartbeat(storage: BaseStorage) -> bool:
    """A database storage records each running trial's heartbeat; the journal file does not."""
    return isinstance(storage, BaseHeartbeat) and storage.get_heartbeat_interval() is not None


def retry_stale(study: optuna.Study) -> None:
    """Another machine's trial whose heartbeat stopped is failed, and queued again by the storage's callback."""
    if has_heartbeat(study._storage):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            fail_stale_trials(study)


def ask(study: optuna.Study) -> optuna.Trial:
    """The next trial, sampled or queued. Optuna warns that heartbeats are meant for `optimize`; tunelab's own
    loop records them (`trials._Heartbeat`), so the warning is not for us."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
        trial = study.ask()
    trial.set_user_attr(WORKER, worker_id())
    return trial


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_abandoned(trial: FrozenTrial) -> bool:
    """A running trial of this machine whose worker process is gone (killed, or the machine restarted)."""
    host, _, pid = str(trial.user_attrs.get(WORKER, "")).rpartition(":")
    return trial.state == TrialState.RUNNING and host == socket.gethostname() and pid.isdigit() and \
        (int(pid) == os.getpid() or not _alive(int(pid)))


def retry(study: optuna.Study, trial: FrozenTrial) -> None:
    """Mark an interrupted trial failed (not counted) and queue its parameters to run again."""
    storage = study._storage  # Optuna's public API finishes only trials this process asked for
    storage.set_trial_user_attr(trial._trial_id, INTERRUPTED, True)
    storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
    study.enqueue_trial(trial.params, user_attrs={NAME: trial_name(trial)}, skip_if_exists=False)


def trial_name(trial: FrozenTrial | optuna.Trial) -> str:
    """A trial's name, which its runs carry: t0007, kept by the trial that runs it again after an interruption (so
    the runs its first attempt finished are reused)."""
    return trial.user_attrs.get(NAME) or f"t{trial.number:04d}"


def recover_abandoned(study: optuna.Study) -> list[int]:
    """Retry every trial this machine's killed workers left running; the numbers of those trials."""
    abandoned = [trial for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                 if is_abandoned(trial)]
    for trial in abandoned:
        retry(study, trial)
    return [trial.number for trial in abandoned]


def counted(study: optuna.Study) -> int:
    """Trials that count towards --trials: finished, running, or failed for a reason of their own (a trial
    interrupted by a kill, or whose machine stopped beating, is not counted; its retry is)."""
    trials = study.get_trials(deepcopy=False)
    retried = {number for trial in trials for number in trial.system_attrs.get(RETRIED, [])}
    return sum(1 for trial in trials
               if trial.state in (*FINISHED, TrialState.RUNNING)
               or (trial.state == TrialState.FAIL and not trial.user_attrs.get(INTERRUPTED)
                   and trial.number not in retried))
