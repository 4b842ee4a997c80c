"""`tunelab compose merge`: several runs' LoRA or (IA)^3 deltas merged into one delta on their shared base model,
each task keeping its own head (and label map); written as a bundle and scored task by task.

Every task folder of the merged bundle is an ordinary run directory whose delta is the merged one, so `predict`,
`eval` and `summary` read it as they read any run. Its `metrics.json` holds the merged model's test scores, the
source run's (`single_task`) and those of the base model with only the task's head (`base_and_head`): what merging
kept of what each run learnt, and what the task's head alone already knew.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from peft import set_peft_model_state_dict

from tunelab.compose.bundle import BUNDLE_FILE, TASKS, Bundle, named_runs, shared_base, write_bundle_file
from tunelab.compose.task_vectors import (
    IA3,
    PEFT_PREFIX,
    MergeMethod,
    concatenate,
    factorise,
    lora_adapter,
    merge_vectors,
    read_ia3,
    read_lora,
)
from tunelab.config import Precision, RunConfig, StrategyConfig
from tunelab.errors import TunelabError
from tunelab.precision import in_precision, resolve_precision
from tunelab.recipes.runs import LoadedRun
from tunelab.runs import (
    CHECKPOINTS,
    MANIFEST_FILE,
    METRICS_FILE,
    RESOURCES_FILE,
    StagedRun,
    read_json,
    read_run_config,
    write_json,
    write_run,
)
from tunelab.strategies.base import DELTA_FILE, load_tensors
from tunelab.strategies.catalog import TASK_VECTORS, entry
from tunelab.strategies.peft_adapter import ADAPTER_DIR, HEAD
from tunelab.strategies.registry import configure
from tunelab.task_catalog import recipe_for


@dataclass(frozen=True)
class MergedDelta:
    """The merged adapter's tensors (PEFT's saved names), the strategy options that rebuild it, and how far the
    rank budget cut the merged update (relative Frobenius error; 0 for (IA)^3 and cat)."""

    tensors: dict[str, torch.Tensor]
    options: dict[str, Any]
    error: float


def merge_lora(adapters: list[Path], method: MergeMethod, rank: int | None) -> MergedDelta:
    """LoRA: `cat` stacks the factors (exact, rank = the sum of ranks); every other method merges the dense
    updates and factorises the result by SVD to `rank` (default: the sum of the sources' ranks, which keeps a
    linear merge exact)."""
    deltas = [read_lora(adapter) for adapter in adapters]
    budget = rank or sum(delta.rank for delta in deltas)
    if method.name == "cat":
        if rank is not None:
            raise TunelabError("cat keeps every source's factors (rank = the sum of their ranks); --rank applies to "
                               "the methods that factorise")
        factors, error = concatenate(deltas, method.source_weights(len(deltas))), 0.0
    else:
        merged = merge_vectors([delta.vectors() for delta in deltas], method)
        factorised = {module: factorise(update, budget) for module, update in merged.items()}
        factors = {module: (up, down) for module, (up, down, _) in factorised.items()}
        missed = sum(missed for _, _, missed in factorised.values())
        total = sum(float(update.square().sum()) for update in merged.values())
        error = (missed / total) ** 0.5 if total else 0.0
    return MergedDelta(*lora_adapter(factors, budget), error)


def merge_ia3(adapters: list[Path], method: MergeMethod, rank: int | None) -> MergedDelta:
    """(IA)^3: the merged scaling vectors are one plus the merged task vectors."""
    if rank is not None:
        raise TunelabError("--rank is the merged LoRA's rank; ia3 vectors have none")
    if method.name == "cat":
        raise TunelabError("cat concatenates LoRA factors; ia3 runs merge with linear, task-arithmetic, ties, "
                           "dare-linear or dare-ties")
    merged = merge_vectors([read_ia3(adapter) for adapter in adapters], method)
    tensors = {PEFT_PREFIX + module + IA3: (1 + vector).contiguous() for module, vector in merged.items()}
    # PEFT stores a vector scaling a layer's input (a feed-forward target) as (1, in), one scaling its output (out, 1)
    feedforward = sorted(module for module, vector in merged.items() if vector.shape[0] == 1)
    return MergedDelta(tensors, {"target_modules": sorted(merged), "feedforward_modules": feedforward}, 0.0)


MERGERS = {"lora": merge_lora, "ia3": merge_ia3}  # by the catalog's `delta`, one of TASK_VECTORS


def check_mergeable(runs: dict[str, Path], configs: dict[str, RunConfig]) -> str:
    """The task-vector kind (lora or ia3) of the one strategy every run was trained with."""
    if len(runs) < 2:
        raise TunelabError("merging needs at least two runs; `compose bundle` puts a single run in a bundle")
    for name, config in configs.items():
        if entry(config.strategy.name).delta not in TASK_VECTORS:
            raise TunelabError(f"{runs[name]} was trained with {config.strategy.name}, which leaves no weight update "
                               f"to merge: merge takes lora or ia3 runs (`compose bundle` holds any strategy)")
    strategies = {config.strategy.name for config in configs.values()}
    if len(strategies) > 1:
        raise TunelabError(f"the runs mix {' and '.join(sorted(strategies))}: merge runs of one strategy, or bundle "
                           f"them with `compose bundle`")
    forms = {config.task == "generation" for config in configs.values()}
    if len(forms) > 1:
        raise TunelabError("a generation run adapts the language model and a head-based run the encoder under its "
                           "head: merge runs of one kind")
    return entry(strategies.pop()).delta


def headline(task: str, metrics: dict[str, Any]) -> float | None:
    """The score a task keeps its best epoch on, where higher is better (not a loss)."""
    key = recipe_for(task).best_metric
    return None if key == "loss" else metrics.get(key)


def _merged_task(name: str, run: Path, config: RunConfig, delta: MergedDelta, folder: Path, limit: int | None,
                 precision: Precision) -> dict[str, Any]:
    """Write one task of the merged bundle (the run with the merged delta and its own head) and score it: merged,
    and with the delta switched off (the base model and the task's head)."""
    config = config.model_copy(update={"strategy": StrategyConfig(name=config.strategy.name, options=delta.options)})
    recipe, strategy = recipe_for(config.task), configure(config.strategy, config.training)
    targets = recipe.load_targets(run)
    model, tokenizer = recipe.build(config, strategy, targets)
    loaded = set_peft_model_state_dict(model.backbone, delta.tensors)
    if loaded.unexpected_keys:
        raise TunelabError(f"the merged delta does not fit {run}'s model (e.g. {loaded.unexpected_keys[0]})")
    load_tensors(model, HEAD, run / DELTA_FILE)
    shutil.copytree(run, folder, ignore=shutil.ignore_patterns(CHECKPOINTS, ADAPTER_DIR, DELTA_FILE,
                                                                MANIFEST_FILE))
    strategy.save_delta(model, folder)
    model.eval()
    predictor = LoadedRun(config, targets, in_precision(model, resolve_precision(precision)), tokenizer).predictor()
    examples = recipe.test_examples(config)
    examples = examples if limit is None else examples.iloc[:limit]
    merged = recipe.score(predictor, examples, f"{config.data.source} (test split)")
    with model.backbone.disable_adapter():
        base_and_head = recipe.score(predictor, examples, f"{config.data.source} (test split)")
    source = read_json(run / METRICS_FILE)
    metrics = source | {"test": merged, "single_task": source["test"], "base_and_head": base_and_head}
    write_run(folder, config, metrics, read_json(run / RESOURCES_FILE))
    return {"task": config.task, "merged": merged, "single_task": source["test"], "base_and_head": base_and_head,
            "kept": _kept(config.task, merged, source["test"]), "test_examples": len(examples)}


def _kept(task: str, merged: dict[str, Any], single: dict[str, Any]) -> float | None:
    ours, theirs = headline(task, merged), headline(task, single)
    return ours / theirs if ours is not None and theirs else None


def merge_runs(sources: list[str], output: Path | str, method: MergeMethod, rank: int | None = None,
               overwrite: bool = False, limit: int | None = None, precision: Precision = "auto",
               announce: Callable[[str, dict[str, Any]], None] | None = None) -> tuple[Bundle, dict[str, Any]]:
    """Merge the runs' deltas (`NAME=PATH` or `PATH`) into one, write the bundle at `output` and return it with
    its report (each task's test scores merged, single-task and base+head). `limit` scores each task on the first
    `limit` test examples only. Every check runs before anything is written."""
    output, runs = Path(output), named_runs(sources)
    configs = {name: read_run_config(run) for name, run in runs.items()}
    kind = check_mergeable(runs, configs)
    model, fingerprint = shared_base(runs, configs)
    method.check(len(runs))
    if rank is not None and rank < 1:
        raise TunelabError(f"--rank must be at least 1, not {rank}")
    delta = MERGERS[kind]([run / ADAPTER_DIR for run in runs.values()], method, rank)
    strategy = next(iter(configs.values())).strategy.name
    record = {**method.settings(len(runs)), "strategy": strategy, **({"rank": delta.options["r"],
              "factorisation_error": delta.error} if kind == "lora" else {})}
    with StagedRun(output, overwrite, marker=BUNDLE_FILE, kind="tunelab bundle") as staged:
        tasks = {}
        for name, run in runs.items():
            tasks[name] = _merged_task(name, run, configs[name], delta, staged.path / TASKS / name, limit, precision)
            if announce:
                announce(name, tasks[name])
        kept = [task["kept"] for task in tasks.values() if task["kept"] is not None]
        report = {"merge": record, "tasks": tasks, "mean_kept": sum(kept) / len(kept) if kept else None,
                  "limit": limit}
        write_json(staged.path / "merge.json", report)
        write_bundle_file(staged.path, model, fingerprint, configs, runs, record)
        path = staged.commit()
    return Bundle(path, model, fingerprint, {name: config.task for name, config in configs.items()}, record), report
