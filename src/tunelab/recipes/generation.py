"""Generation: supervised fine-tuning of a causal LM on prompt -> completion pairs or chat conversations, scored by
held-out loss, perplexity and ROUGE-L before and after, and greedy answers to prompts."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from rich.console import RenderableType
from rich.markup import escape
from rich.table import Table
from transformers import PreTrainedTokenizerBase

from tunelab.assets.models import resolve_model
from tunelab.config import RunConfig
from tunelab.data.messages import load_generation_examples
from tunelab.data.splits import split_as_configured
from tunelab.errors import TunelabError
from tunelab.modeling import load_causal_lm, load_tokenizer
from tunelab.recipes.base import Fitted, Prepared, Recipe, fit_with_trainer, refuse_context
from tunelab.resources import latency_per_example_ms
from tunelab.strategies.registry import ConfiguredStrategy
from tunelab.tasks.conversation import context_ids
from tunelab.tasks.generation import CausalLM, contexts_and_references, generate, pair_collator, tokenize_examples
from tunelab.tasks.generation_scores import HeldOut, held_out_set, score
from tunelab.training.trainer import best_device


@dataclass
class Generator:
    """A causal LM with its tokenizer and its run's settings, on the fastest device there is: prompts in, answers
    out, held-out examples scored."""

    model: CausalLM
    tokenizer: PreTrainedTokenizerBase
    config: RunConfig

    def __post_init__(self) -> None:
        self.model.to(best_device())

    def held_out(self, examples: pd.DataFrame, source: str) -> HeldOut:
        generation = self.config.generation
        return held_out_set(examples, self.tokenizer, self.config.training.max_length, source,
                            generation.rouge_examples)

    def score(self, held_out: HeldOut) -> dict[str, float]:
        return score(self.model, self.tokenizer, held_out, self.config.training.eval_batch_size,
                     self.config.generation.max_new_tokens)

    def answer(self, prompt: str, max_new_tokens: int | None = None, temperature: float = 0.0, seed: int = 0,
               continuation: bool = False) -> str:
        """Greedy at temperature 0; at most the run's `generation.max_new_tokens` unless told."""
        return generate(self.model, self.tokenizer, prompt, max_new_tokens or self.config.generation.max_new_tokens,
                        temperature, seed, continuation)


def generation_scores(scores: dict[str, Any], base: dict[str, Any] | None = None) -> str:
    """A generation run's held-out scores on one line; with `base`, each after the untrained model's."""

    def value(key: str, digits: int) -> str:
        now = f"{scores[key]:.{digits}f}"
        return f"{base[key]:.{digits}f} -> {now}" if base and key in base else now

    line = f"loss {value('loss', 3)} · perplexity {value('perplexity', 2)}"
    if "rouge_l" in scores:
        line += f" · ROUGE-L {value('rouge_l', 3)} (F1, 0-1, on {scores['rouge_examples']} greedy answers)"
    return line + f" · {scores['examples']} examples, {scores['tokens']} answer tokens"


class GenerationRecipe(Recipe):
    task = "generation"
    best_metric = "loss"  # of the answers
    quality_names = ("test loss", "perplexity")

    def prepare(self, config: RunConfig) -> Prepared:
        data = config.data
        splits = split_as_configured(self.read_examples(config, None, data.source, "", ""), data)
        return Prepared(config, splits, None, self.selected_on(config, splits))

    def build(self, config: RunConfig, strategy: ConfiguredStrategy, targets: None) -> tuple[CausalLM, Any]:
        """The causal LM for this config, with its strategy applied (`train` checked that it serves generation)."""
        spec = resolve_model(config.model)
        model = CausalLM(load_causal_lm(spec))
        strategy.apply(model)
        return model, load_tokenizer(spec)

    def fit(self, model: CausalLM, tokenizer: PreTrainedTokenizerBase, prepared: Prepared,
            strategy: ConfiguredStrategy, checkpoints: Path, progress: bool) -> Fitted:
        """Train on the answers, keep the epoch with the lowest validation loss. `base_test` is the untrained
        model's test scores (every strategy starts exactly at the base model), so a run shows by itself whether
        training helped."""
        config, splits = prepared.config, prepared.splits
        source = config.data.source
        train, validation = (tokenize_examples(part, tokenizer, config.training.max_length, source)
                             for part in (splits.train, splits.validation))
        generator = Generator(model, tokenizer, config)  # on the device the Trainer would move it to
        test = generator.held_out(splits.test, source)
        base = generator.score(test)
        fit = fit_with_trainer(model, config, strategy, checkpoints, progress, prepared.selected_on, train, validation,
                               pair_collator(tokenizer), None)
        return Fitted(fit.timings, generator.score(test), {"base_test": base}, fit.log, fit.gathered)

    def predictor(self, model: CausalLM, tokenizer: PreTrainedTokenizerBase, targets: None,
                  config: RunConfig) -> Generator:
        return Generator(model, tokenizer, config)

    def score(self, predictor: Generator, examples: pd.DataFrame, source: str) -> dict[str, Any]:
        """Held-out loss and perplexity of the examples' answers, and ROUGE-L of greedy answers to the first
        `generation.rouge_examples` of them."""
        return predictor.score(predictor.held_out(examples, source))

    def latency_ms(self, predictor: Generator, test: pd.DataFrame) -> float:
        """One forward pass over a test prompt: what each generated token costs."""
        model, device = predictor.model, next(predictor.model.parameters()).device
        prompts = [torch.tensor([context_ids(predictor.tokenizer, context)], device=device)
                   for context in contexts_and_references(test.iloc[:32])[0]]
        return latency_per_example_ms(lambda ids: model(input_ids=ids, attention_mask=torch.ones_like(ids)), prompts)

    def read_examples(self, config: RunConfig, targets: None, source: str, text_column: str,
                      label_column: str) -> pd.DataFrame:
        data = config.data
        return load_generation_examples(source, data.prompt_column, data.completion_column, data.messages_column)

    def test_examples(self, config: RunConfig) -> pd.DataFrame:
        if config.data.source == "movie-sentiment":
            raise TunelabError("this is an `rlhf sft` run of the movie-sentiment preset: its held-out loss is in its "
                               "metrics.json (`tunelab summary`); pass --data FILE with prompt and completion columns "
                               "to evaluate it on other data")
        return super().test_examples(config)

    def predict(self, predictor: Generator, inputs: list[str], context: str | None) -> list[dict[str, Any]]:
        """The model's greedy answer to each prompt (`tunelab generate` samples, continues plain text, and takes
        other lengths)."""
        refuse_context(context, self.task)
        return [{"prompt": prompt, "answer": predictor.answer(prompt)} for prompt in inputs]

    def predictions_view(self, records: list[dict[str, Any]], title: str) -> RenderableType:
        table = Table(title=escape(title))
        table.add_column("prompt")
        table.add_column("answer")
        for record in records:
            table.add_row(escape(record["prompt"]), escape(record["answer"]))
        return table

    def quality_columns(self, metrics: dict[str, Any]) -> tuple[str, str]:
        test, base = metrics["test"], metrics["base_test"]
        return (f"loss {test['loss']:.3f} (base {base['loss']:.3f})",
                f"ppl {test['perplexity']:.2f} (base {base['perplexity']:.2f})")

    def evaluation_view(self, metrics: dict[str, Any], title: str) -> RenderableType:
        return f"{escape(title)}: {generation_scores(metrics)}"


RECIPE = GenerationRecipe()
