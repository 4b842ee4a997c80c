"""`tunelab search`: run the trials on K local workers, then re-evaluate the Pareto set beside the hand defaults and
write the result. The folder is locked while a search runs in it; a search killed at any moment (Ctrl-C, SIGKILL)
resumes when the same command runs again: finished trials are in the study, the interrupted ones run again, and
runs already on disk are kept."""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from transformers import AutoConfig

from tunelab.assets.models import resolve_model
from tunelab.compare.executors import LOCAL, Executor, ExecutorChoice, open_executor
from tunelab.config import build_config
from tunelab.errors import TunelabError
from tunelab.runs import write_json
from tunelab.search.objectives import COSTS, format_cost, parse_objectives, quality
from tunelab.search.reevaluate import dominance, hand_defaults, pareto_trials, summarise, train_candidates
from tunelab.search.space import check_space
from tunelab.search.study import (
    INTERRUPTED,
    NAME,
    RESULT_FILE,
    WORKER,
    SearchSpec,
    ask,
    check_storage,
    counted,
    open_storage,
    open_study,
    prepare_folder,
    recover_abandoned,
    retry,
    retry_stale,
    worker_id,
)
from tunelab.search.trials import (
    CONFIGS,
    LOGS,
    LOW_VALUES,
    PLAN,
    REASON,
    RUN,
    TRIALS,
    Scale,
    run_trial,
    trial_plan,
    write_scale,
)
from tunelab.strategies.catalog import entry
from tunelab.task_catalog import recipe_for

LOCK_FILE = ".search.lock"


def validate(spec: SearchSpec) -> None:
    """Refuse a bad search before the first trial: a bad base config, space, objective or hand default."""
    base = build_config(spec.base)
    parse_objectives(spec.objectives)
    check_space(spec.space)
    for name in [*spec.space, *spec.hand_defaults]:
        if not entry(name).serves(base.task):
            raise TunelabError(f"search: {name} does not apply to {base.task}: {entry(name).not_served[base.task]}")


@contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """One search process per folder: the lock goes with the process, even one killed with SIGKILL."""
    path = folder / LOCK_FILE
    with open(path, "a+", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            raise TunelabError(f"another tunelab search is running in {folder} (process {handle.read().strip()}); "
                               f"wait for it or stop it first") from None
        handle.truncate(0)
        handle.write(str(os.getpid()))
        handle.flush()
        yield


def training_rows(spec: SearchSpec) -> int:
    """The full rung's training rows (the training split, at most --limit-train). Reading the data once here also
    refuses a missing file, a wrong column or empty data before any trial starts."""
    config = build_config(spec.base)
    return len(recipe_for(config.task).prepare(config).splits.train)


def model_depth(spec: SearchSpec) -> int:
    """The base model's number of blocks, for the per-layer switches."""
    return AutoConfig.from_pretrained(resolve_model(build_config(spec.base).model).path).num_hidden_layers


def _trial_line(trial: FrozenTrial, spec: SearchSpec) -> str:
    """One finished trial as it prints: its name, plan and what it reached."""
    objectives = spec.parsed_objectives
    head = f"  {trial.user_attrs.get(NAME, trial.number)} "
    head += trial_plan(trial).describe() if PLAN in trial.user_attrs else "?"
    index = objectives.index(quality(objectives))
    if trial.state == TrialState.COMPLETE:
        costs = "".join(f", {objective.name} {format_cost(objective.name, value)}"
                        for objective, value in zip(objectives, trial.values, strict=True) if objective.is_cost)
        return f"{head}: {objectives[index].name} {trial.values[index]:.3f}{costs}"
    if trial.state == TrialState.PRUNED:
        return f"{head}: stopped at the low rung ({objectives[index].name} {trial.user_attrs[LOW_VALUES][index]:.3f})"
    return f"{head}: failed: {trial.user_attrs.get(REASON, 'interrupted')}"


@dataclass
class SearchResult:
    folder: Path
    result: dict[str, Any]


def _work(study: optuna.Study, folder: Path, spec: SearchSpec, scale: Scale, executor: Executor,
          asking: threading.Lock, stop: threading.Event, errors: list[BaseException]) -> None:
    """One worker: ask for a trial while fewer than --trials are counted, train it, tell; until done or stopped.
    What goes wrong outside a trial's own training (the storage, a bug) stops every worker and is raised."""
    try:
        while not stop.is_set():
            with asking:
                retry_stale(study)
                if counted(study) >= spec.trials:
                    return
                trial = ask(study)
            run_trial(study, trial, folder, spec, scale, executor)
    except Exception as error:
        if not stop.is_set():
            errors.append(error)
            stop.set()


def run_trials(study: optuna.Study, folder: Path, spec: SearchSpec, scale: Scale, workers: int, executor: Executor,
               console: Console, progress: bool) -> None:
    """The trials on `workers` threads, each training its trial's runs with `executor`."""
    printed = {trial.number for trial in study.get_trials(deepcopy=False) if trial.state.is_finished()}
    asking, stop, errors = threading.Lock(), threading.Event(), []
    threads = [threading.Thread(target=_work, args=(study, folder, spec, scale, executor, asking, stop, errors),
                                daemon=True) for _ in range(workers)]
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, disable=not progress) as bar:
        task = bar.add_task("trials", total=spec.trials)
        try:
            for thread in threads:
                thread.start()
            while any(thread.is_alive() for thread in threads):
                for thread in threads:
                    thread.join(timeout=1.0)
                for trial in study.get_trials(deepcopy=False):
                    if trial.state.is_finished() and trial.number not in printed and \
                            not trial.user_attrs.get(INTERRUPTED):
                        printed.add(trial.number)
                        bar.console.print(_trial_line(trial, spec), markup=False, highlight=False)
                bar.update(task, completed=counted(study) - _running(study))
            if errors:
                raise errors[0]
        except KeyboardInterrupt:
            stop.set()
            for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                if trial.user_attrs.get(WORKER) == worker_id():
                    retry(study, trial)
            finished = counted(study)
            raise TunelabError(f"interrupted with {finished} of {spec.trials} trials finished; run the same "
                               f"command again to resume") from None


def _running(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))


def run_search(folder: Path, spec: SearchSpec, console: Console, workers: int = 1, storage: str | None = None,
               progress: bool = True, executor: ExecutorChoice = LOCAL) -> SearchResult:
    """Run (or resume) the search in `folder` with `workers` trials at once, each run trained by `executor`,
    re-evaluate its Pareto set, and write `search.json`."""
    validate(spec)
    check_storage(storage)
    if workers < 1:
        raise TunelabError("--workers must be at least 1")
    scale = Scale(training_rows(spec), model_depth(spec))  # bad data fails here
    with open_executor(executor, workers) as running:
        if running.describe():
            console.print(running.describe(), highlight=False, markup=False)
        prepare_folder(folder, spec)
        for part in (TRIALS, CONFIGS, LOGS):
            (folder / part).mkdir(exist_ok=True)
        with folder_lock(folder):
            study = open_study(open_storage(folder, storage), spec)
            retried = recover_abandoned(study)
            if retried:
                console.print(f"resuming: trial(s) {', '.join(map(str, retried))} were interrupted and run again")
            write_scale(folder, scale)
            run_trials(study, folder, spec, scale, workers, running, console, progress)
            return SearchResult(folder, finish(study, folder, spec, scale, workers, running, console))


def finish(study: optuna.Study, folder: Path, spec: SearchSpec, scale: Scale, workers: int, executor: Executor,
           console: Console) -> dict[str, Any]:
    """Re-evaluate the Pareto set and the hand defaults on the seeds; the search's result, also in search.json."""
    objectives = spec.parsed_objectives
    front = pareto_trials(study, objectives)
    candidates = [*front, *hand_defaults(spec)] if spec.reevaluate_seeds else []
    if candidates:
        console.print(f"re-evaluating the Pareto set ({len(front)} configurations) and {len(spec.hand_defaults)} "
                      f"hand defaults on seeds {', '.join(map(str, spec.reevaluate_seeds))}")

    def done(name: str, reason: str) -> None:
        console.print(f"  {'failed ' + name + ': ' + reason if reason else 'done   ' + name}", markup=False,
                      highlight=False)

    runs = train_candidates(folder, spec, scale, candidates, workers, executor, done)
    rows = summarise(candidates, runs, objectives)
    trials = study.get_trials(deepcopy=False)
    result = {"objectives": [objective.name for objective in objectives], "sampler": study.user_attrs.get("sampler"),
              "rows": scale.rows, "eta": spec.eta,
              "trials": {state.name.lower(): sum(1 for trial in trials if trial.state == state
                                                 and not trial.user_attrs.get(INTERRUPTED))
                         for state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)},
              "interrupted": sum(1 for trial in trials if trial.user_attrs.get(INTERRUPTED)),
              "trials_wall_s": trials_wall_s(trials),
              "search_trials": [trial_record(trial) for trial in trials if trial.state.is_finished()],
              "pareto": [candidate.name for candidate in front], "evaluated": rows,
              "dominates": dominance(rows, quality(objectives).direction == "maximize"),
              "costs": {name: description for name, (_, description) in COSTS.items()}}
    write_json(folder / RESULT_FILE, result)
    return result


def trials_wall_s(trials: list[FrozenTrial]) -> float | None:
    """From the first trial's start to the last one's end (a resumed search counts its pauses too)."""
    starts = [trial.datetime_start for trial in trials if trial.datetime_start]
    ends = [trial.datetime_complete for trial in trials if trial.datetime_complete]
    return (max(ends) - min(starts)).total_seconds() if starts and ends else None


def trial_record(trial: FrozenTrial) -> dict[str, Any]:
    """A finished trial as the report shows it: plan, state, values (full rows) or low-rung values."""
    attrs = trial.user_attrs
    seconds = (trial.datetime_complete - trial.datetime_start).total_seconds() \
        if trial.datetime_complete and trial.datetime_start else None
    return {"number": trial.number, "name": attrs.get(NAME), "state": trial.state.name.lower(),
            "plan": attrs.get(PLAN), "run": attrs.get(RUN), "values": trial.values, "low_values": attrs.get(LOW_VALUES),
            "interrupted": bool(attrs.get(INTERRUPTED)), "reason": attrs.get(REASON), "seconds": seconds}
