"""One trial, start to end: its plan, its runs (the low rung, then the full rows if promoted), its verdict told to
the study. Every run is an ordinary run directory under `trials/`, trained by `tunelab train` in a process of its
own (as a `compare` cell is), so a crash costs one run and its memory is its own."""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from tunelab.compare.executors import Executor, Job
from tunelab.config import RunConfig, StrategyConfig, build_config, read_yaml
from tunelab.errors import TunelabError
from tunelab.runs import METRICS_FILE, read_json, write_json
from tunelab.search.fidelity import low_rows, promoted
from tunelab.search.objectives import Objective
from tunelab.search.space import TrialPlan, suggest
from tunelab.search.study import FINISHED, HEARTBEAT_S, NAME, SearchSpec, has_heartbeat, trial_name
from tunelab.strategies.registry import configure

TRIALS, CONFIGS, LOGS = "trials", "configs", "logs"
LOW_VALUES, RUN, PLAN, REASON = "low_values", "run", "plan", "reason"  # trial user attributes
SCALE_FILE = "scale.json"


@dataclass(frozen=True)
class Scale:
    """What every trial shares: the full training rows, the model's depth."""

    rows: int
    depth: int


def plan_config(spec: SearchSpec, plan: TrialPlan, rows: int, full_rows: int, seed: int, output: Path) -> RunConfig:
    """The run of a plan on `rows` training rows: the base config with the plan's strategy, options and learning
    rate, and the epochs `train` would give `full_rows` (the base's, else the strategy's raised to min_steps), so
    that the low rung makes 1/eta of the steps."""
    training = build_config(spec.base).training
    strategy = configure(StrategyConfig(name=plan.strategy, options=plan.options), training)
    epochs = training.epochs or strategy.budgeted(full_rows, training.batch_size, training.min_steps).epochs
    return build_config(spec.base, {"strategy.name": plan.strategy, "strategy.options": plan.options,
                                    "data.limit_train": rows, "training.seed": seed, "training.epochs": epochs,
                                    **({"training.learning_rate": plan.learning_rate} if plan.learning_rate else {}),
                                    "output": str(output)})


def train_plan(folder: Path, name: str, config: RunConfig, executor: Executor) -> tuple[Path, str]:
    """Train (or find already trained) one run: its folder and "" or the reason it failed."""
    output = Path(config.output)
    if (output / METRICS_FILE).exists():
        return output, ""
    job = Job(config, folder / CONFIGS / f"{name}.yaml", folder / LOGS / f"{name}.log")
    code, reason = executor.submit(job).result()
    return output, reason if code else ""


class _Heartbeat:
    """Tells a database storage the trial is alive while it trains, so other machines retry it only if not."""

    def __init__(self, study: optuna.Study, trial: optuna.Trial):
        self.storage, self.trial_id = study._storage, trial._trial_id
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self) -> None:
        while not self.stop.wait(HEARTBEAT_S):
            self.storage.record_heartbeat(self.trial_id)

    def __enter__(self) -> _Heartbeat:
        if has_heartbeat(self.storage):
            self.storage.record_heartbeat(self.trial_id)
            self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()


def low_rung(study: optuna.Study) -> dict[int, list[float]]:
    """The low-rung values of every trial that has them, by trial number."""
    return {trial.number: trial.user_attrs[LOW_VALUES] for trial in study.get_trials(deepcopy=False)
            if LOW_VALUES in trial.user_attrs and trial.state in (*FINISHED, TrialState.RUNNING)}


def run_trial(study: optuna.Study, trial: optuna.Trial, folder: Path, spec: SearchSpec, scale: Scale,
              executor: Executor) -> None:
    """Train the trial's plan on the low rung, and on the full rows if promoted; tell the study how it ended."""
    objectives: list[Objective] = spec.parsed_objectives
    plan = suggest(trial, spec.space, scale.depth)
    trial.set_user_attr(PLAN, {"strategy": plan.strategy, "options": plan.options,
                               "learning_rate": plan.learning_rate})
    rungs = [low_rows(scale.rows, spec.eta), scale.rows] if spec.eta > 1 else [scale.rows]
    name = trial_name(trial)
    trial.set_user_attr(NAME, name)
    with _Heartbeat(study, trial):
        for rows in rungs:
            run_name = f"{name}-n{rows}"
            config = plan_config(spec, plan, rows, scale.rows, spec.seed, folder / TRIALS / run_name)
            run, reason = train_plan(folder, run_name, config, executor)
            if reason:
                trial.set_user_attr(REASON, reason)
                study.tell(trial, state=TrialState.FAIL)
                return
            values = [objective.read(run) for objective in objectives]
            trial.set_user_attr(RUN, str(run))
            if rows != scale.rows:
                trial.set_user_attr(LOW_VALUES, values)
                if not promoted(trial.number, low_rung(study), objectives, spec.eta):
                    study.tell(trial, state=TrialState.PRUNED)
                    return
    study.tell(trial, values)


def trial_plan(trial: Any) -> TrialPlan:
    """The plan a finished trial trained, as it recorded it."""
    recorded = trial.user_attrs[PLAN]
    return TrialPlan(recorded["strategy"], recorded["options"], recorded["learning_rate"])


def write_scale(folder: Path, scale: Scale) -> None:
    write_json(folder / SCALE_FILE, asdict(scale))


def read_scale(folder: Path) -> Scale:
    if not (folder / SCALE_FILE).exists():
        raise TunelabError(f"{folder} holds no trial yet; run `tunelab search` with --output {folder} first")
    recorded = read_json(folder / SCALE_FILE)  # searches before the executors also kept their threads here
    return Scale(recorded["rows"], recorded["depth"])


def trial_config(folder: Path, trial: int, output: Path) -> RunConfig:
    """Trial `trial`'s run at the full rows: the config of its furthest rung, with the full rows and `output`."""
    configs = sorted((folder / CONFIGS).glob(f"t{trial:04d}-n*.yaml"), key=lambda path: int(path.stem.split("-n")[1]))
    if not configs:
        known = sorted({path.stem.split("-n")[0].lstrip("t0") or "0" for path in (folder / CONFIGS).glob("t*.yaml")},
                       key=int)
        raise TunelabError(f"{folder} has no trial {trial}; its trials are {', '.join(known) or 'none yet'}")
    return build_config(read_yaml(configs[-1]), {"data.limit_train": read_scale(folder).rows,
                                                 "output": str(output)})
