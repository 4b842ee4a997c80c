"""Every strategy of the catalog on every task it serves, through the task's own recipe: untrained, it computes what
the base model does (where the catalog says it starts there); one optimizer step changes only its own parameters;
its saved delta rebuilds the trained model exactly; and merged, it computes what it did unmerged (where mergeable).
Whether strategies learn is tested per task, on more steps (test_every_strategy.py and the task modules)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
import transformers
from tiny import sentiment_frame, write_table

from tunelab import build_config
from tunelab.config import RunConfig
from tunelab.export import MERGE_TOLERANCE
from tunelab.recipes.base import Prepared, Recipe
from tunelab.strategies.catalog import CATALOG
from tunelab.strategies.registry import configure
from tunelab.task_catalog import TASKS, recipe_for

# Strategies that compose other runs (fusion) need those runs: test_fusion.py trains them.
CELLS = [(name, task) for name, row in CATALOG.items() for task in TASKS if row.serves(task) and not row.composes]
STEP = 8  # training examples, and the batch size: one optimizer step
OPTIONS = {"prompt-tuning": {"virtual_tokens": 2}, "p-tuning": {"virtual_tokens": 2}, "prefix": {"virtual_tokens": 2}}


def _people(rows: int) -> list[tuple[list[str], list[str]]]:
    rng = random.Random(0)
    return [(["Anna", "lives", "in", rng.choice(["Paris", "Oslo", "Rome"])], ["B-PER", "O", "O", "B-LOC"])
            for _ in range(rows)]


def _questions(contexts: int) -> list[dict]:
    rows = []
    for index in range(contexts):
        name, city = ["Anna", "Olga", "Greta"][index % 3], ["Paris", "Oslo", "Rome"][index % 3]
        context = f"{name} lives in {city} since {1990 + index}."
        for question, answer in ((f"Where does {name} live?", city), (f"Who lives in {city}?", name)):
            rows.append({"id": f"q{len(rows)}", "question": question, "context": context,
                         "answers": {"text": [answer], "answer_start": [context.index(answer)]}})
    return rows


@pytest.fixture(scope="module")
def task_data(tmp_path_factory: pytest.TempPathFactory, sentiment_csv: Path, writing_jsonl: Path) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("matrix")
    ratings = sentiment_frame(40).assign(label=lambda frame: (frame["label"] == "positive") * 4.0 + 1.0)
    conll = folder / "people.conll"
    conll.write_text("".join("".join(f"{word} {tag}\n" for word, tag in zip(*sentence, strict=True)) + "\n"
                             for sentence in _people(40)), encoding="utf-8")
    squad = folder / "squad.jsonl"
    squad.write_text("".join(json.dumps(row) + "\n" for row in _questions(20)), encoding="utf-8")
    return {"classification": sentiment_csv, "regression": write_table(ratings, folder / "ratings.csv"),
            "token-classification": conll, "question-answering": squad, "generation": writing_jsonl}


def _config(strategy: str, task: str, model: Path, data: Path) -> RunConfig:
    prompt = {"template": "{text} It was {label}"} if CATALOG[strategy].prompt_based else {}
    return build_config({
        "model": str(model), "task": task, "data": {"source": str(data), "limit_train": STEP, "limit_eval": STEP},
        "strategy": {"name": strategy, "options": OPTIONS.get(strategy, {})}, "prompt": prompt,
        "training": {"epochs": 1, "batch_size": STEP, "eval_batch_size": STEP, "max_length": 24},
        "generation": {"rouge_examples": 0},
    })


def _build(recipe: Recipe, prepared: Prepared, strategy: str) -> tuple[torch.nn.Module, object]:
    """A fresh model with `strategy` applied, its task head initialised from the same seed every time."""
    transformers.set_seed(0)
    config = prepared.config.model_copy(update={"strategy": prepared.config.strategy.model_copy(
        update={"name": strategy, "options": OPTIONS.get(strategy, {})})})
    return recipe.build(config, configure(config.strategy, config.training), prepared.targets)


def _outputs(recipe: Recipe, model: torch.nn.Module, tokenizer: object, prepared: Prepared) -> list[torch.Tensor]:
    """Every tensor the model returns while its task scores the test split (logits, start/end logits)."""
    seen: list[torch.Tensor] = []
    handle = model.register_forward_hook(lambda module, args, output: seen.extend(
        value.detach().clone() for value in output.values() if torch.is_tensor(value) and value.dim() > 0))
    model.eval()
    recipe.score(recipe.predictor(model, tokenizer, prepared.targets, prepared.config), prepared.splits.test, "test")
    handle.remove()
    assert seen, "the task's scoring ran the model"
    return seen


def _assert_same(first: list[torch.Tensor], second: list[torch.Tensor], atol: float = 0.0) -> None:
    assert len(first) == len(second)
    for one, other in zip(first, second, strict=True):
        torch.testing.assert_close(one, other, rtol=0, atol=atol)


@pytest.mark.parametrize(("strategy", "task"), CELLS, ids=[f"{name}-{task}" for name, task in CELLS])
def test_strategy_on_task(strategy: str, task: str, task_data: dict[str, Path], tiny_bert: Path,
                          tiny_llama_lm: Path, tmp_path: Path):
    row = CATALOG[strategy]
    model_dir = tiny_llama_lm if row.prompt_based or task == "generation" else tiny_bert
    config = _config(strategy, task, model_dir, task_data[task])
    recipe = recipe_for(task)
    prepared = recipe.prepare(config)
    model, tokenizer = _build(recipe, prepared, strategy)
    if row.starts_at_base:
        base, _ = _build(recipe, prepared, "zero-shot" if row.prompt_based else "full")
        # within float error: the same weights, made trainable, may take another kernel (pet: 2e-6 on logits of 10)
        _assert_same(_outputs(recipe, model, tokenizer, prepared), _outputs(recipe, base, tokenizer, prepared),
                     atol=1e-5)

    parameters = dict(model.named_parameters())
    before = {name: parameter.detach().clone() for name, parameter in parameters.items()}
    trainable = {name for name, parameter in parameters.items() if parameter.requires_grad}
    assert bool(trainable) == (row.trains != "none" or strategy == "linear-probe")  # a probe trains its head
    configured = configure(prepared.config.strategy, prepared.config.training)
    recipe.fit(model, tokenizer, prepared, configured, tmp_path / "checkpoints", progress=False)
    changed = {name for name, parameter in model.named_parameters() if not torch.equal(parameter, before[name])}
    assert changed <= trainable, f"frozen parameters changed: {sorted(changed - trainable)[:3]}"
    assert bool(changed) == bool(trainable)

    trained = _outputs(recipe, model, tokenizer, prepared)
    configured.save_delta(model, tmp_path)
    reloaded, _ = _build(recipe, prepared, strategy)
    configured.load_delta(reloaded, tmp_path)
    # Exactly, as the step moved what the delta holds; a delta saved in another form than it trains in (p-tuning's
    # prompt after its encoder, as PEFT saves it) within float error.
    resaved = reloaded.state_dict().keys() != model.state_dict().keys()
    _assert_same(_outputs(recipe, reloaded, tokenizer, prepared), trained, atol=1e-6 if resaved else 0.0)

    if row.mergeable:
        configured.strategy.merge(model)
        _assert_same(_outputs(recipe, model, tokenizer, prepared), trained, atol=MERGE_TOLERANCE)
