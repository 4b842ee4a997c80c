"""MeZO (Malladi et al. 2023): zeroth-order SPSA, gradients estimated from two forward passes and no backward one.
Each step moves the trained values theta along a random direction `z` both ways, asks the loss at each (two calls)
and steps against `z` by the difference: the gradient's projection on `z`. The reference for "gradients without
backprop" at a count of forward passes; a round is `--eval-every` steps and one validation call, and the values kept
are those with the best validation accuracy.

What trains (`tune`) is a soft prompt before the text (any endpoint that takes one) or a LoRA on the weights of the
model in this process (MeZO's own setting beside full fine-tuning). One SPSA loop serves both: a target is a list of
tensors and a loss. MeZO's seed trick: `z` is never stored, only the seed it is drawn from, drawn again to move each
way and to update. The tensors are always set from theta, never walked there and back (theta + eps z - 2 eps z +
eps z drifts by an ulp a step), so a step with a zero update leaves them bit-identical.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import save_file

from tunelab.blackbox.bbt import SOFT_PROMPT_FILE
from tunelab.blackbox.endpoints import Endpoint, InProcess
from tunelab.blackbox.loop import resume, search_rounds
from tunelab.blackbox.prompts import LabelPrompts, Shots
from tunelab.errors import TunelabError
from tunelab.strategies.lora import ALL_LINEAR, Lora, LoraOptions
from tunelab.strategies.peft_adapter import ADAPTER_DIR

TUNED = ("soft-prompt", "lora")
# (learning rate, epsilon) when none is given. MeZO's own: a prefix 1e-2/1e-1, a LoRA 1e-4/1e-2 (OPT-13B, batch 16);
# the soft prompt's kept from its first measurements here, the LoRA's epsilon is the paper's.
STEP_SIZES = {"soft-prompt": (1e-3, 1e-3), "lora": (1e-4, 1e-2)}


@dataclass(frozen=True)
class MeZOSettings:
    tune: str = "soft-prompt"  # what trains: a soft prompt, or a LoRA on the model in this process
    virtual_tokens: int = 10  # soft-prompt: its length
    rank: int = 8  # lora: the update's rank
    target_modules: str | None = None  # lora: comma-separated module names, or all-linear; None: query and value
    learning_rate: float | None = None  # None: STEP_SIZES' for what trains
    epsilon: float | None = None  # the perturbation's size; None: STEP_SIZES'
    init_std: float = 0.02  # soft-prompt: its starting values, normal with this standard deviation
    eval_every: int = 10  # steps per round, each round ending with one validation call
    patience: int = 10  # rounds without a better validation accuracy before stopping; 0: never
    seed: int = 42

    def __post_init__(self):
        if self.tune not in TUNED:
            raise TunelabError(f"mezo: unknown --tune '{self.tune}'; choose {', '.join(TUNED)}")
        learning_rate, epsilon = STEP_SIZES[self.tune]
        if self.learning_rate is None:
            object.__setattr__(self, "learning_rate", learning_rate)  # frozen: filled once, on construction
        if self.epsilon is None:
            object.__setattr__(self, "epsilon", epsilon)


@dataclass
class MeZOState:
    theta: np.ndarray  # every trained value, flat (float32)
    best_theta: np.ndarray
    rng: np.random.Generator  # draws each step's seed
    best_validation: float = -1.0
    generation: int = 0  # rounds done
    steps: int = 0
    stale: int = 0
    curve: list[dict] = field(default_factory=list)


class SoftPrompt:
    """A soft prompt put before every prompt: one (virtual tokens, hidden) tensor, asked through the endpoint."""

    def __init__(self, endpoint: Endpoint, prompts: LabelPrompts, settings: MeZOSettings):
        if not endpoint.soft_prompts or endpoint.hidden_size is None:
            raise TunelabError(f"mezo trains a soft prompt and {endpoint.describe()} takes none (or does not say its "
                               f"hidden size): use the model in this process or a `tunelab serve` endpoint, or "
                               f"--tune lora in this process")
        self.endpoint, self.prompts = endpoint, prompts
        generator = torch.Generator().manual_seed(settings.seed)
        self.tensors = [torch.randn(settings.virtual_tokens, endpoint.hidden_size, generator=generator)
                        * settings.init_std]

    def loss(self, data: Shots) -> tuple[float, float]:
        return self.prompts.measure(self.endpoint, data, self.tensors[0].numpy())

    def answering(self, theta: np.ndarray | None) -> np.ndarray | None:
        """The soft prompt `theta` asks with (None: none)."""
        return None if theta is None else theta.reshape(self.tensors[0].shape)

    def save(self, theta: np.ndarray, folder: Path) -> dict:
        save_file({"soft_prompt": torch.from_numpy(self.answering(theta).copy())}, folder / SOFT_PROMPT_FILE)
        return {"soft_prompt": SOFT_PROMPT_FILE}


class LoraWeights:
    """A LoRA (PEFT's, as the `lora` strategy builds it) on the model in this process, perturbed in place. It starts
    at the base model exactly (B = 0), which is how the zero-shot baseline is asked."""

    def __init__(self, endpoint: Endpoint, prompts: LabelPrompts, settings: MeZOSettings):
        if not isinstance(endpoint, InProcess):
            raise TunelabError(f"mezo --tune lora perturbs the model's weights, which {endpoint.describe()} does not "
                               f"give: use the model in this process (no --endpoint)")
        self.endpoint, self.prompts = endpoint, prompts
        targets = settings.target_modules
        options = LoraOptions(r=settings.rank, target_modules=targets if targets in (None, ALL_LINEAR) else
                              targets.split(","))
        with torch.random.fork_rng():  # A's initialisation from the run's seed, the caller's random state untouched
            torch.manual_seed(settings.seed)
            Lora().apply(endpoint.model, options)
        self.tensors = [parameter.data for parameter in endpoint.model.parameters() if parameter.requires_grad]
        self.initial = flatten(self.tensors)

    def loss(self, data: Shots) -> tuple[float, float]:
        self.endpoint.cache.clear()  # the weights moved: no answer kept still holds
        return self.prompts.measure(self.endpoint, data)

    def answering(self, theta: np.ndarray | None) -> None:
        """Sets the weights to `theta` (None: the base model's); the prompts carry no soft prompt."""
        assign(self.tensors, self.initial if theta is None else theta)
        self.endpoint.cache.clear()

    def save(self, theta: np.ndarray, folder: Path) -> dict:
        """The adapter in PEFT's format, loadable by plain `peft` onto the base model."""
        self.answering(theta)
        self.endpoint.model.backbone.save_pretrained(folder / ADAPTER_DIR)
        return {"adapter": ADAPTER_DIR}


TARGETS = {"soft-prompt": SoftPrompt, "lora": LoraWeights}


def flatten(tensors: list[torch.Tensor]) -> np.ndarray:
    return torch.cat([tensor.detach().reshape(-1).float().cpu() for tensor in tensors]).numpy()


def assign(tensors: list[torch.Tensor], theta: np.ndarray, seed: int = 0, scale: float = 0.0) -> None:
    """tensors <- theta + scale * z, z ~ N(0, I) drawn from `seed`, tensor by tensor (never held whole)."""
    generator = torch.Generator().manual_seed(seed)
    values = torch.from_numpy(theta)
    start = 0
    with torch.no_grad():
        for tensor in tensors:
            chunk = values[start:start + tensor.numel()].view(tensor.shape)
            if scale:
                chunk = chunk + scale * torch.randn(tensor.shape, generator=generator)
            tensor.copy_(chunk)
            start += tensor.numel()


class MeZO:
    name = "mezo"

    def __init__(self, endpoint: Endpoint, prompts: LabelPrompts, settings: MeZOSettings):
        self.endpoint, self.prompts, self.settings = endpoint, prompts, settings
        self.target = TARGETS[settings.tune](endpoint, prompts, settings)

    def step(self, state: MeZOState, train: Shots) -> None:
        """One SPSA step: two calls, then theta -= lr * projected gradient * z."""
        settings, tensors = self.settings, self.target.tensors
        seed = int(state.rng.integers(2**63 - 1))
        assign(tensors, state.theta, seed, settings.epsilon)
        higher = self.target.loss(train)[0]
        assign(tensors, state.theta, seed, -settings.epsilon)
        lower = self.target.loss(train)[0]
        projected = (higher - lower) / (2 * settings.epsilon)
        assign(tensors, state.theta, seed, -settings.learning_rate * projected)
        state.theta = flatten(tensors)
        state.steps += 1

    def round(self, state: MeZOState, train: Shots, validation: Shots) -> None:
        for _ in range(self.settings.eval_every):
            self.step(state, train)
        accuracy = self.target.loss(validation)[1]
        state.generation += 1
        if accuracy > state.best_validation:
            state.best_validation, state.best_theta, state.stale = accuracy, state.theta.copy(), 0
        else:
            state.stale += 1
        state.curve.append({"generation": state.generation, "steps": state.steps, "calls": self.endpoint.usage.calls,
                            "validation_accuracy": state.best_validation})

    def start(self) -> MeZOState:
        theta = flatten(self.target.tensors)
        return MeZOState(theta, theta.copy(), np.random.default_rng(self.settings.seed))

    def search(self, train_rows: pd.DataFrame, validation_rows: pd.DataFrame, checkpoint: Path,
               on_generation=lambda state: None) -> MeZOState:
        train, validation = self.prompts.shots(train_rows), self.prompts.shots(validation_rows)
        state = resume(checkpoint) or self.start()
        assign(self.target.tensors, state.theta)  # where a resumed search stopped
        return search_rounds(self.endpoint, state, 2 * self.settings.eval_every + 1, self.settings.patience,
                             lambda: self.round(state, train, validation), checkpoint, on_generation)

    def asked(self, state: MeZOState | None, rows: pd.DataFrame) -> tuple[list[str], np.ndarray | None]:
        """The prompts, and the soft prompt, that what was found asks `rows` with (state None: the template alone);
        a LoRA is set on the model meanwhile."""
        return self.prompts.prompts(rows), self.target.answering(None if state is None else state.best_theta)

    def save(self, state: MeZOState, folder: Path) -> dict:
        return {**self.target.save(state.best_theta, folder), "mezo": asdict(self.settings), "steps": state.steps}
