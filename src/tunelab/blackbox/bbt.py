"""Black-box tuning (Sun et al. 2022): a soft prompt found without gradients. The soft prompt is the template's own
words as input embeddings (P-tuning's continuous template, where the gradient-trained soft-template starts too), and
CMA-ES searches a small space (`z`, the intrinsic dimension) that a fixed random matrix projects to an offset from
them, at the scale of the model's token embeddings; each candidate costs one call (every training shot with every
label word), and the loss is the cross-entropy of the true labels. The search runs a set number of generations (the
budget may end it sooner), and its result is the average of CMA-ES's means (where it believes the best prompt lies)
over the last half of them, ten at most; after each generation that average is scored on the validation shots (one
more call), and at the end it is kept only if it beats the template alone there: otherwise the run keeps the
template, and says so.

Why the template's words rather than BBT's prompt before the text: at z = 0 the model reads exactly the template,
so the search starts from the best prompt it has and every step is a change to it. A block of extra tokens before
the text starts worse than the template (random or vocabulary embeddings alike, measured on SmolLM2's training
shots), and the search's first calls go to undoing that.

Why the mean rather than the generation's best candidate: 32 training shots measure a prompt's loss on unseen text
with noise, and the candidate that fits them best is the one whose noise flattered it most; the mean averages the
generation's candidates, weighted by rank, and is what pycma recommends as the answer for a noisy objective
(`result.xfavorite`).

Why a set length and an average rather than early stopping on the validation shots: 32 validation shots cannot see a
search start to fit its 32 training shots' noise. On a dev slice of 512 held-out movie snippets (a diagnostic, not
the test split), SmolLM2's searches gained 1-5 points over the template by generation 10-25 and then lost part of
it while their validation loss kept falling; the mean best on validation, kept after 20 generations without a better
one, gained 2.2 points on average over three seeds, and the average of generations 16-25's means 3.4. Averaging the
last means (Polyak averaging of the iterates) also takes out much of the generation-to-generation wander of one
mean, which the shots cannot tell from progress.

The search state (CMA-ES, the words' embeddings it started from, the last means, the curve and the calls made) is
saved after every generation, so a search killed at any point and started again resumes where it was, without
counting any call twice.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import cma
import numpy as np
import pandas as pd
import torch
from safetensors.torch import save_file

from tunelab.blackbox.endpoints import Endpoint, Prompt
from tunelab.blackbox.loop import resume, search_rounds
from tunelab.blackbox.prompts import LabelPrompts, Shots
from tunelab.errors import TunelabError

SOFT_PROMPT_FILE = "soft_prompt.safetensors"


@dataclass(frozen=True)
class BBTSettings:
    intrinsic_dim: int = 500  # the searched space
    population: int = 20
    sigma: float = 0.25  # CMA-ES's initial step: each word's embedding moved by about a quarter of its scale
    generations: int = 25  # the search's length, unless the budget ends it sooner
    average: int = 10  # the result averages the means of the last half of the generations, this many at most
    seed: int = 42


@dataclass
class SearchState:
    strategy: cma.CMAEvolutionStrategy
    start: list[np.ndarray]  # the template's words' input embeddings, a block per run of words: z = 0
    template: tuple[float, float]  # the template alone on the validation shots: (accuracy, -loss)
    means: list[np.ndarray] = field(default_factory=list)  # CMA-ES's means, the last `average` generations'
    result_z: np.ndarray | None = None  # the average of the last half of them
    result: tuple[float, float] = (-1.0, -float("inf"))  # its (accuracy, -loss) on the validation shots
    best_loss: float = float("inf")  # the lowest training loss of any candidate
    generation: int = 0
    curve: list[dict] = field(default_factory=list)  # per generation: calls, best loss, validation accuracy

    @property
    def found(self) -> np.ndarray | None:
        """The result if it beats the template alone on the validation shots, else None."""
        return self.result_z if self.result > self.template else None

    @property
    def best_validation(self) -> float:
        """The validation accuracy of what the run holds: the result, or the template alone."""
        return max(self.result, self.template)[0]


class BlackBoxTuning:
    name = "bbt"

    def __init__(self, endpoint: Endpoint, prompts: LabelPrompts, settings: BBTSettings):
        if not endpoint.soft_prompts:
            raise TunelabError(f"bbt searches soft prompts and {endpoint.describe()} takes none: use the model in "
                               f"this process or a `tunelab serve` endpoint, or --method search")
        if endpoint.embedding_std is None:
            raise TunelabError(f"{endpoint.describe()} does not say its embeddings' scale, which a soft prompt's "
                               f"steps need")
        self.endpoint, self.prompts, self.settings = endpoint, prompts, settings
        self.softened = LabelPrompts(prompts.template.softened(), prompts.verbalizer)
        if not self.softened.soft_words:
            raise TunelabError("bbt searches the template's words as a soft prompt and this template has none: give "
                               "--template with words around {text}, e.g. '{text} It was {label}'")
        self.start_blocks: list[np.ndarray] = []
        self.projection = np.empty((0, settings.intrinsic_dim), dtype=np.float32)

    def begin_at(self, start: list[np.ndarray]) -> None:
        """Search around `start` (z = 0): the projection, seeded, from z to an offset of its every entry. BBT's
        scale: a z of unit entries projects to entries of about the embeddings' standard deviation."""
        self.start_blocks = start
        size = sum(block.size for block in start)
        self.projection = np.random.default_rng(self.settings.seed).normal(
            0, self.endpoint.embedding_std / np.sqrt(self.settings.intrinsic_dim),
            (size, self.settings.intrinsic_dim)).astype(np.float32)

    def soft_prompt(self, z: np.ndarray) -> list[np.ndarray]:
        """The blocks of the soft prompt `z` stands for."""
        offset = self.projection @ z.astype(np.float32)
        blocks, first = [], 0
        for block in self.start_blocks:
            blocks.append(block + offset[first:first + block.size].reshape(block.shape))
            first += block.size
        return blocks

    def evaluate(self, z: np.ndarray | None, data: Shots) -> tuple[float, float]:
        """(loss, accuracy) of a candidate on some shots, asked with the softened template (None: the template
        alone, as text): one call."""
        if z is None:
            return self.prompts.measure(self.endpoint, data)
        return self.softened.measure(self.endpoint, data, self.soft_prompt(z))

    def start(self, validation: Shots) -> SearchState:
        """CMA-ES at z = 0, the template's words' embeddings (a call per run of words), and the template alone scored
        on the validation shots (one call): what a mean must beat to be the result."""
        settings = self.settings
        strategy = cma.CMAEvolutionStrategy(np.zeros(settings.intrinsic_dim), settings.sigma,
                                            {"popsize": settings.population, "seed": settings.seed, "verbose": -9})
        start = [self.endpoint.token_embeddings(words) for words in self.softened.soft_words]
        loss, accuracy = self.evaluate(None, validation)
        return SearchState(strategy, start, template=(accuracy, -loss))

    def search(self, train_rows: pd.DataFrame, validation_rows: pd.DataFrame, checkpoint: Path,
               on_generation=lambda state: None) -> SearchState:
        """`generations` of CMA-ES, fewer if the budget has no room for another (population + 1 validation calls);
        resumes from `checkpoint` when it exists."""
        train, validation = self.softened.shots(train_rows), self.softened.shots(validation_rows)
        state = resume(checkpoint) or self.start(self.prompts.shots(validation_rows))
        self.begin_at(state.start)
        return search_rounds(self.endpoint, state, self.settings.population + 1, 0,
                             lambda: self.generation(state, train, validation), checkpoint, on_generation,
                             rounds=self.settings.generations)

    def generation(self, state: SearchState, train: Shots, validation: Shots) -> None:
        candidates = state.strategy.ask()
        losses = [self.evaluate(z, train)[0] for z in candidates]
        state.strategy.tell(candidates, losses)
        state.best_loss = min(state.best_loss, *losses)
        state.generation += 1
        state.means = [*state.means, np.array(state.strategy.result.xfavorite)][-self.settings.average:]
        state.result_z = np.mean(state.means[-((state.generation + 1) // 2):], axis=0)
        loss, accuracy = self.evaluate(state.result_z, validation)
        state.result = (accuracy, -loss)
        state.curve.append({"generation": state.generation, "calls": self.endpoint.usage.calls,
                            "train_loss": state.best_loss, "validation_accuracy": state.best_validation})

    def asked(self, state: SearchState | None, rows: pd.DataFrame) -> tuple[list[Prompt], list[np.ndarray] | None]:
        """What `rows` are asked with: their prompts, and the soft prompt found (None: the template alone)."""
        found = None if state is None else state.found
        if found is None:
            return self.prompts.prompts(rows), None
        return self.softened.prompts(rows), self.soft_prompt(found)

    def save(self, state: SearchState, folder: Path) -> dict:
        """The found soft prompt in `folder` (its blocks one after another), if the search found one better than the
        template alone; what blackbox.yaml records of it."""
        record = {"bbt": asdict(self.settings), "embedding_std": self.endpoint.embedding_std}
        if state.found is None:
            return record
        blocks = self.soft_prompt(state.found)
        save_file({"soft_prompt": torch.from_numpy(np.concatenate(blocks))}, folder / SOFT_PROMPT_FILE)
        return {"soft_prompt": SOFT_PROMPT_FILE, "soft_lengths": [len(block) for block in blocks], **record}

