"""Black-box tuning (Sun et al. 2022): a soft prompt found without gradients. CMA-ES searches a small space (`z`, the
intrinsic dimension) that a fixed random matrix projects to the prompt's embeddings; each candidate costs one call
(every training shot with every label word), and the loss is the cross-entropy of the true labels. After each
generation the best candidate so far is scored on the validation shots (one more call), which picks the result and
stops the search early when it stops improving.

The search state (CMA-ES, the best candidate, the curve and the calls made) is saved after every generation, so a
search killed at any point and started again resumes where it was, without counting any call twice.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import cma
import numpy as np
import pandas as pd
import torch
from safetensors.torch import save_file

from tunelab.blackbox.endpoints import Endpoint
from tunelab.blackbox.loop import resume, search_rounds
from tunelab.blackbox.prompts import LabelPrompts, Shots
from tunelab.errors import TunelabError

SOFT_PROMPT_FILE = "soft_prompt.safetensors"


@dataclass(frozen=True)
class BBTSettings:
    virtual_tokens: int = 50  # BBT's prompt length
    intrinsic_dim: int = 500  # the searched space
    population: int = 20
    sigma: float = 1.0  # CMA-ES's initial step
    embedding_std: float = 0.02  # the scale of the projected prompt (BBT: the embeddings' standard deviation)
    patience: int = 20  # generations without a better validation accuracy before stopping; 0: never
    seed: int = 42


@dataclass
class SearchState:
    strategy: cma.CMAEvolutionStrategy
    best_z: np.ndarray
    best_validation: float = -1.0
    best_loss: float = float("inf")
    generation: int = 0
    stale: int = 0  # generations since the validation accuracy last improved
    curve: list[dict] = field(default_factory=list)  # per generation: calls, best loss, validation accuracy


class BlackBoxTuning:
    name = "bbt"

    def __init__(self, endpoint: Endpoint, prompts: LabelPrompts, settings: BBTSettings):
        if not endpoint.soft_prompts:
            raise TunelabError(f"bbt puts a soft prompt before the text and {endpoint.describe()} takes none: use "
                               f"the model in this process or a `tunelab serve` endpoint, or --method search")
        if endpoint.hidden_size is None:
            raise TunelabError(f"{endpoint.describe()} does not say its hidden size, which a soft prompt needs")
        self.endpoint, self.prompts, self.settings = endpoint, prompts, settings
        width = settings.virtual_tokens * endpoint.hidden_size
        rng = np.random.default_rng(settings.seed)
        # BBT's scale: a z of unit entries projects to entries of about the embeddings' standard deviation
        self.projection = rng.normal(0, settings.embedding_std / np.sqrt(settings.intrinsic_dim),
                                     (width, settings.intrinsic_dim)).astype(np.float32)

    def soft_prompt(self, z: np.ndarray) -> np.ndarray:
        return (self.projection @ z.astype(np.float32)).reshape(self.settings.virtual_tokens, -1)

    def evaluate(self, z: np.ndarray | None, data: Shots) -> tuple[float, float]:
        """(loss, accuracy) of a candidate (None: no soft prompt) on some shots: one call."""
        return self.prompts.measure(self.endpoint, data, None if z is None else self.soft_prompt(z))

    def start(self) -> SearchState:
        settings = self.settings
        strategy = cma.CMAEvolutionStrategy(np.zeros(settings.intrinsic_dim), settings.sigma,
                                            {"popsize": settings.population, "seed": settings.seed, "verbose": -9})
        return SearchState(strategy, np.zeros(settings.intrinsic_dim))

    def search(self, train_rows: pd.DataFrame, validation_rows: pd.DataFrame, checkpoint: Path,
               on_generation=lambda state: None) -> SearchState:
        """Generations of CMA-ES until the budget has no room for another (population + 1 validation calls), or
        the validation accuracy stops improving; resumes from `checkpoint` when it exists."""
        train, validation = self.prompts.shots(train_rows), self.prompts.shots(validation_rows)
        state = resume(checkpoint) or self.start()
        return search_rounds(self.endpoint, state, self.settings.population + 1, self.settings.patience,
                             lambda: self.generation(state, train, validation), checkpoint, on_generation)

    def generation(self, state: SearchState, train: Shots, validation: Shots) -> None:
        candidates = state.strategy.ask()
        losses = [self.evaluate(z, train)[0] for z in candidates]
        state.strategy.tell(candidates, losses)
        best = int(np.argmin(losses))
        state.generation += 1
        if losses[best] < state.best_loss:
            state.best_loss = losses[best]
            _, accuracy = self.evaluate(candidates[best], validation)
            if accuracy > state.best_validation:
                state.best_validation, state.best_z, state.stale = accuracy, np.asarray(candidates[best]), 0
            else:
                state.stale += 1
        else:
            state.stale += 1
        state.curve.append({"generation": state.generation, "calls": self.endpoint.usage.calls,
                            "train_loss": state.best_loss, "validation_accuracy": state.best_validation})

    def asked(self, state: SearchState | None, rows: pd.DataFrame) -> tuple[list[str], np.ndarray | None]:
        """The prompts and soft prompt the found candidate asks `rows` with (None: the template alone)."""
        return self.prompts.prompts(rows), None if state is None else self.soft_prompt(state.best_z)

    def save(self, state: SearchState, folder: Path) -> dict:
        """The found soft prompt in `folder`; what blackbox.yaml records of it."""
        save_file({"soft_prompt": torch.from_numpy(self.soft_prompt(state.best_z))}, folder / SOFT_PROMPT_FILE)
        return {"soft_prompt": SOFT_PROMPT_FILE, "bbt": asdict(self.settings)}

