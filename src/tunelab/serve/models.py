"""What a server serves, by the name each request gives as its `model`: runs and the tasks of bundles, on as few
copies of each base model as they allow, and bare causal LMs.

The sentence tasks (classification, regression) of one base model, from any bundles and runs, share one
`MixedPredictor`: one base in memory, every row through its own task's delta and head. Adding or removing such a
task builds a new predictor and swaps it in whole; batches already running finish on the old one, and a queued
request for a removed task is answered "not found". Token classification and question answering runs load on
their own; generation runs (SFT, PPO, DPO) and bare causal LMs answer completions and scoring. A black-box run
classifies through its found prompt (or soft prompt) asked of its base model in this process.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from tunelab.api import blackbox_endpoint, load_generator, load_language_model
from tunelab.assets.models import base_fingerprint
from tunelab.blackbox.found import FoundPrompt, is_blackbox_run
from tunelab.compose.bundle import NAME, is_bundle, read_bundle
from tunelab.compose.mixed import SENTENCE_TASKS, MixedPredictor
from tunelab.config import Precision
from tunelab.errors import TunelabError
from tunelab.recipes.runs import load_run
from tunelab.rlhf.policy import is_policy_run, read_policy_settings
from tunelab.runs import read_run_config, require_run
from tunelab.task_catalog import recipe_for
from tunelab.tasks.generation import CausalLM

GENERATION = "generation"
BASE = "base"  # a bare causal LM, served under its model's name
DEFAULT_MAX_TOKENS = 64  # a bare model's answer length when a chat request names none
# Rows per forward within a micro-batch, in order of length: on a CPU a forward of 16 rows costs little more per row
# than one of 32, and texts of similar length waste less on padding (measured on MiniLM: 32 movie snippets in 0.15 s
# as two forwards of 16, 0.24 s as one of 32).
FORWARD_ROWS = 16


class NotServed(TunelabError):
    """The model a request names is not (or no longer) served."""


class NameTaken(TunelabError):
    """A model is served under that name already."""


class SentencePool:
    """The sentence tasks on one base model, in one mixed predictor."""

    def __init__(self, runs: dict[str, Path], precision: Precision):
        self.precision = precision
        self.predictor = MixedPredictor(runs, precision)

    @property
    def runs(self) -> dict[str, Path]:
        return self.predictor.runs

    def answer(self, items: list[tuple[str, str]]) -> list[dict[str, Any] | Exception]:
        """(text, task) items -> one record per item as `predict` gives it, or NotServed for a task removed while
        the item waited."""
        predictor = self.predictor  # one predictor for the whole batch, whatever is swapped in meanwhile
        kept = [row for row, (_, task) in enumerate(items) if task in predictor.configs]
        records = predictor.predict([items[row][0] for row in kept], [items[row][1] for row in kept],
                                    FORWARD_ROWS) if kept else []
        answers: list[dict[str, Any] | Exception] = [NotServed(f"'{task}' is no longer served") for _, task in items]
        for row, record in zip(kept, records, strict=True):
            record.pop("task")
            answers[row] = record
        return answers


class TaskEngine:
    """A token-classification or question-answering run on its own model."""

    def __init__(self, path: Path, precision: Precision):
        loaded = load_run(path, precision)
        self.recipe, self.predictor = loaded.recipe, loaded.predictor()

    def answer(self, items: list[tuple[str, str | None]]) -> list[dict[str, Any] | Exception]:
        """(text, context) items -> records as `predict` gives them; consecutive items about one context together."""
        answers: list[dict[str, Any] | Exception] = []
        start = 0
        while start < len(items):
            context = items[start][1]
            end = start
            while end < len(items) and items[end][1] == context:
                end += 1
            try:
                answers += self.recipe.predict(self.predictor, [text for text, _ in items[start:end]], context)
            except TunelabError as error:
                answers += [error] * (end - start)
            start = end
        return answers


class FoundPromptEngine:
    """A black-box run: the prompt its search found, asked of its base model in this process."""

    def __init__(self, path: Path):
        self.found = FoundPrompt(path)
        self.endpoint = blackbox_endpoint(self.found)

    def answer(self, items: list[tuple[str, str | None]]) -> list[dict[str, Any] | Exception]:
        """(text, no context) items -> a label with every label's probability each, as `predict` gives them."""
        try:
            return self.found.predict([text for text, _ in items], self.endpoint)
        except TunelabError as error:
            return [error] * len(items)
        finally:
            self.endpoint.cache.clear()  # a server's texts are seldom asked twice: keep no answers


@dataclass
class LanguageModel:
    """A causal LM that completes text, chats and scores continuations."""

    model: CausalLM
    tokenizer: Any
    max_tokens: int  # the answer length when a request names none

    @property
    def hidden_size(self) -> int:
        return self.model.backbone.get_input_embeddings().weight.shape[1]

    @cached_property
    def embedding_std(self) -> float:  # a pass over the whole embedding matrix: once, not per listing
        return self.model.embedding_std


@dataclass(frozen=True)
class Served:
    name: str  # what requests give as `model`
    task: str  # classification, regression, token-classification, question-answering, generation, or base
    base: str  # the base model as the run names it
    strategy: str | None
    path: Path | None  # the run directory; None for a bare base model
    engine: Any  # SentencePool, TaskEngine, FoundPromptEngine or LanguageModel

    def describe(self) -> dict[str, Any]:
        """OpenAI's model entry, with the task and strategy; a language model's hidden size and embeddings' scale
        (a soft prompt's width and scale)."""
        language = isinstance(self.engine, LanguageModel)
        return {"id": self.name, "object": "model", "owned_by": "tunelab", "root": self.base,
                "parent": None if self.task == BASE else self.base, "task": self.task, "strategy": self.strategy,
                "hidden_size": self.engine.hidden_size if language else None,
                "embedding_std": self.engine.embedding_std if language else None}


def named_sources(sources: list[str]) -> dict[str, Path]:
    """NAME=PATH or PATH items -> name -> run directory, a bundle giving each of its tasks (named NAME/TASK when
    the bundle is named, else TASK)."""
    named: dict[str, Path] = {}
    for source in sources:
        name, _, path = source.partition("=") if "=" in source else ("", "", source)
        folder = Path(path)
        if name and not NAME.match(name):
            raise TunelabError(f"'{name}' cannot name a model (letters, digits, '.', '_' and '-')")
        if is_bundle(folder):
            bundle = read_bundle(folder)
            found = {f"{name}/{task}" if name else task: bundle.run(task) for task in bundle.tasks}
        else:
            if not (is_policy_run(folder) or is_blackbox_run(folder)):
                require_run(folder)
            found = {name or folder.resolve().name: folder}
        for each in found:
            if each in named:
                raise TunelabError(f"two models would be named '{each}'; name them apart with NAME=PATH")
        named |= found
    return named


class ServedModels:
    """Every served model by name. Loading and unloading take turns (`lock`); readers see a consistent mapping,
    swapped whole."""

    def __init__(self, precision: Precision = "auto"):
        self.precision = precision
        self.entries: dict[str, Served] = {}
        self.pools: dict[str, SentencePool] = {}  # base fingerprint -> the pool of its sentence tasks
        self.lock = threading.Lock()

    def get(self, name: str) -> Served:
        served = self.entries.get(name)
        if served is None:
            raise NotServed(f"no model '{name}' is served; GET /v1/models lists them")
        return served

    def load(self, sources: list[str]) -> list[Served]:
        """Load runs and bundles (`NAME=PATH` or `PATH`); a name already served is refused before anything loads."""
        with self.lock:
            named = named_sources(sources)
            taken = [name for name in named if name in self.entries]
            if taken:
                raise NameTaken(f"'{taken[0]}' is served already; unload it first or load under another name "
                                   f"(NAME=PATH)")
            added = self._load(named)
            self.entries = {**self.entries, **{served.name: served for served in added}}
            return added

    def load_base(self, model: str) -> Served:
        """A bare causal LM (a packaged name, a folder or a hub id), served under its own name."""
        with self.lock:
            if model in self.entries:
                raise NameTaken(f"'{model}' is served already")
            served = Served(model, BASE, model, None, None, LanguageModel(*load_language_model(model),
                                                                          DEFAULT_MAX_TOKENS))
            self.entries = {**self.entries, model: served}
            return served

    def unload(self, name: str) -> Served:
        with self.lock:
            served = self.get(name)
            if served.task in SENTENCE_TASKS:
                fingerprint = next(key for key, pool in self.pools.items() if pool is served.engine)
                runs = {task: run for task, run in served.engine.runs.items() if task != name}
                if runs:
                    served.engine.predictor = MixedPredictor(runs, self.precision)
                else:
                    self.pools = {key: pool for key, pool in self.pools.items() if key != fingerprint}
            self.entries = {key: entry for key, entry in self.entries.items() if key != name}
            return served

    def _load(self, named: dict[str, Path]) -> list[Served]:
        added, sentence = [], {}
        fingerprints: dict[str, str] = {}  # model name -> its base's fingerprint: the weights are hashed once each
        for name, path in named.items():
            if is_blackbox_run(path):
                engine = FoundPromptEngine(path)
                added.append(Served(name, "classification", engine.found.config.model,
                                    f"blackbox {engine.found.record['method']}", path, engine))
                continue
            if is_policy_run(path):  # a PPO or DPO policy: its SFT run's model with the policy's LoRA
                settings = read_policy_settings(path)
                model, tokenizer = load_generator(path)
                added.append(Served(name, GENERATION, read_run_config(Path(settings["sft_run"])).model,
                                    settings["stage"], path, LanguageModel(model.eval(), tokenizer,
                                                                           DEFAULT_MAX_TOKENS)))
                continue
            config = read_run_config(path)
            if config.task in SENTENCE_TASKS:
                if config.model not in fingerprints:
                    fingerprints[config.model] = base_fingerprint(config.model)
                sentence.setdefault(fingerprints[config.model], {})[name] = path
            elif config.task == GENERATION:
                model, tokenizer = load_generator(path)
                added.append(Served(name, GENERATION, config.model, config.strategy.name, path,
                                    LanguageModel(model.eval(), tokenizer, config.generation.max_new_tokens)))
            else:
                recipe_for(config.task)  # a task the catalog knows
                added.append(Served(name, config.task, config.model, config.strategy.name, path,
                                    TaskEngine(path, self.precision)))
        for fingerprint, runs in sentence.items():
            pool = self.pools.get(fingerprint)
            if pool is None:
                pool = SentencePool(runs, self.precision)
                self.pools = {**self.pools, fingerprint: pool}
            else:
                pool.predictor = MixedPredictor({**pool.runs, **runs}, self.precision)
            for name, path in runs.items():
                config = pool.predictor.configs[name]
                added.append(Served(name, config.task, config.model, config.strategy.name, path, pool))
        return added
