"""A black-box run: the data as `train` reads it (K shots per label, the same test split), an endpoint, a method's
search, and a folder with what was found and what it cost: `blackbox.yaml` (method, endpoint, settings, what was
found), `metrics.json` (test and validation accuracy, the template's zero-shot accuracy on the same test and
validation splits, the search curve), `resources.json` (calls, tokens and wall time of the search and of the
evaluation, apart), the method's own files (a soft prompt, a prompt) and `search_curve.png`.

The search's state lives beside the output (`.NAME.search/`) until the run is complete: a search killed and started
again with the same command resumes from its last finished generation."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from tunelab.blackbox.bbt import BBTSettings, BlackBoxTuning
from tunelab.blackbox.endpoints import Budget, Endpoint, Usage
from tunelab.blackbox.mezo import MeZO, MeZOSettings
from tunelab.blackbox.prompts import LabelPrompts, loss_and_accuracy
from tunelab.blackbox.search import PromptSearch, SearchSettings
from tunelab.config import RunConfig
from tunelab.errors import TunelabError
from tunelab.runs import BLACKBOX_FILE, StagedRun, write_json, write_text_atomic
from tunelab.task_catalog import recipe_for

METHODS = {BBTSettings: BlackBoxTuning, SearchSettings: PromptSearch, MeZOSettings: MeZO}


def evaluate(method: BlackBoxTuning | PromptSearch | MeZO, state: Any, rows: pd.DataFrame) -> float:
    """Accuracy on `rows` of what `state` found (None: the template alone)."""
    asked, soft = method.asked(state, rows)
    return loss_and_accuracy(method.prompts.ask(method.endpoint, asked, soft), method.prompts.targets(rows))[1]


def run_blackbox(config: RunConfig, endpoint: Endpoint, settings: BBTSettings | SearchSettings | MeZOSettings,
                 budget: int,
                 overwrite: bool = False, progress=lambda state: None) -> tuple[Path, dict[str, Any]]:
    """Search for `config`'s data (its `data.shots` per label) through `endpoint` within `budget` calls, by the
    method `settings` belong to (bbt, search or mezo), and write the run to `config.output`."""
    if config.data.shots is None:
        raise TunelabError("black-box tuning learns from a few examples: pass --shots K (K per label)")
    output = Path(config.output)
    staged = staged_output(config, overwrite)
    prepared = recipe_for("classification").prepare(config)
    prompt = prepared.config.prompt
    prompts = LabelPrompts.build(prompt.template, prompt.verbalizer, prepared.targets.labels)
    method = METHODS[type(settings)](endpoint, prompts, settings)
    work = output.with_name(f".{output.name}.search")
    _resumable(work, {"method": method.name, "settings": asdict(settings), "budget": budget,
                      "endpoint": endpoint.describe(), "config": config.model_dump(mode="json", exclude={"output"})})
    endpoint.keep_ledger(work / "calls.json")
    endpoint.budget = Budget(calls=budget)
    splits = prepared.splits
    state = method.search(splits.train, splits.validation, work / "state.pkl", progress)
    searched = Usage(**asdict(endpoint.usage))
    endpoint.budget, endpoint.ledger = Budget(), None  # the evaluation is counted apart, unlimited
    metrics = {"task": "classification", "method": method.name,
               "test": {"accuracy": evaluate(method, state, splits.test)},
               "zero_shot": {"accuracy": evaluate(method, None, splits.test),
                             "validation_accuracy": evaluate(method, None, splits.validation)},
               "validation_accuracy": state.best_validation, "generations": state.generation, "curve": state.curve,
               "test_examples": len(splits.test), "shots": config.data.shots}
    metrics["learned"] = metrics["test"]["accuracy"] > metrics["zero_shot"]["accuracy"]  # its starting point
    evaluation = {key: value - getattr(searched, key) for key, value in asdict(endpoint.usage).items()}
    with staged:
        found = method.save(state, staged.path)
        write_text_atomic(staged.path / BLACKBOX_FILE, yaml.safe_dump(
            {"method": method.name, "endpoint": endpoint.describe(), "budget_calls": budget, **found,
             "template": prompt.template, "verbalizer": prompts.verbalizer.words,
             "config": config.model_dump(mode="json", exclude_none=True)}, sort_keys=False))
        write_json(staged.path / "metrics.json", metrics)
        write_json(staged.path / "resources.json", {"search": asdict(searched), "evaluation": evaluation})
        _plot(state.curve, staged.path / "search_curve.png", method.name, metrics)
        path = staged.commit()
    shutil.rmtree(work, ignore_errors=True)
    return path, metrics


def staged_output(config: RunConfig, overwrite: bool) -> StagedRun:
    """Where the run will be written; refused at once when a folder is there and may not be replaced."""
    return StagedRun(Path(config.output), overwrite, marker=BLACKBOX_FILE, kind="tunelab black-box run")


def _resumable(work: Path, settings: dict[str, Any]) -> None:
    """The search folder, new or left by a search with exactly these settings (which this one resumes)."""
    record = work / "settings.json"
    if record.exists():
        if json.loads(record.read_text(encoding="utf-8")) != json.loads(json.dumps(settings)):
            raise TunelabError(f"{work} holds a search with other settings: run the same command to resume it, or "
                               f"delete that folder to start over")
        return
    work.mkdir(parents=True, exist_ok=True)
    write_json(record, settings)


def _plot(curve: list[dict], path: Path, method: str, metrics: dict) -> None:
    """The validation accuracy of what the search held after each round (its best so far; bbt's average of its last
    means) against the calls made, the test accuracy of what was found where the search ended, and the template's
    zero-shot test accuracy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 3.5))
    calls = [point["calls"] for point in curve]
    axis.step(calls, [point["validation_accuracy"] for point in curve], where="post", marker=".",
              label="validation (K shots), what the search held")
    if calls:
        axis.plot(calls[-1], metrics["test"]["accuracy"], marker="*", markersize=12, linestyle="none",
                  label="test, what was found")
    axis.axhline(metrics["zero_shot"]["accuracy"], linestyle="--", color="grey", label="test, the template zero-shot")
    axis.set_xlabel("calls made")
    axis.set_ylabel("accuracy")
    axis.set_title(f"{method}: accuracy against calls")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
