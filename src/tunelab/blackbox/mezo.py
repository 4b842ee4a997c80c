"""MeZO (Malladi et al. 2023): a soft prompt trained by zeroth-order SPSA, gradients estimated from two forward passes
and no backward one. Each step perturbs the prompt along a random direction `z` both ways, asks the loss at each
(two calls) and moves against `z` by the difference: the gradient's projection on `z`. The reference for "gradients
without backprop" at a count of forward passes; a round is `--eval-every` steps and one validation call, and the
prompt kept is the one with the best validation accuracy.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import save_file

from tunelab.blackbox.bbt import SOFT_PROMPT_FILE
from tunelab.blackbox.endpoints import Endpoint
from tunelab.blackbox.loop import resume, search_rounds
from tunelab.blackbox.prompts import LabelPrompts, Shots
from tunelab.errors import TunelabError


@dataclass(frozen=True)
class MeZOSettings:
    virtual_tokens: int = 10
    learning_rate: float = 1e-3
    epsilon: float = 1e-3  # the perturbation's size
    init_std: float = 0.02  # the prompt's starting values: normal, this standard deviation
    eval_every: int = 10  # steps per round, each round ending with one validation call
    patience: int = 10  # rounds without a better validation accuracy before stopping; 0: never
    seed: int = 42


@dataclass
class MeZOState:
    theta: np.ndarray
    best_theta: np.ndarray
    rng: np.random.Generator
    best_validation: float = -1.0
    generation: int = 0  # rounds done
    steps: int = 0
    stale: int = 0
    curve: list[dict] = field(default_factory=list)


class MeZO:
    name = "mezo"

    def __init__(self, endpoint: Endpoint, prompts: LabelPrompts, settings: MeZOSettings):
        if not endpoint.soft_prompts or endpoint.hidden_size is None:
            raise TunelabError(f"mezo trains a soft prompt and {endpoint.describe()} takes none (or does not say its "
                               f"hidden size): use the model in this process or a `tunelab serve` endpoint")
        self.endpoint, self.prompts, self.settings = endpoint, prompts, settings

    def loss(self, theta: np.ndarray, data: Shots) -> tuple[float, float]:
        """(loss, accuracy) with `theta` as the soft prompt: one call."""
        return self.prompts.measure(self.endpoint, data, theta.astype(np.float32))

    def step(self, state: MeZOState, train: Shots) -> None:
        """One SPSA step: two calls."""
        settings = self.settings
        direction = state.rng.standard_normal(state.theta.shape)
        higher = self.loss(state.theta + settings.epsilon * direction, train)[0]
        lower = self.loss(state.theta - settings.epsilon * direction, train)[0]
        state.theta = state.theta - settings.learning_rate * (higher - lower) / (2 * settings.epsilon) * direction
        state.steps += 1

    def round(self, state: MeZOState, train: Shots, validation: Shots) -> None:
        for _ in range(self.settings.eval_every):
            self.step(state, train)
        accuracy = self.loss(state.theta, validation)[1]
        state.generation += 1
        if accuracy > state.best_validation:
            state.best_validation, state.best_theta, state.stale = accuracy, state.theta.copy(), 0
        else:
            state.stale += 1
        state.curve.append({"generation": state.generation, "steps": state.steps, "calls": self.endpoint.usage.calls,
                            "validation_accuracy": state.best_validation})

    def search(self, train_rows: pd.DataFrame, validation_rows: pd.DataFrame, checkpoint: Path,
               on_generation=lambda state: None) -> MeZOState:
        train, validation = self.prompts.shots(train_rows), self.prompts.shots(validation_rows)
        state = resume(checkpoint)
        if state is None:
            rng = np.random.default_rng(self.settings.seed)
            theta = rng.normal(0, self.settings.init_std, (self.settings.virtual_tokens, self.endpoint.hidden_size))
            state = MeZOState(theta, theta.copy(), rng)
        return search_rounds(self.endpoint, state, 2 * self.settings.eval_every + 1, self.settings.patience,
                             lambda: self.round(state, train, validation), checkpoint, on_generation)

    def asked(self, state: MeZOState | None, rows: pd.DataFrame) -> tuple[list[str], np.ndarray | None]:
        return self.prompts.prompts(rows), None if state is None else state.best_theta.astype(np.float32)

    def save(self, state: MeZOState, folder: Path) -> dict:
        save_file({"soft_prompt": torch.from_numpy(state.best_theta.astype(np.float32))}, folder / SOFT_PROMPT_FILE)
        return {"soft_prompt": SOFT_PROMPT_FILE, "mezo": asdict(self.settings), "steps": state.steps}
