"""The strategy-selection guide as code: a situation (labels, hardware, task, deployment) -> ranked strategies.

Every scoring decision is a row of `RULES`, every hard limit a row of `CONSTRAINTS`; the rest of the module only adds
the rows up and writes the result down. `tunelab recommend` must answer at once, so nothing here imports torch:
what the advisor knows of a strategy is its catalog row.
"""

from __future__ import annotations

import importlib.util
import math
import shlex
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from tunelab.engines import per_device_bytes, trap
from tunelab.errors import TunelabError
from tunelab.strategies.catalog import CATALOG, NAMES, StrategyEntry, entry
from tunelab.task_catalog import check_task
from tunelab.units import human_bytes

if TYPE_CHECKING:
    import pandas as pd

LATENCIES = ("strict", "normal")
GB = 1e9


@dataclass(frozen=True)
class Situation:
    """What the user has and needs; the guide chooses by data size, hardware, task and deployment."""

    samples: int  # labelled examples
    task: str = "classification"  # one of task_catalog.TASKS
    model: str | None = None  # a name/path when the user named one
    prompt_model: str | None = None  # the prompt-based strategies' own model, with an LM head (a grid of two models)
    model_parameters: float = 22.7e6
    causal: bool = False  # causal LM (else encoder)
    has_lm_head: bool = False  # can take prompt-based strategies (causal LMs always can)
    memory_gb: float = 8.0  # memory budget for training (GPU memory on a GPU, RAM on CPU), per device
    gpu: bool = False  # a big/any GPU (else a CPU laptop)
    gpus: int = 1  # devices to train on together, each with memory_gb
    tasks_to_serve: int = 1  # tasks to deploy on one base model
    latency: str = "normal"  # "strict" | "normal"

    def __post_init__(self) -> None:
        if self.samples < 1:
            raise TunelabError(f"samples must be at least 1 (got {self.samples}); give the number of labelled examples")
        check_task(self.task)
        if self.latency not in LATENCIES:
            raise TunelabError(f"latency '{self.latency}' is unknown; use one of {', '.join(LATENCIES)}")
        if self.model_parameters <= 0 or self.memory_gb <= 0:
            raise TunelabError("model parameters and memory (GB) must be positive numbers")
        if self.gpus < 1:
            raise TunelabError(f"gpus must be at least 1 (got {self.gpus})")
        if self.tasks_to_serve < 1:
            raise TunelabError(f"tasks to serve must be at least 1 (got {self.tasks_to_serve})")


@dataclass(frozen=True)
class MeasuredGrid:
    """The measured rows (strategy -> row) at the training-set size nearest the user's, in registry order."""

    train_size: int
    rows: dict[str, dict[str, Any]]

    @property
    def accuracy(self) -> dict[str, float]:
        return {name: row["accuracy_mean"] for name, row in self.rows.items()}

    @property
    def best(self) -> str:
        return max(self.accuracy, key=self.accuracy.__getitem__)

    @property
    def best_accuracy(self) -> float:
        return self.accuracy[self.best]


@dataclass(frozen=True)
class Rule:
    """One row of the guide. `because` is formatted with the situation's fields (`asdict`) plus `model_size`
    (e.g. "7B"), and for the measured rules `grid_size`, `best_strategy` and `best_accuracy`."""

    name: str
    applies: Callable[[Situation], bool]
    # strategy -> points; or, for the measured rules, computed from the grid (no points without one)
    points: dict[str, float] | Callable[[MeasuredGrid], dict[str, float]]
    because: str


def _always(situation: Situation) -> bool:
    """The measured rules apply to any situation; with no grid they add no points."""
    return True


def _best_measured(grid: MeasuredGrid) -> dict[str, float]:
    return {grid.best: 3.0}


def _close_to_best(grid: MeasuredGrid) -> dict[str, float]:
    return {name: 1.5 for name, accuracy in grid.accuracy.items()
            if name != grid.best and accuracy >= grid.best_accuracy - 0.02}


def _far_below_best(grid: MeasuredGrid) -> dict[str, float]:
    return {name: -3.0 for name, accuracy in grid.accuracy.items() if accuracy < grid.best_accuracy - 0.05}


RULES: tuple[Rule, ...] = (
    Rule("few-labels", lambda s: s.samples < 100,
         {"pet": 4, "soft-template": 3, "zero-shot": 2, "p-tuning": 2, "full": -2},
         "with {samples:,} labels, prompt-based fine-tuning beats training a new head (PET, LM-BFF: Schick & Schütze "
         "2021; Gao et al. 2021), P-tuning is the guide's few-shot choice (<100 labels), and zero-shot needs none"),
    Rule("hundreds-of-labels", lambda s: 100 <= s.samples < 1000,
         {"lora": 3, "ia3": 2, "adapter": 1, "full": -1},
         "with {samples:,} labels a light adaptation is enough and overfits less: LoRA matches full fine-tuning with "
         "far fewer trainable parameters (Hu et al. 2021)"),
    Rule("thousands-of-labels", lambda s: 1000 <= s.samples <= 10_000,
         {"adapter": 2, "lora": 2, "ia3": 1, "full": 1},
         "with {samples:,} labels adapters (the guide's 1k-10k row) and LoRA come within a fraction of a point of full "
         "fine-tuning (Houlsby et al. 2019; Hu et al. 2021)"),
    Rule("many-labels", lambda s: s.samples > 10_000, {"full": 4, "lora": 1},
         "with {samples:,} labels there is data enough to move every weight: full fine-tuning gives the top accuracy "
         "(the guide's >10k row)"),
    Rule("gpu", lambda s: s.gpu, {"full": 1},
         "on a GPU the compute of full fine-tuning (5/5 in the guide) is affordable"),
    Rule("cpu-only", lambda s: not s.gpu, {"full": -1, "linear-probe": 1},
         "on a CPU every backward pass through all weights is slow: full fine-tuning took 1.35x LoRA's time here, a "
         "linear probe on frozen features 0.11x full's"),
    Rule("large-model", lambda s: s.model_parameters >= 1e9, {"lora": 3, "ia3": 1, "full": -2},
         "with {model_size} parameters full fine-tuning needs ~16 bytes per parameter (weights, gradients, two Adam "
         "moments) while LoRA matches it with far fewer trainable parameters (Hu et al. 2021); QLoRA goes further on "
         "a 4-bit base (Dettmers et al. 2023)"),
    Rule("shallow-prompts-below-10b", lambda s: s.model_parameters < 1e10,
         {"prompt-tuning": -2, "p-tuning": -1, "prefix": 0.5},
         "prompts on the input embeddings match full fine-tuning only near 10B parameters (Lester et al. 2021) and "
         "this model has {model_size}; deep prompts (prefix, P-tuning v2) hold up across scales (Liu et al. 2022)"),
    Rule("huge-model", lambda s: s.model_parameters >= 1e10, {"prompt-tuning": 2},
         "at {model_size} parameters prompt tuning matches full fine-tuning (Lester et al. 2021) with the smallest "
         "delta of all"),
    Rule("many-tasks", lambda s: s.tasks_to_serve > 1,
         {"adapter": 3, "lora": 2, "ia3": 1, "prefix": 1, "prompt-tuning": 1, "full": -3},
         "{tasks_to_serve} tasks on one base: adapters stay within ~0.4 GLUE points of full fine-tuning with ~3% of "
         "the parameters per task and one shared base (Houlsby et al. 2019); full fine-tuning stores a model per task"),
    Rule("strict-latency", lambda s: s.latency == "strict",
         {"lora": 2, "ia3": 2, "full": 1, "linear-probe": 1, "adapter": -2, "prefix": -2, "prompt-tuning": -2,
          "p-tuning": -2, "zero-shot": -1, "pet": -1, "soft-template": -1},
         "strict latency: LoRA, IA3 and full fine-tuning merge into the base (`tunelab export --merge`) and add no "
         "latency (Hu et al. 2021); adapters add layers, prompts and templates lengthen every input"),
    Rule("generation", lambda s: s.task == "generation", {"lora": 1},
         "the guide names LoRA for tuning GPT-style models to dialogue: a small delta on a frozen causal LM"),
    # From a measured grid (`recommend(..., measured=...)`): its rows at the size nearest the user's label count.
    Rule("measured-best", _always, _best_measured,
         "{best_strategy} had the best measured accuracy at {grid_size:,} labels ({best_accuracy:.3f})"),
    Rule("measured-close", _always, _close_to_best,
         "measured within 0.02 of the best accuracy at {grid_size:,} labels ({best_strategy}, {best_accuracy:.3f})"),
    Rule("measured-far", _always, _far_below_best,
         "measured more than 0.05 below the best accuracy at {grid_size:,} labels ({best_strategy}, "
         "{best_accuracy:.3f})"),
)


@dataclass(frozen=True)
class Constraint:
    """A hard limit: a strategy it blocks cannot run here. `because` is formatted like a rule's, plus `strategy`
    and `needed_gb` (the training-memory estimate)."""

    name: str
    blocks: Callable[[StrategyEntry, Situation], bool]
    because: str


CONSTRAINTS: tuple[Constraint, ...] = (
    Constraint("serves-task", lambda f, s: not f.serves(s.task),
               "{strategy} does not apply to {task}: {task_reason}"),
    Constraint("generation-needs-causal-lm", lambda f, s: s.task == "generation" and s.model is not None
               and not s.causal, "generation needs a causal LM and {model} is an encoder; name one, e.g. smollm2"),
    Constraint("lm-head", lambda f, s: f.prompt_based and s.prompt_model is None and s.model is not None
               and not (s.causal or s.has_lm_head),
               "{strategy} reads the LM head and {model} has none; use a causal LM (smollm2) or a masked LM with its "
               "MLM head"),
    Constraint("memory", lambda f, s: estimate_training_memory_gb(f.name, s) > s.memory_gb
               and runnable_fit(f.name, s) is None,
               "{strategy} needs ~{needed_gb:.1f} GB on one device, you have {memory_gb:g} GB{engine_note}"),
)


@dataclass(frozen=True)
class Recommendation:
    strategy: str
    score: float
    reasons: list[str]  # blocking constraints first, then the rules that moved it, largest |points| first
    trade_off: str  # from the measured grid when given, else the catalog row's
    command: str  # the exact `tunelab train ...` command line
    feasible: bool  # False when it cannot run here; ranked after all feasible ones


def training_state_gb(strategy: str, situation: Situation) -> tuple[dict[str, float], float]:
    """One whole copy of the training state in GB (1e9 bytes), as `tunelab.engines.STATES` -> size, and the
    activations every device keeps for its own batch; rough, meant to rank, not to promise.

    - trains all weights (full; pet, which tunes the whole LM by default): 16 bytes per parameter with AdamW in
      mixed precision, as ZeRO counts them (Rajbhandari et al. 2020): 2 for the weights, 2 for the gradients, 12 for
      the optimizer (an fp32 copy and two Adam moments); activations 20% of that.
    - frozen base (lora, ia3, adapter, prefix, prompt-tuning, p-tuning, soft-template): the base weights at 2 bytes
      per parameter on a GPU (bf16) or 4 on a CPU (fp32), + ~1% of the parameters trained at 16 bytes, + 20% of that
      trained state for activations (small batches). A 7B bf16 base: ~15.3 GB, which is why LoRA just fits 16 GB
      and QLoRA's 4-bit base (Dettmers et al. 2023) is the way below that.
    - forward only (linear-probe, zero-shot): the weights.
    """
    parameters, trains = situation.model_parameters, entry(strategy).trains
    trained = {"all": parameters, "some": 0.01 * parameters, "none": 0.0}[trains]
    frozen = 0.0 if trains == "all" else parameters * (2 if situation.gpu else 4)
    state = {"parameters": frozen + 2 * trained, "gradients": 2 * trained, "optimizer": 12 * trained}
    return {name: size / GB for name, size in state.items()}, 0.2 * 16 * trained / GB


def estimate_training_memory_gb(strategy: str, situation: Situation, engine: str = "ddp", devices: int = 1) -> float:
    """Training memory per device in GB under `engine` on `devices` (default: one device, nothing sharded): the
    states the engine shards divided over the devices, the rest and the activations whole on each."""
    state, activations = training_state_gb(strategy, situation)
    return per_device_bytes(state, engine, devices) + activations


SHARDING = ("deepspeed-zero2", "deepspeed-zero3", "fsdp")  # least sharding (and least communication) first
DEVICE_COUNTS = (2, 4, 8, 16, 32, 64)  # what the advisor tries when the user has one device


def sharded_fit(strategy: str, situation: Situation) -> tuple[str, int] | None:
    """The engine and device count that fit the strategy in the situation's memory per device, least sharding and
    fewest devices first: on the user's GPUs when they have several, else the smallest count that would do."""
    if not situation.gpu or estimate_training_memory_gb(strategy, situation) <= situation.memory_gb:
        return None
    counts = (situation.gpus,) if situation.gpus > 1 else DEVICE_COUNTS
    return next(((name, count) for count in counts for name in SHARDING
                 if estimate_training_memory_gb(strategy, situation, name, count) <= situation.memory_gb), None)


def runnable_fit(strategy: str, situation: Situation) -> tuple[str, int] | None:
    """The engine and device count that fit (`sharded_fit`), where tunelab can train the strategy with that engine
    on GPUs the user has."""
    fit = sharded_fit(strategy, situation)
    return fit if fit is not None and fit[1] <= situation.gpus and not_runnable(strategy, fit[0]) is None else None


def not_runnable(strategy: str, name: str) -> str | None:
    """Why tunelab cannot train the strategy with the engine, if it cannot."""
    return None if trap(strategy, name) is None else f"a known failure with {strategy}"


def engine_note(strategy: str, situation: Situation) -> str:
    """Where one device's memory is too small: the engine that fits and the estimate per device under each sharding
    engine at that device count; empty where one device does, or on a CPU."""
    fit = sharded_fit(strategy, situation)
    if fit is None:
        return ""
    name, count = fit
    each = ", ".join(f"{engine} {estimate_training_memory_gb(strategy, situation, engine, count):.1f} GB"
                     for engine in SHARDING)
    where = "on your" if situation.gpus > 1 else "it would fit on"
    why_not = not_runnable(strategy, name)
    later = "" if why_not is None else f" ({why_not})"
    return f"; {where} {count} GPUs with {name}{later}: per GPU {each}"


def qlora_note() -> str:
    """QLoRA (Dettmers et al. 2023) trains LoRA on a 4-bit base; say honestly what it needs and that tunelab
    cannot load 4-bit bases yet."""
    found = importlib.util.find_spec("bitsandbytes") is not None
    if found:
        return ("bitsandbytes is installed, so QLoRA (LoRA on a 4-bit base, Dettmers et al. 2023) could cut the base "
                "to ~0.5 bytes per parameter; tunelab does not load 4-bit bases yet, so run it with peft directly")
    return ("QLoRA (LoRA on a 4-bit base, Dettmers et al. 2023) would cut the base to ~0.5 bytes per parameter; it "
            "needs bitsandbytes (pip install bitsandbytes) and a CUDA GPU, and tunelab does not load 4-bit bases yet")


MEASURED_COLUMNS = ("strategy", "train_size", "accuracy_mean", "accuracy_std", "seeds", "trainable_share",
                    "train_s_mean", "peak_memory_bytes", "delta_bytes", "latency_ms")


def _measured_grid(measured: pd.DataFrame, samples: int) -> MeasuredGrid | None:
    """The rows at the measured training-set size nearest `samples` on a log scale (doubling data matters the same
    at 50 as at 5,000). Strategies the registry does not know, and rows without an accuracy, are ignored."""
    missing = [column for column in MEASURED_COLUMNS if column not in measured.columns]
    if missing:
        raise TunelabError(f"the measured grid lacks the column(s) {', '.join(missing)}; pass the summary of a "
                           "finished `tunelab compare` grid")
    known = measured[measured["strategy"].isin(NAMES) & measured["accuracy_mean"].notna()]
    if known.empty:
        return None
    nearest = min(known["train_size"].unique(), key=lambda size: (abs(math.log(size / samples)), size))
    rows = {row["strategy"]: row for row in known[known["train_size"] == nearest].to_dict("records")}
    return MeasuredGrid(int(nearest), {name: rows[name] for name in NAMES if name in rows})


def _human_parameters(count: float) -> str:
    return f"{count / 1e9:.3g}B" if count >= 1e9 else f"{count / 1e6:.3g}M"


def _measured_trade_off(train_size: int, row: dict[str, Any]) -> str:
    spread = "" if math.isnan(row["accuracy_std"]) else f" ± {row['accuracy_std']:.3f}"
    seeds = int(row["seeds"])
    model = f" with {row['model']}" if "model" in row else ""
    return (f"measured{model} at {train_size:,} labels: accuracy {row['accuracy_mean']:.3f}{spread} "
            f"({seeds} seed{'' if seeds == 1 else 's'}), {row['trainable_share'] * 100:.3g}% trainable, "
            f"{human_bytes(row['delta_bytes'])} per task, train {row['train_s_mean']:.0f} s, "
            f"peak {human_bytes(row['peak_memory_bytes'])}, {row['latency_ms']:.1f} ms per example")


def _trade_off(strategy: str, situation: Situation, grid: MeasuredGrid | None) -> str:
    """The measured row when there is one, else the built-in text; near the memory budget (over 75% of it) say
    so, and for LoRA say what QLoRA would need."""
    in_grid = grid is not None and strategy in grid.rows
    text = _measured_trade_off(grid.train_size, grid.rows[strategy]) if in_grid else CATALOG[strategy].trade_off
    needed = estimate_training_memory_gb(strategy, situation)
    if needed > 0.75 * situation.memory_gb:
        text += f"; needs ~{needed:.1f} GB of your {situation.memory_gb:g} GB on one device"
        text += engine_note(strategy, situation)
        if strategy == "lora":
            text += f". {qlora_note()}"
    return text


def _model_name(facts: StrategyEntry, situation: Situation) -> str:
    """The prompt model for a prompt-based strategy where there is one; the user's model; else an embedded one
    (smollm2, the causal LM, where an LM head or generation is needed; minilm otherwise), or the placeholder MODEL
    for a large model with no name."""
    if facts.prompt_based and situation.prompt_model is not None:
        return situation.prompt_model
    if situation.model is not None:
        return situation.model
    if situation.model_parameters >= 1e9:
        return "MODEL"
    return "smollm2" if facts.prompt_based or situation.task == "generation" else "minilm"


def _command(facts: StrategyEntry, situation: Situation, data: list[str]) -> str:
    words = ["tunelab", "train", "--model", _model_name(facts, situation), *data, "--strategy", facts.name]
    if situation.task != "classification":
        words += ["--task", situation.task]
    fit = runnable_fit(facts.name, situation)
    if fit is not None:
        words += ["--nproc", str(fit[1]), "--distributed", fit[0]]
    return " ".join(shlex.quote(word) for word in words)


def _fields(situation: Situation, grid: MeasuredGrid | None) -> dict[str, Any]:
    """The names a rule's `because` may use."""
    fields = {**asdict(situation), "model_size": _human_parameters(situation.model_parameters)}
    if grid is not None:
        fields |= {"grid_size": grid.train_size, "best_strategy": grid.best, "best_accuracy": grid.best_accuracy}
    return fields


def _points(rule: Rule, situation: Situation, grid: MeasuredGrid | None) -> dict[str, float]:
    if not rule.applies(situation):
        return {}
    if callable(rule.points):
        return rule.points(grid) if grid is not None else {}
    return rule.points


def _recommendation(facts: StrategyEntry, situation: Situation, grid: MeasuredGrid | None,
                    moves: list[tuple[Rule, dict[str, float]]], data: list[str]) -> Recommendation:
    fields = {**_fields(situation, grid), "strategy": facts.name,
              "needed_gb": estimate_training_memory_gb(facts.name, situation),
              "engine_note": engine_note(facts.name, situation),
              "task_reason": facts.not_served.get(situation.task)}
    moved = sorted(((points[facts.name], rule) for rule, points in moves if points.get(facts.name)),
                   key=lambda move: -abs(move[0]))
    blocked = [constraint.because.format(**fields) for constraint in CONSTRAINTS if constraint.blocks(facts, situation)]
    return Recommendation(strategy=facts.name, score=float(sum(points for points, _ in moved)),
                          reasons=blocked + [rule.because.format(**fields) for _, rule in moved],
                          trade_off=_trade_off(facts.name, situation, grid), command=_command(facts, situation, data),
                          feasible=not blocked)


def recommend(situation: Situation, measured: pd.DataFrame | None = None,
              data: str | list[str] = "movie-snippets") -> list[Recommendation]:
    """Every strategy, best first: the points of the rules that apply, summed (ties in registry order), with the
    strategies a constraint blocks after all the feasible ones. `measured` is a `tunelab compare` summary (one row
    per strategy and training-set size); its rows nearest the user's label count add the measured rules' points."""
    grid = _measured_grid(measured, situation.samples) if measured is not None else None
    moves = [(rule, _points(rule, situation, grid)) for rule in RULES]
    options = ["--data", data] if isinstance(data, str) else data  # a dataset, or `train` options for a file
    recommendations = [_recommendation(facts, situation, grid, moves, options) for facts in CATALOG.values()
                       if not facts.composes]
    order = {name: index for index, name in enumerate(NAMES)}
    return sorted(recommendations, key=lambda r: (not r.feasible, -r.score, order[r.strategy]))
