"""Every strategy's facts in one frozen row: what the CLI, the trainer, the advisor, `pet`, the RLHF stages, the
docs and the tests know about a strategy, without importing it (the modules pull in torch; `tunelab recommend`
and `tunelab strategies` answer without it). A row names the module that implements it, imported on first use.

Adding a strategy: its module, its row here, its test. Rows are checked once at import, the way PEFT's
`register_peft_method` checks a tuner: unique names, known tasks and families, a reason for every task not served.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from functools import cache
from typing import TYPE_CHECKING

from tunelab.errors import TunelabError
from tunelab.task_catalog import TASKS, check_task

if TYPE_CHECKING:
    from tunelab.strategies.base import Strategy

FAMILIES = ("full", "feature extraction", "parameter-efficient", "prompt-based")
# What a run leaves beside an unchanged base model, for composition (`tunelab.compose`): a PEFT LoRA or (IA)^3
# adapter (both merge as task vectors), bottleneck adapters, or only a head; None where the run changes the base's
# weights or its input sequence, or answers through a language model's words.
DELTAS = ("lora", "ia3", "adapter", "head")
TASK_VECTORS = ("lora", "ia3")
TRAINS = ("all", "some", "none")  # the weights whose training state the advisor's memory estimate counts
HEAD_TASKS = ("classification", "regression", "token-classification", "question-answering")

_NO_GENERATION_HEAD = {"generation": "it trains only a new head, and generation has none"}
_PREPENDS = {"generation": "its virtual tokens are wired for encoding, not for sampling one token at a time"}
_LABEL_WORDS = {task: "it scores label words, so it classifies sentences only"
                for task in TASKS if task != "classification"}

# The advisor's expected trade-offs when no measured grid is given: measured in tunelab on a CPU, MiniLM on
# movie-snippets with 2,000 labels over 3 seeds (benchmarks/results/strategy_accuracy.json, strategy_costs.json);
# the prompt-based rows on SmolLM2-135M with 32 labels per class (few_shot.json).
_MINILM = "MiniLM sentiment, 2,000 labels: "
_SMOLLM2 = "SmolLM2-135M, 32 labels per class: "


@dataclass(frozen=True)
class StrategyEntry:
    """One strategy as the rest of tunelab sees it."""

    name: str
    module: str  # under tunelab.strategies
    class_name: str
    summary: str
    family: str  # one of FAMILIES: how `compare` groups strategies
    trains: str  # one of TRAINS
    learning_rate: float  # training defaults when the config sets neither (pet's depend on what it tunes)
    epochs: float
    trade_off: str
    prompt_based: bool = False  # classifies through a template and label words (PromptClassifier), not a new head
    mergeable: bool = False  # its delta folds into the backbone's weights (`tunelab export --merge`)
    trl: bool = False  # its trainable weights live inside the LM that TRL's trainers optimise (rlhf stages)
    pet_tunable: bool = False  # `pet --option tune=NAME` can train the language model with it
    starts_at_base: bool = True  # untrained, it computes what the base model with the task's head does (nothing
    # added, added at zero, or the template's own words); virtual tokens and {soft} tokens start random
    not_served: dict[str, str] = field(default_factory=dict)  # task -> why the strategy does not apply to it
    groups_by_length: bool = False  # measured to keep its accuracy in length-grouped batches: `auto` groups it
    delta: str | None = None  # one of DELTAS: how the run's delta sits on a shared base (mixed batches, merging)
    composes: bool = False  # builds on other runs named in its options: not in `compare --strategies all` nor the
    # advisor's ranking, which weigh strategies a user can train from the base model alone

    def serves(self, task: str) -> bool:
        return task not in self.not_served

    def load(self) -> Strategy:
        return _load(self.module, self.class_name)


@cache
def _load(module: str, class_name: str) -> Strategy:
    return getattr(importlib.import_module(f"tunelab.strategies.{module}"), class_name)()


_ENTRIES = (
    StrategyEntry("full", "full", "FullFineTuning",
                  "train every weight; best with plenty of labels, one full model copy per task",
                  "full", "all", 5e-5, 3.0, mergeable=True, trl=True, pet_tunable=True, groups_by_length=True,
                  trade_off=_MINILM + "accuracy 0.845, 100% trainable, 90.9 MB per task, train time 1.0x; ~16 bytes "
                  "per parameter with AdamW; " + _SMOLLM2 + "only 0.780, head-based"),
    StrategyEntry("linear-probe", "linear_probe", "LinearProbe",
                  "frozen encoder, train a linear head on its sentence vectors; cheapest, least accurate",
                  "feature extraction", "none", 1e-2, 30.0, mergeable=True, delta="head",
                  not_served=_NO_GENERATION_HEAD,
                  trade_off=_MINILM + "accuracy 0.778, 0.003% trainable, 3 KB per task, train time 0.11x full: "
                  "cheapest, least accurate"),
    StrategyEntry("lora", "lora", "Lora",
                  "frozen backbone plus trainable low-rank updates; mergeable, a small delta per task",
                  "parameter-efficient", "some", 5e-3, 3.0, mergeable=True, trl=True, pet_tunable=True, delta="lora",
                  trade_off=_MINILM + "accuracy 0.854, 0.33% trainable, 308 KB per task, train time 0.74x full; "
                  "merges: no added latency"),
    StrategyEntry("adalora", "adalora", "AdaLora",
                  "LoRA in SVD form whose ranks are reallocated while training, to the layers that need them "
                  "(Zhang et al. 2023); mergeable",
                  "parameter-efficient", "some", 5e-3, 3.0, mergeable=True,
                  trade_off="not measured in tunelab yet: a LoRA budget spread by importance; trains at init_r and "
                  "saves each layer at its allocated rank"),
    StrategyEntry("ia3", "ia3", "Ia3",
                  "frozen backbone, learned rescaling vectors on keys, values and feed-forward; tiny and mergeable",
                  "parameter-efficient", "some", 1e-2, 3.0, mergeable=True, trl=True, pet_tunable=True, delta="ia3",
                  trade_off=_MINILM + "accuracy 0.836, 0.07% trainable, 77 KB per task, train time 0.74x full; "
                  "merges: no added latency"),
    StrategyEntry("adapter", "adapter", "BottleneckAdapters",
                  "small bottleneck layers inside each block of a frozen backbone (Houlsby/Pfeiffer/parallel)",
                  "parameter-efficient", "some", 2e-3, 3.0, pet_tunable=True, delta="adapter",
                  trade_off=_MINILM + "accuracy 0.851, 0.99% trainable, 913 KB per task, train time 0.75x full; "
                  "extra layers add latency"),
    StrategyEntry("fusion", "fusion", "AdapterFusion",
                  "attention over the frozen bottleneck adapters of other runs (its sources option), per layer, "
                  "and a new head (Pfeiffer et al. 2021)",
                  "parameter-efficient", "some", 2e-3, 3.0, composes=True,
                  not_served={"generation": "its sources are adapters under a head, and generation has none"},
                  trade_off="composes adapters trained on other tasks: needs their runs, adds their latency"),
    StrategyEntry("bitfit", "bitfit", "BitFit",
                  "only the backbone's bias terms and the head train; mergeable, a tiny delta (Ben Zaken et al. 2022)",
                  "parameter-efficient", "some", 1e-3, 3.0, mergeable=True,
                  not_served={"generation": "decoders such as Llama have no bias terms, and generation has no head"},
                  trade_off="not measured in tunelab yet: trains the bias terms and the head only, and merges"),
    StrategyEntry("prefix", "prefix", "PrefixTuning",
                  "trainable key/value prefixes at every layer of a frozen backbone (P-tuning v2 deep prompts)",
                  "parameter-efficient", "some", 1e-2, 3.0, starts_at_base=False, not_served=_PREPENDS,
                  trade_off=_MINILM + "accuracy 0.802, 0.21% trainable, 193 KB per task, train time 0.73x full; a "
                  "longer attention context adds latency"),
    StrategyEntry("prompt-tuning", "prompt_tuning", "PromptTuning",
                  "trainable input embeddings before the text, frozen backbone; the smallest delta",
                  "parameter-efficient", "some", 3e-2, 3.0, starts_at_base=False, not_served=_PREPENDS,
                  trade_off=_MINILM + "accuracy 0.786, 0.02% trainable, 25 KB per task, train time 0.87x full; "
                  "longer inputs"),
    StrategyEntry("p-tuning", "p_tuning", "PTuning",
                  "virtual input tokens from a trainable LSTM/MLP prompt encoder, frozen backbone",
                  "parameter-efficient", "some", 1e-2, 3.0, starts_at_base=False, not_served=_PREPENDS,
                  trade_off=_MINILM + "accuracy 0.785, 4.6% trainable (the prompt encoder), 25 KB per task, train "
                  "time 0.86x full; longer inputs"),
    StrategyEntry("zero-shot", "zero_shot", "ZeroShot",
                  "ask the pre-trained LM through a template and label words; nothing trains",
                  "prompt-based", "none", 0.0, 0.0, prompt_based=True, not_served=_LABEL_WORDS,
                  trade_off=_SMOLLM2 + "accuracy 0.843 with no training at all, nothing to store; a template "
                  "lengthens inputs"),
    StrategyEntry("pet", "pet", "PatternExploitingTraining",
                  "prompt-based fine-tuning: the LM fills a template's label slot; strong with few labels",
                  "prompt-based", "all", 1e-5, 10.0, prompt_based=True, not_served=_LABEL_WORDS,
                  trade_off=_SMOLLM2 + "accuracy 0.887 against 0.780 for head-based full fine-tuning; trains the "
                  "whole LM"),
    StrategyEntry("soft-template", "soft_template", "SoftTemplate",
                  "P-tuning: the template's words become trainable vectors; the language model stays frozen",
                  "prompt-based", "some", 1e-2, 10.0, prompt_based=True, not_served=_LABEL_WORDS,
                  trade_off=_SMOLLM2 + "accuracy 0.860 with the LM frozen; a template lengthens inputs"),
)


def _validated(entries: tuple[StrategyEntry, ...]) -> dict[str, StrategyEntry]:
    """Refuse a row that the rest of tunelab could not use, when the package is imported, not when a user hits it."""
    catalog: dict[str, StrategyEntry] = {}
    for entry in entries:
        problems = ["the name is taken" if entry.name in catalog else "",
                    f"family '{entry.family}' is not one of {FAMILIES}" if entry.family not in FAMILIES else "",
                    f"trains '{entry.trains}' is not one of {TRAINS}" if entry.trains not in TRAINS else "",
                    f"unknown tasks {sorted(set(entry.not_served) - set(TASKS))}" if set(entry.not_served) - set(TASKS)
                    else "",
                    "it serves no task" if set(entry.not_served) >= set(TASKS) else "",
                    "pet tunes only weight strategies" if entry.pet_tunable and entry.prompt_based else "",
                    f"delta '{entry.delta}' is not one of {DELTAS}" if entry.delta not in (*DELTAS, None) else "",
                    "a prompt-based strategy is in the prompt-based family"
                    if entry.prompt_based != (entry.family == "prompt-based") else ""]
        problems = [problem for problem in problems if problem]
        if problems:
            raise TunelabError(f"strategy catalog row '{entry.name}': {'; '.join(problems)}")
        catalog[entry.name] = entry
    return catalog


CATALOG: dict[str, StrategyEntry] = _validated(_ENTRIES)
NAMES = tuple(CATALOG)
PROMPT_BASED = tuple(name for name, entry in CATALOG.items() if entry.prompt_based)
PET_TUNABLE = tuple(name for name, entry in CATALOG.items() if entry.pet_tunable)
TRL_STRATEGIES = tuple(name for name, entry in CATALOG.items() if entry.trl)
STANDALONE = tuple(name for name, entry in CATALOG.items() if not entry.composes)  # trained from the base alone


def entry(name: str) -> StrategyEntry:
    if name not in CATALOG:
        raise TunelabError(f"unknown strategy '{name}'; choose one of {', '.join(CATALOG)}")
    return CATALOG[name]


def strategies_for(task: str) -> list[str]:
    return [name for name, row in CATALOG.items() if row.serves(task)]


def check_serves_task(strategy: str, task: str) -> None:
    """Fail before any data or weights load when the strategy cannot adapt a model for `task`."""
    check_task(task)
    reason = entry(strategy).not_served.get(task)
    if reason is not None:
        raise TunelabError(f"strategy {strategy} does not apply to {task}: {reason}; use one of "
                           f"{', '.join(strategies_for(task))}")
