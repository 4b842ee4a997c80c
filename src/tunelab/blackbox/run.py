"""A black-box tuning run: the data as `train` reads it (K shots per label, the same test split), an endpoint, the
search, and a folder with what was found and what it cost: `blackbox.yaml` (settings), `metrics.json` (test and
validation accuracy, the zero-shot template's on the same test split, the search curve), `resources.json` (calls,
tokens and wall time of the search and of the evaluation, apart), `soft_prompt.safetensors` and `search_curve.png`.

The search's state lives beside the output (`.NAME.search/`) until the run is complete: a search killed and started
again with the same command resumes from its last finished generation."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from safetensors.torch import save_file

from tunelab.blackbox.bbt import BBTSettings, BlackBoxTuning, Shots, shots
from tunelab.blackbox.endpoints import Budget, Endpoint, Usage
from tunelab.blackbox.prompts import LabelPrompts, loss_and_accuracy
from tunelab.config import RunConfig
from tunelab.errors import TunelabError
from tunelab.runs import StagedRun, write_json, write_text_atomic
from tunelab.task_catalog import recipe_for

SETTINGS_FILE = "blackbox.yaml"
SOFT_PROMPT_FILE = "soft_prompt.safetensors"
EVALUATION_PAIRS = 64  # prompt x label-word pairs per evaluation call (`tunelab serve`'s default --max-inputs)


def evaluate(tuning: BlackBoxTuning, z: np.ndarray | None, data: Shots) -> float:
    """Accuracy on `data` in calls of at most EVALUATION_PAIRS pairs."""
    rows = max(1, EVALUATION_PAIRS // len(tuning.prompts.continuations))
    scores = [tuning.endpoint.score(data.prompts[start:start + rows], tuning.prompts.continuations,
                                    None if z is None else tuning.soft_prompt(z))
              for start in range(0, len(data.prompts), rows)]
    return loss_and_accuracy(tuning.prompts.label_logprobs(np.concatenate(scores)), data.targets)[1]


def run_bbt(config: RunConfig, endpoint: Endpoint, settings: BBTSettings, budget: int, overwrite: bool = False,
            progress=lambda state: None) -> tuple[Path, dict[str, Any]]:
    """Search a soft prompt for `config`'s data (its `data.shots` per label) through `endpoint` within `budget`
    calls, and write the run to `config.output`."""
    if config.data.shots is None:
        raise TunelabError("black-box tuning learns from a few examples: pass --shots K (K per label)")
    output = Path(config.output)
    staged = StagedRun(output, overwrite, marker=SETTINGS_FILE, kind="tunelab black-box run")
    prepared = recipe_for("classification").prepare(config)
    prompt = prepared.config.prompt
    prompts = LabelPrompts.build(prompt.template, prompt.verbalizer, prepared.targets.labels)
    work = output.with_name(f".{output.name}.search")
    _resumable(work, {"bbt": asdict(settings), "budget": budget, "endpoint": endpoint.describe(),
                      "config": config.model_dump(mode="json", exclude={"output"})})
    endpoint.keep_ledger(work / "calls.json")
    endpoint.budget = Budget(calls=budget)
    tuning = BlackBoxTuning(endpoint, prompts, settings)
    train, validation = shots(prompts, prepared.splits.train), shots(prompts, prepared.splits.validation)
    state = tuning.search(train, validation, work / "state.pkl", progress)
    searched = Usage(**asdict(endpoint.usage))
    endpoint.budget, endpoint.ledger = Budget(), None  # the evaluation is counted apart, unlimited
    test = shots(prompts, prepared.splits.test)
    metrics = {"task": "classification", "method": "bbt", "test": {"accuracy": evaluate(tuning, state.best_z, test)},
               "zero_shot": {"accuracy": evaluate(tuning, None, test)},
               "validation_accuracy": state.best_validation, "train_loss": state.best_loss,
               "generations": state.generation, "curve": state.curve,
               "test_examples": len(prepared.splits.test), "shots": config.data.shots}
    evaluation = {key: value - getattr(searched, key) for key, value in asdict(endpoint.usage).items()}
    with staged:
        save_file({"soft_prompt": torch.from_numpy(tuning.soft_prompt(state.best_z))}, staged.path / SOFT_PROMPT_FILE)
        write_text_atomic(staged.path / SETTINGS_FILE, yaml.safe_dump(
            {"method": "bbt", "endpoint": endpoint.describe(), "budget_calls": budget, "bbt": asdict(settings),
             "template": prompt.template, "verbalizer": prompts.verbalizer.words, "config": config.model_dump(
                 mode="json", exclude_none=True)}, sort_keys=False))
        write_json(staged.path / "metrics.json", metrics)
        write_json(staged.path / "resources.json", {"search": asdict(searched), "evaluation": evaluation})
        _plot(state.curve, staged.path / "search_curve.png")
        path = staged.commit()
    shutil.rmtree(work, ignore_errors=True)
    return path, metrics


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


def _plot(curve: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 3.5))
    axis.plot([point["calls"] for point in curve], [point["validation_accuracy"] for point in curve], marker=".")
    axis.set_xlabel("calls made")
    axis.set_ylabel("validation accuracy (K shots)")
    axis.set_title("black-box tuning: the best soft prompt so far")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
