"""Token classification (NER): a `TokenClassifier` trained with any strategy, the epoch with the best validation
entity F1 kept, entities found in raw text with their character spans.

Every strategy trains through the encoder here, linear-probe included: its cache holds one vector per sentence,
and a tagger needs one per token, so the frozen encoder runs each epoch instead.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import pandas as pd
from rich.console import RenderableType
from rich.markup import escape
from rich.table import Table
from transformers import DataCollatorForTokenClassification, PreTrainedTokenizerBase

from tunelab.assets.models import resolve_model
from tunelab.config import RunConfig
from tunelab.data.splits import split_as_configured
from tunelab.data.tagged import check_known, check_tags, load_tagged
from tunelab.modeling import load_backbone, load_tokenizer
from tunelab.recipes.base import Fitted, Prepared, Recipe, fit_with_trainer, refuse_context
from tunelab.resources import latency_per_example_ms
from tunelab.strategies.registry import ConfiguredStrategy
from tunelab.tasks.classification import LabelMap
from tunelab.tasks.tags import model_scheme, parse_tag, tag_set
from tunelab.tasks.token_classification import (
    Tagger,
    TokenClassifier,
    require_offsets,
    tagged_dataset,
    validation_metrics,
)


class TokenClassificationRecipe(Recipe):
    task = "token-classification"
    best_metric = "f1"  # entity F1
    quality_names = ("entity F1", "token accuracy")

    def prepare(self, config: RunConfig) -> Prepared:
        """The sentences split as every task splits its examples, the tags the model learns (every entity type of
        the data, in the model's scheme), and the data's own scheme."""
        data = config.data
        sentences = load_tagged(data.source, data.tokens_column, data.tags_column)
        scheme = check_tags(sentences, data.tag_scheme, data.source)
        kinds = {parse_tag(tag)[1] for tags in sentences["tags"] for tag in tags} - {""}
        splits = split_as_configured(sentences, data)
        return Prepared(config, splits, LabelMap(tag_set(kinds, model_scheme(scheme))),
                        self.selected_on(config, splits), {"tag_scheme": scheme})

    def build(self, config: RunConfig, strategy: ConfiguredStrategy,
              targets: LabelMap) -> tuple[TokenClassifier, Any]:
        """The base model with a per-token tag head, with its strategy applied."""
        spec = resolve_model(config.model)
        tokenizer = load_tokenizer(spec)
        require_offsets(tokenizer, spec.name)
        model = TokenClassifier(load_backbone(spec), len(targets.labels))
        strategy.apply(model)
        return model, tokenizer

    def fit(self, model: TokenClassifier, tokenizer: PreTrainedTokenizerBase, prepared: Prepared,
            strategy: ConfiguredStrategy, checkpoints: Path, progress: bool) -> Fitted:
        config, tags = prepared.config, prepared.targets
        train, validation = (tagged_dataset(tokenizer, part, tags, config.training.max_length)
                             for part in (prepared.splits.train, prepared.splits.validation))
        fit = fit_with_trainer(model, config, strategy, checkpoints, progress, prepared.selected_on, train, validation,
                               DataCollatorForTokenClassification(tokenizer), validation_metrics(tags.labels))
        return Fitted(fit.timings, log=fit.log, gathered=fit.gathered)

    def predictor(self, model: TokenClassifier, tokenizer: PreTrainedTokenizerBase, targets: LabelMap,
                  config: RunConfig) -> Tagger:
        """A tagger that reads as the run trained: its max_length, in batches of its eval batch size."""
        return Tagger(model, tokenizer, targets, config.training.max_length, config.training.eval_batch_size)

    def score(self, predictor: Tagger, examples: pd.DataFrame, source: str) -> dict[str, Any]:
        return predictor.score(examples)

    def latency_ms(self, predictor: Tagger, test: pd.DataFrame) -> float:
        return latency_per_example_ms(lambda words: predictor.tag([words]), test["tokens"][:32].tolist())

    def read_examples(self, config: RunConfig, targets: LabelMap, source: str, text_column: str,
                      label_column: str) -> pd.DataFrame:
        """Every sentence of `source`, its columns named as in the run's config, its scheme detected (the scores are
        entity-level, whichever scheme wrote the tags), and no entity type the model never learnt."""
        data = config.data
        sentences = load_tagged(source, data.tokens_column, data.tags_column)
        check_tags(sentences, "auto", source)
        check_known(sentences, targets.labels, source)
        return sentences

    def predict(self, predictor: Tagger, inputs: list[str], context: str | None) -> list[dict[str, Any]]:
        refuse_context(context, self.task)
        return [{"text": text, "entities": [asdict(entity) for entity in entities]}
                for text, entities in zip(inputs, predictor.entities(inputs), strict=True)]

    def predictions_view(self, records: list[dict[str, Any]], title: str) -> RenderableType:
        """The entities found in each text: their words, type, character span (end exclusive) and confidence."""
        table = Table(title=escape(title))
        for column in ("text", "entity", "type", "start", "end", "confidence"):
            table.add_column(column, justify="right" if column in ("start", "end", "confidence") else "left")
        for record in records:
            if not record["entities"]:
                table.add_row(escape(record["text"]), "-", "", "", "", "")
            for index, entity in enumerate(record["entities"]):
                table.add_row(escape(record["text"]) if index == 0 else "", f"[bold]{escape(entity['text'])}[/bold]",
                              escape(entity["type"]), str(entity["start"]), str(entity["end"]),
                              f"{entity['score']:.3f}")
        return table

    def quality_columns(self, metrics: dict[str, Any]) -> tuple[str, str]:
        return f"entity F1 {metrics['test']['f1']:.3f}", f"token acc {metrics['test']['accuracy']:.3f}"

    def evaluation_view(self, metrics: dict[str, Any], title: str) -> RenderableType:
        """Entity-level precision, recall and F1 per type and over all entities (micro, as CoNLL reports them),
        with token accuracy and the words the model did not read in the caption."""
        unread = metrics["unread_words"]
        caption = (f"macro-F1 {metrics['macro_f1']:.3f} · token accuracy {metrics['accuracy']:.3f} · "
                   f"{metrics['sentences']} sentences, {metrics['words']} words"
                   + (f" · {unread} words unread (cut by max_length or given no token), tagged O" if unread else ""))
        table = Table(title=f"{escape(title)} (entities)", caption=caption, min_width=len(caption))
        for column in ("type", "precision", "recall", "F1", "entities"):
            table.add_column(column, justify="left" if column == "type" else "right")
        rows = [*metrics["per_type"].items(), ("all (micro)", {**metrics, "support": metrics["entities"]})]
        for kind, row in rows:
            table.add_row(escape(kind), *(f"{row[name]:.3f}" for name in ("precision", "recall", "f1")),
                          str(row["support"]), style="bold" if kind == "all (micro)" else None)
        return table


RECIPE = TokenClassificationRecipe()
