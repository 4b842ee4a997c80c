"""The search's answer, checked: the Pareto set of the trials (chosen on validation, one seed) trained again on the
full rows with fresh seeds and scored on the test split, beside each strategy's hand defaults on the same rows and
seeds; then, for each hand default, the configurations of the set that beat it beyond seed noise.

"Beyond noise" is a difference of means larger than twice its standard error over the seeds (about a 95%
interval): a configuration dominates a default when it is no worse beyond noise with fewer trainable parameters,
or better beyond noise with no more.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from tunelab.compare.executors import Executor
from tunelab.config import build_config
from tunelab.runs import METRICS_FILE, RESOURCES_FILE, read_json
from tunelab.search.objectives import COSTS, Objective, pareto_front, quality
from tunelab.search.space import TrialPlan
from tunelab.search.study import NAME, SearchSpec
from tunelab.search.trials import Scale, plan_config, train_plan, trial_plan

REEVALUATED = "reevaluated"
TRAINABLE = "trainable_parameters"


@dataclass(frozen=True)
class Candidate:
    name: str  # t0007 for a trial, default-lora for a hand default
    plan: TrialPlan
    is_default: bool
    trial: int | None = None
    validation: list[float] | None = None  # the trial's objective values in the search


def pareto_trials(study: optuna.Study, objectives: list[Objective]) -> list[Candidate]:
    """The complete trials no other complete trial dominates on the search's objectives; one per distinct plan."""
    complete = {trial.number: trial for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))}
    front = pareto_front({number: trial.values for number, trial in complete.items()}, objectives)
    seen, candidates = set(), []
    for number in front:
        plan = trial_plan(complete[number])
        key = repr(plan)
        if key not in seen:
            seen.add(key)
            candidates.append(Candidate(complete[number].user_attrs[NAME], plan, False, number,
                                        complete[number].values))
    return candidates


def hand_defaults(spec: SearchSpec) -> list[Candidate]:
    return [Candidate(f"default-{name}", TrialPlan(name), True) for name in spec.hand_defaults]


def _default_config(spec: SearchSpec, candidate: Candidate, rows: int, seed: int, output: Path) -> Any:
    """A hand default as `tunelab train` runs it: the strategy's own options, learning rate and epochs."""
    return build_config(spec.base, {"strategy.name": candidate.plan.strategy, "data.limit_train": rows,
                                    "training.seed": seed, "output": str(output)})


def train_candidates(folder: Path, spec: SearchSpec, scale: Scale, candidates: list[Candidate], workers: int,
                     executor: Executor, on_done: Callable[[str, str], None]) -> dict[str, list[Path]]:
    """Train every candidate on every re-evaluation seed, `workers` at once (runs already there are kept): their
    run folders by name.
    `on_done(run name, failure reason or "")` after each run."""
    jobs = []
    for candidate in candidates:
        for seed in spec.reevaluate_seeds:
            name = f"{candidate.name}-s{seed}"
            output = folder / REEVALUATED / name
            config = (_default_config(spec, candidate, scale.rows, seed, output) if candidate.is_default
                      else plan_config(spec, candidate.plan, scale.rows, scale.rows, seed, output))
            jobs.append((candidate.name, name, config))

    def train(job: tuple[str, str, Any]) -> tuple[str, Path, str]:
        candidate, name, config = job
        run, reason = train_plan(folder, name, config, executor)
        on_done(name, reason)
        return candidate, run, reason

    runs: dict[str, list[Path]] = {candidate.name: [] for candidate in candidates}
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for candidate, run, reason in pool.map(train, jobs):
            if not reason:
                runs[candidate].append(run)
    return runs


def _mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarise(candidates: list[Candidate], runs: dict[str, list[Path]],
              objectives: list[Objective]) -> list[dict[str, Any]]:
    """Per candidate: the test metric over seeds (mean, sd, each), trainable parameters and the search's costs."""
    metric = quality(objectives).metric_key
    rows = []
    for candidate in candidates:
        folders = runs.get(candidate.name, [])
        if not folders:
            continue
        scores = [float(read_json(run / METRICS_FILE)["test"][metric]) for run in folders]
        resources = [read_json(run / RESOURCES_FILE) for run in folders]
        mean, sd = _mean_sd(scores)
        costs = {name: statistics.fmean(float(r[field]) for r in resources) for name, (field, _) in COSTS.items()}
        rows.append({"name": candidate.name, "strategy": candidate.plan.strategy, "plan": candidate.plan.describe(),
                     "options": candidate.plan.options, "learning_rate": candidate.plan.learning_rate,
                     "hand_default": candidate.is_default, "trial": candidate.trial,
                     "search_values": candidate.validation, "test_metric": metric, "test_mean": mean,
                     "test_sd": sd, "test_scores": scores, "seeds": len(scores),
                     "trainable_share": statistics.fmean(r["trainable_share"] for r in resources), **costs})
    return rows


def noise(a: dict[str, Any], b: dict[str, Any]) -> float:
    """Twice the standard error of the difference of two means over seeds."""
    return 2 * math.sqrt(a["test_sd"] ** 2 / a["seeds"] + b["test_sd"] ** 2 / b["seeds"])


def dominance(rows: list[dict[str, Any]], higher_is_better: bool = True) -> dict[str, list[str]]:
    """For each hand default, the searched configurations that dominate it beyond noise (fewer trainable
    parameters and no worse, or more accurate and no more parameters)."""
    sign = 1 if higher_is_better else -1
    found = {}
    for default in (row for row in rows if row["hand_default"]):
        winners = []
        for row in (row for row in rows if not row["hand_default"]):
            gain, margin = sign * (row["test_mean"] - default["test_mean"]), noise(row, default)
            fewer, no_more = row["trainable-params"] < default["trainable-params"], \
                row["trainable-params"] <= default["trainable-params"]
            if (fewer and gain >= -margin) or (no_more and gain > margin):
                winners.append(row["name"])
        found[default["name"]] = winners
    return found
