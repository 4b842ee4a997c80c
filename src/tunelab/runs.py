"""Run directories: staged and committed atomically, never overwritten by accident, loaded back for use.

A run is built in a hidden sibling folder and renamed into place only when complete, so a crash or a
bad input never leaves a half-written run, and `--overwrite` replaces an old run only at the very end.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from torch import nn

from tunelab.assets.datasets import default_template
from tunelab.assets.models import resolve_model
from tunelab.config import RunConfig, build_config, read_yaml, to_yaml
from tunelab.errors import TunelabError
from tunelab.modeling import load_backbone, load_causal_lm, load_tokenizer
from tunelab.prompting.model import PromptClassifier, build_prompt_classifier
from tunelab.prompting.template import Template
from tunelab.prompting.verbalizer import Verbalizer
from tunelab.resources import PeakMemory, run_resources
from tunelab.strategies.catalog import entry
from tunelab.strategies.registry import get_strategy, parse_options
from tunelab.tasks.classification import LABELS_FILE, LabelMap, SequenceClassifier
from tunelab.tasks.generation import CausalLM
from tunelab.tasks.question_answering import SpanExtractor
from tunelab.tasks.token_classification import TokenClassifier, require_offsets

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.json"
RESOURCES_FILE = "resources.json"


def write_text_atomic(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)


def write_json(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def open_resumable(folder: Path, settings_file: str, settings: dict[str, Any], kind: str) -> None:
    """Create a folder of resumable work (a grid, a pipeline) with its settings, or check that an existing one was
    started with these very settings, so that running the same command again resumes it and nothing else does."""
    stored_file = folder / settings_file
    if folder.exists() and not stored_file.exists() and any(folder.iterdir()):
        raise TunelabError(f"{folder} exists and is not a tunelab {kind}; choose another --output")
    if stored_file.exists():
        stored = yaml.safe_load(stored_file.read_text(encoding="utf-8"))
        changed = [key.replace("_", " ") for key, value in settings.items() if stored.get(key) != value]
        if changed:
            raise TunelabError(f"{folder} holds a {kind.split()[-1]} with other {', '.join(changed)}; repeat its "
                               f"settings to resume it (see {stored_file}), or choose another --output")
    folder.mkdir(parents=True, exist_ok=True)
    write_text_atomic(stored_file, yaml.safe_dump(settings, sort_keys=False))


def write_run(folder: Path, config: RunConfig, metrics: dict[str, Any], resources: dict[str, Any]) -> None:
    """The files every trained run holds besides its delta: the resolved config, metrics and costs."""
    write_text_atomic(folder / CONFIG_FILE, to_yaml(config))
    write_json(folder / METRICS_FILE, metrics)
    write_json(folder / RESOURCES_FILE, resources)


@dataclass
class RunResult:
    path: Path
    metrics: dict[str, Any]
    resources: dict[str, Any]
    predictor: Any | None  # the task's predictor around the in-memory model (Predictor, Tagger, Answerer); None
    # for generation


CHECKPOINTS = "checkpoints"  # the Trainer's, inside the staged run; removed when the run commits unless kept


def commit_run(staged: StagedRun, config: RunConfig, model: nn.Module, metrics: dict[str, Any],
               timings: dict[str, float], memory: PeakMemory, latency_ms: float, predictor: Any = None) -> RunResult:
    """What every run ends with, whatever its task: the Trainer's checkpoints removed unless kept (the delta holds
    what was learned; checkpoints may be full copies), the strategy's delta saved, the costs, the config and the
    metrics written, and the staged folder committed."""
    if not config.training.keep_checkpoints:
        shutil.rmtree(staged.path / CHECKPOINTS, ignore_errors=True)
    strategy = get_strategy(config.strategy.name)
    delta_files = strategy.save_delta(model, parse_options(strategy, config.strategy.options), staged.path)
    resources = run_resources(model, timings, memory, delta_files, latency_ms)
    write_run(staged.path, config, metrics, resources)
    return RunResult(staged.commit(), metrics, resources, predictor)


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


class StagedRun:
    """A run being written: files go to a hidden staging folder until `commit()`."""

    def __init__(self, final: Path, overwrite: bool, marker: str = CONFIG_FILE, kind: str = "tunelab run"):
        """`marker` is the file that identifies a folder this kind of write may replace."""
        if final.exists() and not overwrite:
            raise TunelabError(f"{final} already exists: choose another --output or pass --overwrite")
        if final.exists() and not (final / marker).exists():
            raise TunelabError(f"{final} exists and is not a {kind}; refusing to replace it")
        self.final = final
        self.path = final.with_name(f".{final.name}.partial")

    def __enter__(self) -> StagedRun:
        shutil.rmtree(self.path, ignore_errors=True)  # a previous crash's leftovers
        self.path.mkdir(parents=True)
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is not None:
            shutil.rmtree(self.path, ignore_errors=True)

    def commit(self) -> Path:
        retired = self.final.with_name(f".{self.final.name}.replaced")
        if self.final.exists():
            os.replace(self.final, retired)
        os.replace(self.path, self.final)
        shutil.rmtree(retired, ignore_errors=True)
        return self.final


def require_run(path: Path) -> None:
    if not (path / CONFIG_FILE).exists():
        raise TunelabError(f"{path} is not a tunelab run directory (no {CONFIG_FILE}); pass the --output of a "
                           f"finished `tunelab train`")


@dataclass
class LoadedRun:
    config: RunConfig
    label_map: LabelMap | None  # the labels (or tags) of the tasks that have them
    model: nn.Module
    tokenizer: Any


def apply_strategy(model: SequenceClassifier | PromptClassifier | CausalLM, config: RunConfig) -> None:
    strategy = get_strategy(config.strategy.name)
    strategy.apply(model, parse_options(strategy, config.strategy.options))


def resolve_prompt(config: RunConfig, labels: list[str]) -> RunConfig:
    """For a prompt-based strategy: the config with its template and label words spelled out (the dataset's
    defaults where it names none), so that the saved run says exactly what the model was asked."""
    if not entry(config.strategy.name).prompt_based:
        return config
    resolved = config.model_copy(deep=True)
    resolved.prompt.template = config.prompt.template or default_template(config.data.source)
    resolved.prompt.verbalizer = {label: list(words)
                                  for label, words in Verbalizer.build(config.prompt.verbalizer, labels).words.items()}
    return resolved


def template_fields(config: RunConfig) -> tuple[str, ...]:
    """The data columns a prompt-based run's template reads besides the text."""
    if config.prompt.template is None:
        return ()
    return tuple(field for field in Template.parse(config.prompt.template).fields if field != "text")


def build_classifier(config: RunConfig,
                     label_map: LabelMap | None) -> tuple[SequenceClassifier | PromptClassifier, Any]:
    """Base model + head (or template and label words) for this config, with its strategy applied; without labels
    (regression) the head has one output."""
    spec = resolve_model(config.model)
    tokenizer = load_tokenizer(spec)
    if entry(config.strategy.name).prompt_based:
        prompt = resolve_prompt(config, label_map.labels).prompt
        model = build_prompt_classifier(spec, tokenizer, prompt, label_map.labels, config.training.max_length)
    else:
        model = SequenceClassifier(load_backbone(spec), label_map.width if label_map else 1, spec.pooling)
    apply_strategy(model, config)
    return model, tokenizer


def build_generator(config: RunConfig) -> tuple[CausalLM, Any]:
    """The causal LM for this config, with its strategy applied (`train` checked that it serves generation)."""
    spec = resolve_model(config.model)
    model = CausalLM(load_causal_lm(spec))
    apply_strategy(model, config)
    return model, load_tokenizer(spec)


def build_span_extractor(config: RunConfig) -> tuple[SpanExtractor, Any]:
    """The base model with a start/end head for extractive question answering, with its strategy applied."""
    spec = resolve_model(config.model)
    model = SpanExtractor(load_backbone(spec))
    apply_strategy(model, config)
    return model, load_tokenizer(spec)


def build_tagger(config: RunConfig, tag_map: LabelMap) -> tuple[TokenClassifier, Any]:
    """The base model with a per-token tag head, with its strategy applied."""
    spec = resolve_model(config.model)
    tokenizer = load_tokenizer(spec)
    require_offsets(tokenizer, spec.name)
    model = TokenClassifier(load_backbone(spec), len(tag_map.labels))
    apply_strategy(model, config)
    return model, tokenizer


def build_model(config: RunConfig, label_map: LabelMap | None) -> tuple[nn.Module, Any]:
    """The task's model for this config (labels for the tasks that have them), with its strategy applied."""
    if config.task == "generation":
        return build_generator(config)
    if config.task == "question-answering":
        return build_span_extractor(config)
    if config.task == "token-classification":
        return build_tagger(config, label_map)
    return build_classifier(config, label_map)


def load_run(path: Path) -> LoadedRun:
    """Rebuild a trained model from its run directory: base model + saved delta."""
    require_run(path)
    config = build_config(read_yaml(path / CONFIG_FILE))
    label_map = LabelMap(read_json(path / LABELS_FILE)) if (path / LABELS_FILE).exists() else None
    model, tokenizer = build_model(config, label_map)
    strategy = get_strategy(config.strategy.name)
    strategy.load_delta(model, parse_options(strategy, config.strategy.options), path)
    model.eval()
    return LoadedRun(config, label_map, model, tokenizer)
