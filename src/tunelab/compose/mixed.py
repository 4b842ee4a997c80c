"""Mixed-task batches: one forward over rows that name different tasks of a bundle, each row through its own task's
delta and head, on one copy of the base model.

What shares the base (the catalog's `delta` of a run's strategy): LoRA through PEFT's per-row `adapter_names`;
(IA)^3 and bottleneck adapters through our own per-row hooks (PEFT's mixed batches serve LoRA only); a head alone.
A row routes by its task's index, held in a context variable for the length of one forward, so our hooks keep no
state between calls and concurrent forwards (threads, asyncio tasks) cannot mix their routes; PEFT's routing is
module state for the length of a call, so forwards through LoRA take turns. A task that cannot share the base runs
as its own sub-batch on its own model: full fine-tuning and BitFit (other base weights), the prompt methods (virtual
tokens lengthen the sequence) and the prompt-based strategies (another model form). Sentence tasks only
(classification, regression): a row's answer is its task's logits.
"""

from __future__ import annotations

import threading
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import numpy as np
import torch
from peft import get_peft_model, set_peft_model_state_dict
from safetensors.torch import load_file
from torch import nn

from tunelab.assets.models import resolve_model
from tunelab.batching import length_ordered_batches
from tunelab.compose.bundle import read_bundle, shared_base
from tunelab.compose.task_vectors import IA3, PEFT_PREFIX
from tunelab.config import Precision, RunConfig
from tunelab.errors import TunelabError
from tunelab.modeling import load_backbone, load_tokenizer, pool
from tunelab.precision import in_precision, resolve_precision
from tunelab.predict import Predictor, labelled
from tunelab.recipes.runs import load_run
from tunelab.runs import read_run_config
from tunelab.strategies.adapter import attach
from tunelab.strategies.base import DELTA_FILE
from tunelab.strategies.catalog import entry
from tunelab.strategies.peft_adapter import ADAPTER_DIR
from tunelab.strategies.registry import configure
from tunelab.task_catalog import recipe_for
from tunelab.tasks.classification import LabelMap

SENTENCE_TASKS = ("classification", "regression")
ROUTE: ContextVar[torch.Tensor] = ContextVar("tunelab_mixed_route")  # each row's task index, during one forward
NO_LORA = "__base__"  # PEFT's adapter name for a row that takes no LoRA
# Batches are padded to a multiple of 8 tokens: a server sees batches of every length, and in bf16 on a CPU each new
# shape keeps oneDNN kernels (with their converted weights) cached: resident memory grew by 400 MB over 600 varied
# batches of MiniLM, and stays flat padded so (no slower, measured).
PAD_TO = 8


class RowScales(nn.Module):
    """(IA)^3 on one layer of a mixed batch: each row scaled by its task's vector, ones for tasks without one."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.register_buffer("table", table)  # (tasks, features)

    def _scales(self, hidden: torch.Tensor) -> torch.Tensor:
        scales = self.table[ROUTE.get()].to(hidden.dtype)  # (batch, features)
        return scales.view(scales.shape[0], *[1] * (hidden.dim() - 2), scales.shape[1])

    def scale_output(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        return output * self._scales(output)

    def scale_input(self, module: nn.Module, args: tuple) -> tuple:
        """PEFT's feed-forward (IA)^3 scales the layer's input."""
        return (args[0] * self._scales(args[0]), *args[1:])


class SharedBase(nn.Module):
    """The base backbone with every sharing task's delta attached, and each task's head."""

    def __init__(self, backbone: nn.Module, pooling: str, tasks: list[str]):
        super().__init__()
        self.backbone, self.pooling = backbone, pooling
        self.index = {name: index for index, name in enumerate(tasks)}
        self.heads, self.adapters, self.scales = nn.ModuleDict(), nn.ModuleDict(), nn.ModuleDict()
        self.lora_tasks: dict[str, str] = {}  # task -> its PEFT adapter name (a task's own name could clash with
        # PEFT's parameter prefixes: an adapter named 'lora' would be re-initialised on loading)
        # PEFT routes `adapter_names` through hooks it adds to the model for one call: module state, so two threads'
        # forwards through LoRA would read each other's routes; they take turns.
        self.lora_lock = threading.Lock()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, tasks: list[str]) -> list[torch.Tensor]:
        """Each row's logits from its own task's delta and head."""
        token = ROUTE.set(torch.tensor([self.index[task] for task in tasks], device=input_ids.device))
        try:
            if self.lora_tasks:
                with self.lora_lock:
                    hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask,
                                           adapter_names=[self.lora_tasks.get(task, NO_LORA) for task in tasks])
            else:
                hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask)
        finally:
            ROUTE.reset(token)
        features = pool(hidden.last_hidden_state, attention_mask, self.pooling)
        logits: list[torch.Tensor] = [None] * len(tasks)  # type: ignore[list-item]
        for task in dict.fromkeys(tasks):
            rows = [row for row, name in enumerate(tasks) if name == task]
            for row, output in zip(rows, self.heads[task](features[rows]), strict=True):
                logits[row] = output
        return logits


def _head(delta: dict[str, torch.Tensor]) -> nn.Module:
    """The task's head (dropout, then linear) from its delta's `head.` tensors."""
    weight = delta["head.1.weight"]
    head = nn.Sequential(nn.Dropout(0.0), nn.Linear(weight.shape[1], weight.shape[0]))
    head.load_state_dict({key.removeprefix("head."): value for key, value in delta.items() if key.startswith("head.")})
    return head


def _attach_adapters(model: SharedBase, name: str, config: RunConfig, delta: dict[str, torch.Tensor]) -> None:
    options = configure(config.strategy, config.training).options
    adapters = attach(model.backbone, options)
    adapters.load_state_dict({key.removeprefix("adapters."): value for key, value in delta.items()
                              if key.startswith("adapters.")})
    index = model.index[name]
    for adapter in adapters.values():
        adapter.rows = lambda index=index: ROUTE.get() == index
    model.adapters[name] = adapters


def _attach_ia3(model: SharedBase, runs: dict[str, Path]) -> None:
    """One `RowScales` per scaled layer input or output, over every (IA)^3 task."""
    layers = dict(model.backbone.named_modules())
    tables: dict[tuple[str, bool], torch.Tensor] = {}
    for name, run in runs.items():
        for key, vector in load_file(str(run / ADAPTER_DIR / "adapter_model.safetensors")).items():
            module, on_input = key.removeprefix(PEFT_PREFIX).removesuffix(IA3), vector.shape[0] == 1
            if (module, on_input) not in tables:
                tables[module, on_input] = torch.ones(len(model.index), vector.numel())
            tables[module, on_input][model.index[name]] = vector.flatten()
    for (module, on_input), table in tables.items():
        scales = model.scales[f"{module}{'.input' if on_input else ''}".replace(".", "_")] = RowScales(table)
        if on_input:
            layers[module].register_forward_pre_hook(scales.scale_input)
        else:
            layers[module].register_forward_hook(scales.scale_output)


def _attach_loras(model: SharedBase, runs: dict[str, Path], configs: dict[str, RunConfig]) -> None:
    for name, run in runs.items():
        configured = configure(configs[name].strategy, configs[name].training)
        peft_config = configured.strategy.peft_config(model.backbone, configured.options)
        adapter = f"task{model.index[name]}"
        if not model.lora_tasks:
            model.backbone = get_peft_model(model.backbone, peft_config, adapter_name=adapter)
        else:
            model.backbone.add_adapter(adapter, peft_config)
        weights = load_file(str(run / ADAPTER_DIR / "adapter_model.safetensors"))
        set_peft_model_state_dict(model.backbone, weights, adapter_name=adapter)
        model.lora_tasks[name] = adapter


class MixedPredictor:
    """Every sentence task of a bundle (or of runs on one base model), answering batches whose rows name different
    tasks."""

    def __init__(self, source: Path | str | dict[str, Path], precision: Precision = "auto"):
        """`source`: a bundle's folder, or named runs of one base model (checked by its fingerprint)."""
        if isinstance(source, dict):
            runs = source
            configs = {name: read_run_config(run) for name, run in runs.items()}
            model = shared_base(runs, configs)[0]
        else:
            bundle = read_bundle(source)
            runs = {name: bundle.run(name) for name in bundle.tasks}
            configs, model = {name: read_run_config(run) for name, run in runs.items()}, bundle.model
        for name, config in configs.items():
            if config.task not in SENTENCE_TASKS:
                raise TunelabError(f"task '{name}' is {config.task}: mixed batches answer classification and "
                                   f"regression tasks; predict it on its own with --task {name}")
        spec = resolve_model(model)
        self.tokenizer, self.configs, self.runs = load_tokenizer(spec), configs, runs
        self.targets = {name: recipe_for(config.task).load_targets(runs[name]) for name, config in configs.items()}
        deltas = {name: entry(config.strategy.name).delta for name, config in configs.items()}
        shared = {name: runs[name] for name, delta in deltas.items() if delta is not None}
        model = SharedBase(load_backbone(spec), spec.pooling, list(shared))
        for name, run in shared.items():
            delta = load_file(str(run / DELTA_FILE))
            model.heads[name] = _head(delta)
            if deltas[name] == "adapter":
                _attach_adapters(model, name, configs[name], delta)
        _attach_ia3(model, {name: run for name, run in shared.items() if deltas[name] == "ia3"})
        _attach_loras(model, {name: run for name, run in shared.items() if deltas[name] == "lora"},
                      configs)
        model.eval().requires_grad_(False)
        self.shared = in_precision(model, resolve_precision(precision))
        self.separate: dict[str, Predictor] = {name: load_run(runs[name], precision).predictor()
                                               for name in configs if name not in shared}

    @property
    def tasks(self) -> list[str]:
        return list(self.configs)

    @torch.no_grad()
    def logits(self, texts: list[str], tasks: list[str], batch_size: int = 64) -> list[np.ndarray]:
        """Each text's logits under its task (tasks[i] names texts[i]'s); the rows of tasks on the shared base in
        mixed batches of similar length, the others in one sub-batch run per task."""
        unknown = sorted(set(tasks) - set(self.configs))
        if unknown:
            raise TunelabError(f"no task '{unknown[0]}' here; the tasks are {', '.join(self.configs)}")
        if len(texts) != len(tasks):
            raise TunelabError(f"{len(texts)} texts and {len(tasks)} tasks: name one task per text")
        answers: list[np.ndarray] = [None] * len(texts)  # type: ignore[list-item]
        shared = [row for row, task in enumerate(tasks) if task in self.shared.index]
        encoded = [self.tokenizer(texts[row], truncation=True, max_length=self.configs[tasks[row]].training.max_length)
                   for row in shared]
        for chosen in length_ordered_batches([len(item["input_ids"]) for item in encoded], batch_size):
            batch = self.tokenizer.pad([encoded[i] for i in chosen], return_tensors="pt", pad_to_multiple_of=PAD_TO)
            outputs = self.shared(batch["input_ids"], batch["attention_mask"], [tasks[shared[i]] for i in chosen])
            for i, output in zip(chosen, outputs, strict=True):
                answers[shared[i]] = output.float().numpy()
        for task, predictor in self.separate.items():
            rows = [row for row, name in enumerate(tasks) if name == task]
            if rows:
                for row, output in zip(rows, predictor.logits([texts[row] for row in rows], batch_size), strict=True):
                    answers[row] = output
        return answers

    def predict(self, texts: list[str], tasks: list[str], batch_size: int = 64) -> list[dict[str, Any]]:
        """One record per text, as `predict` writes it for a single run, with the task it was answered for."""
        records = []
        for text, task, logits in zip(texts, tasks, self.logits(texts, tasks, batch_size), strict=True):
            targets = self.targets[task]
            if isinstance(targets, LabelMap):
                label, probabilities = labelled(targets, logits[None])[0]
                records.append({"task": task, "text": text, "label": label, "probabilities": probabilities})
            else:
                records.append({"task": task, "text": text, "value": float(targets.decode(logits[None])[0])})
        return records


def task_texts(items: list[str], tasks: list[str]) -> tuple[list[str], list[str]]:
    """'TASK=TEXT' items -> (texts, tasks); the text may hold '=' itself, the task name cannot."""
    texts, named = [], []
    for item in items:
        task, separator, text = item.partition("=")
        if not separator or task not in tasks:
            raise TunelabError(f"'{item}' names no task of the bundle: write each text as TASK=TEXT with a task of "
                               f"{', '.join(tasks)}, or pass --task for them all")
        texts.append(text)
        named.append(task)
    return texts, named
