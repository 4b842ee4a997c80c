"""`tunelab compose hub`: a new classification task from a few labelled examples and the LoRA runs of other tasks
(LoraHub, Huang et al. 2024): one weight per source run, found without gradients, so that the weighted sum of their
updates scores best on the examples.

The sum of the sources' updates is held exactly, as their factors side by side (rank = the sum of their ranks), and
a candidate's weights scale each source's columns of B. The objective, for weights w, under sum_i w_i dW_i:
- head-based sources (`lora` runs): the cross-entropy on the validation shots of a logistic-regression head fitted on
  the training shots' sentence vectors (a head fitted and scored on the same few examples would separate them for
  any w);
- prompt-based sources (`pet` runs tuned with lora): the cross-entropy of the template's label words on every shot;
  no head is fitted;
plus l1 * sum_i |w_i| (LoraHub's regulariser). CMA-ES (the `cma` package) searches w in [-bound, bound] within a
budget of evaluations, each one forward of the shots. The run that comes out is an ordinary run of the sources'
strategy on the new task: the best weights' update (and a head fitted on every shot). Its metrics record the weights,
the search curve, and on the test split the base model (weights 0) and each source alone, with heads fitted alike.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cma
import numpy as np
import pandas as pd
import torch
from peft import set_peft_model_state_dict
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss

from tunelab.compose.bundle import named_runs, shared_base
from tunelab.compose.task_vectors import concatenate, lora_adapter, read_lora
from tunelab.config import RunConfig, build_config
from tunelab.errors import TunelabError
from tunelab.predict import Predictor
from tunelab.prompting.model import PromptClassifier
from tunelab.recipes.base import Prepared
from tunelab.recipes.runs import commit, verdict
from tunelab.resources import PeakMemory, run_resources
from tunelab.runs import StagedRun, read_run_config
from tunelab.strategies.catalog import entry
from tunelab.strategies.peft_adapter import ADAPTER_DIR
from tunelab.strategies.registry import configure
from tunelab.task_catalog import recipe_for
from tunelab.tasks.classification import LabelMap, SequenceClassifier


@dataclass(frozen=True)
class HubSearch:
    budget: int = 80  # objective evaluations
    l1: float = 0.05  # LoraHub's coefficient on sum |w|
    bound: float = 1.5  # LoraHub's box for each weight
    step: float = 0.5  # CMA-ES's initial step size, from w = 0

    def check(self) -> None:
        if self.budget < 2:
            raise TunelabError(f"--budget is the number of weight settings tried: at least 2, not {self.budget}")
        if self.l1 < 0 or self.bound <= 0:
            raise TunelabError("--l1 must be at least 0 and --bound above 0")


class Composition:
    """The new task's classifier over the sources' summed updates, whose weights a search sets."""

    def __init__(self, model: SequenceClassifier | PromptClassifier, ranks: list[int], predictor: Predictor,
                 max_length: int):
        """`predictor` wraps `model`, so it answers with whatever weights were set last."""
        self.model, self.predictor, self.max_length = model, predictor, max_length
        self.prompt_based = isinstance(model, PromptClassifier)
        self.columns = torch.repeat_interleave(torch.arange(len(ranks)), torch.tensor(ranks))  # B column -> source
        state = model.backbone.state_dict()
        self.ups = {name: tensor.clone() for name, tensor in state.items() if name.endswith("lora_B.default.weight")}

    def set_weights(self, weights: np.ndarray) -> None:
        scale = torch.as_tensor(weights, dtype=torch.float32)[self.columns]
        for name, up in self.ups.items():
            self.model.backbone.get_parameter(name).data.copy_(up * scale)

    def logits(self, rows: pd.DataFrame) -> np.ndarray:
        """A prompt-based classifier's label scores for `rows` (through its template)."""
        return self.predictor.logits(rows)

    @torch.no_grad()
    def features(self, texts: list[str]) -> np.ndarray:
        batch = self.predictor.tokenizer(texts, truncation=True, max_length=self.max_length, padding=True,
                                         return_tensors="pt")
        return self.model.embed(batch["input_ids"], batch["attention_mask"]).float().numpy()


def fit_head(features: np.ndarray, labels: np.ndarray) -> LogisticRegression:
    return LogisticRegression(C=1.0, max_iter=2000).fit(features, labels)


def set_head(model: SequenceClassifier, head: LogisticRegression, width: int) -> None:
    """The fitted logistic regression as the classifier's linear head: its logits give the same probabilities (a
    two-class regression's one score z becomes the logits (0, z))."""
    weight, bias = np.zeros((width, head.coef_.shape[1]), np.float32), np.zeros(width, np.float32)
    classes = head.classes_.astype(int)
    if len(classes) == 2:
        weight[classes[1]], bias[classes[1]] = head.coef_[0], head.intercept_[0]
    else:
        weight[classes], bias[classes] = head.coef_, head.intercept_
    linear = model.head[1]
    linear.weight.data.copy_(torch.from_numpy(weight))
    linear.bias.data.copy_(torch.from_numpy(bias))


def _source_runs(sources: list[str]) -> tuple[str, dict[str, Path], bool]:
    """The source runs, after checking that there are several lora runs of one kind on one base: the base, the
    runs, and whether they are prompt-based (pet tuned with lora) rather than head-based."""
    runs = named_runs(sources)
    if len(runs) < 2:
        raise TunelabError("composition needs at least two source runs")
    configs = {name: read_run_config(run) for name, run in runs.items()}
    kinds = {}
    for name, config in configs.items():
        tuned = config.strategy.options.get("tune") if config.strategy.name == "pet" else None
        if tuned is not None and entry(tuned).delta == "lora":
            kinds[name] = True
        elif entry(config.strategy.name).delta == "lora" and config.task != "generation":
            kinds[name] = False
        else:
            raise TunelabError(f"{runs[name]} is a {config.strategy.name} {config.task} run: composition weighs the "
                               f"updates of head-based lora runs, or of pet runs tuned with lora")
    if len(set(kinds.values())) > 1:
        raise TunelabError("the runs mix head-based lora and prompt-based pet runs: compose runs of one kind")
    return shared_base(runs, configs)[0], runs, next(iter(kinds.values()))


class Shots:
    """The K labelled examples per label, for training and as many for validation."""

    def __init__(self, prepared: Prepared):
        labels: LabelMap = prepared.targets
        self.width = labels.width
        self.train, self.validation = prepared.splits.train, prepared.splits.validation
        self.train_y = np.asarray(labels.encode(self.train["label"].tolist(), "training shots"))
        self.validation_y = np.asarray(labels.encode(self.validation["label"].tolist(), "validation shots"))

    def score(self, composition: Composition) -> tuple[float, float]:
        """(cross-entropy, accuracy): a prompt-based classifier's on every shot; a head-based one's on the validation
        shots, with a head fitted on the training shots."""
        if composition.prompt_based:
            rows = pd.concat([self.train, self.validation])
            truth = np.concatenate([self.train_y, self.validation_y])
            probabilities = torch.softmax(torch.from_numpy(composition.logits(rows)), dim=-1).numpy()
        else:
            head = fit_head(composition.features(self.train["text"].tolist()), self.train_y)
            truth, probabilities = self.validation_y, np.zeros((len(self.validation), self.width))
            probabilities[:, head.classes_] = head.predict_proba(composition.features(
                self.validation["text"].tolist()))
        return (float(log_loss(truth, probabilities, labels=list(range(self.width)))),
                float((probabilities.argmax(1) == truth).mean()))

    def fit_final_head(self, composition: Composition) -> None:
        """A head-based classifier's head fitted on every shot; a prompt-based one has none."""
        if composition.prompt_based:
            return
        texts = self.train["text"].tolist() + self.validation["text"].tolist()
        head = fit_head(composition.features(texts), np.concatenate([self.train_y, self.validation_y]))
        set_head(composition.model, head, self.width)


def search_weights(composition: Composition, shots: Shots, sources: int, search: HubSearch, seed: int,
                   progress: Callable[[int, float], None] | None) -> tuple[np.ndarray, list[dict[str, float]]]:
    """CMA-ES over the weights from w = 0 (the base model, itself the first evaluation) within the budget; the best
    weights seen and the curve of every evaluation."""
    curve: list[dict[str, float]] = []

    def objective(weights: np.ndarray) -> float:
        composition.set_weights(weights)
        loss, accuracy = shots.score(composition)
        value = loss + search.l1 * float(np.abs(weights).sum())
        best = min(value, curve[-1]["best"]) if curve else value
        curve.append({"evaluation": len(curve) + 1, "objective": value, "best": best, "shot_accuracy": accuracy,
                      "weights": [float(w) for w in weights]})
        if progress:
            progress(len(curve), best)
        return value

    zero = np.zeros(sources)
    at_zero = objective(zero)
    optimiser = cma.CMAEvolutionStrategy(zero.tolist(), search.step, {
        "bounds": [-search.bound, search.bound], "seed": seed + 1, "maxfevals": search.budget - 1, "verbose": -9})
    while not optimiser.stop():
        candidates = optimiser.ask()
        optimiser.tell(candidates, [objective(np.asarray(candidate)) for candidate in candidates])
    found = optimiser.result
    best = np.asarray(found.xbest) if found.xbest is not None and found.fbest < at_zero else zero
    return best, curve


CURVE_PLOT = "search_curve.png"


def plot_curve(curve: list[dict[str, float]], path: Path) -> Path:
    """The search as a picture: each evaluation's objective, the best so far, and the accuracy on the shots."""
    import matplotlib

    matplotlib.use("Agg")  # no display: the plot is a file
    import matplotlib.pyplot as plt

    evaluations = [point["evaluation"] for point in curve]
    figure, objective = plt.subplots(figsize=(7, 4))
    objective.scatter(evaluations, [point["objective"] for point in curve], s=10, color="tab:blue", alpha=0.5,
                      label="objective (cross-entropy + l1)")
    objective.plot(evaluations, [point["best"] for point in curve], color="tab:blue", label="best so far")
    objective.set(xlabel="evaluation", ylabel="objective (lower is better)")
    accuracy = objective.twinx()
    accuracy.plot(evaluations, [point["shot_accuracy"] for point in curve], color="tab:orange", alpha=0.6,
                  label="accuracy on the scored shots")
    accuracy.set(ylabel="accuracy", ylim=(0, 1))
    figure.legend(loc="upper right", fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def _test_with_weights(composition: Composition, shots: Shots, weights: np.ndarray,
                       prepared: Prepared) -> dict[str, Any]:
    """The test split's metrics with these weights (and a head fitted on every shot)."""
    composition.set_weights(weights)
    shots.fit_final_head(composition)
    return recipe_for("classification").score(composition.predictor, prepared.splits.test, "test split")


def _hub_config(model: str, data: dict[str, Any], shots: int, options: dict[str, Any], prompt_based: bool,
                prompt: dict[str, Any], seed: int, output: Path | str) -> RunConfig:
    """The new run's config: the sources' strategy with the summed update's options, the shots of `data`."""
    strategy = ({"name": "pet", "options": {"tune": "lora", "tune_options": options}} if prompt_based
                else {"name": "lora", "options": options})
    return build_config({"model": model, "task": "classification", "data": {**data, "shots": shots},
                         "strategy": strategy, "prompt": prompt, "output": str(output),
                         "training": {"seed": seed, "precision": "fp32"}})


def compose_hub(sources: list[str], data: dict[str, Any], output: Path | str, shots: int = 16,
                search: HubSearch | None = None, seed: int = 42, overwrite: bool = False, score_sources: bool = True,
                prompt: dict[str, Any] | None = None,
                progress: Callable[[int, float], None] | None = None) -> tuple[Path, dict[str, Any]]:
    """Fit the composition on `shots` examples per label of `data` (a data section: source and columns) and write
    the run at `output`; returns its path and metrics. `prompt` (template, verbalizer) is for prompt-based sources.
    `score_sources` also scores the base model and each source alone on the test split, and each source alone on
    the shots as the objective does (what a choice of one source could have been made on). `progress` hears each
    evaluation and the best objective so far. Computes in fp32."""
    search = search or HubSearch()
    search.check()
    model_name, runs, prompt_based = _source_runs(sources)
    if prompt and not prompt_based:
        raise TunelabError("--template and --verbalizer are for prompt-based sources (pet runs); these are lora runs "
                           "under heads")
    deltas = [read_lora(run / ADAPTER_DIR) for run in runs.values()]
    tensors, options = lora_adapter(concatenate(deltas, [1.0] * len(deltas)), sum(delta.rank for delta in deltas))
    config = _hub_config(model_name, data, shots, options, prompt_based, prompt or {}, seed, output)
    recipe, strategy = recipe_for("classification"), configure(config.strategy, config.training)
    staged = StagedRun(Path(output), overwrite)
    prepared = recipe.prepare(config)
    model, tokenizer = recipe.build(prepared.config, strategy, prepared.targets)
    set_peft_model_state_dict(model.backbone, tensors)
    model.eval()
    predictor = recipe.predictor(model, tokenizer, prepared.targets, prepared.config)
    composition = Composition(model, [delta.rank for delta in deltas], predictor, config.training.max_length)
    examples = Shots(prepared)
    with staged:
        with PeakMemory() as memory:
            start = time.perf_counter()
            best, curve = search_weights(composition, examples, len(runs), search, seed, progress)
            search_s = time.perf_counter() - start
        alone, on_shots = {}, {}
        if score_sources:
            alone["base_and_head"] = _test_with_weights(composition, examples, np.zeros(len(runs)), prepared)
            for index, name in enumerate(runs):
                composition.set_weights(np.eye(len(runs))[index])
                on_shots[name] = dict(zip(("loss", "accuracy"), examples.score(composition), strict=True))
                alone[name] = _test_with_weights(composition, examples, np.eye(len(runs))[index], prepared)
        test = _test_with_weights(composition, examples, best, prepared)
        metrics = {"task": "classification", "test": test, "train_examples": len(examples.train),
                   "validation_examples": len(examples.validation),
                   "training": {"search": "cma-es", "evaluations": len(curve), "precision": "fp32",
                                "selected_on": "the shots' cross-entropy + l1"},
                   "hub": {"sources": {name: str(run.resolve()) for name, run in runs.items()},
                           "weights": dict(zip(runs, map(float, best), strict=True)), "budget": search.budget,
                           "l1": search.l1, "bound": search.bound, "curve": curve, "alone": alone,
                           "alone_on_shots": on_shots},
                   **verdict(recipe, prepared, test, lambda message: None)}
        recipe.save_targets(prepared.targets, staged.path)
        plot_curve(curve, staged.path / CURVE_PLOT)
        resources = run_resources(model, {"train_s": search_s}, memory, strategy.save_delta(model, staged.path),
                                  recipe.latency_ms(predictor, prepared.splits.test))
        path = commit(staged, prepared.config, metrics, resources)
    return path, metrics
