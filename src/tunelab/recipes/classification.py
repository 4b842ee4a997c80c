"""Sentence classification: one vector per text (or per filled template), a head on it, or label words scored
through a template by the prompt-based strategies. `SentenceRecipe` is what regression shares with it: both differ
only in their targets.
"""

from __future__ import annotations

import time
from abc import abstractmethod
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.console import RenderableType
from rich.markup import escape
from rich.table import Table
from transformers import DataCollatorWithPadding, PreTrainedTokenizerBase

from tunelab.assets.datasets import CATALOG, default_template
from tunelab.assets.models import resolve_model
from tunelab.config import RunConfig
from tunelab.data.checks import DataChecks, check_sentences, is_imbalanced
from tunelab.data.loading import load_examples
from tunelab.data.splits import Splits, few_shot, split_as_configured
from tunelab.modeling import load_backbone, load_tokenizer
from tunelab.predict import Predictor
from tunelab.prompting.model import PromptClassifier, build_prompt_classifier
from tunelab.prompting.template import Template
from tunelab.prompting.verbalizer import Verbalizer
from tunelab.recipes.base import Fitted, Prepared, Recipe, fit_with_trainer, refuse_context
from tunelab.resources import latency_per_example_ms
from tunelab.strategies.base import count_parameters
from tunelab.strategies.catalog import entry
from tunelab.strategies.registry import ConfiguredStrategy
from tunelab.tasks.classification import FeatureClassifier, LabelMap, SequenceClassifier
from tunelab.tasks.inputs import input_encoder
from tunelab.tasks.regression import TargetScale
from tunelab.training.features import extract_features
from tunelab.training.trainer import FeatureDataset, by_length, encode_examples, in_original_order


def resolve_prompt(config: RunConfig, labels: list[str]) -> RunConfig:
    """For a prompt-based strategy: the config with its template and label words spelled out (the dataset's
    defaults where it names none), so that the saved run says exactly what the model was asked."""
    if not entry(config.strategy.name).prompt_based:
        return config
    resolved = config.model_copy(deep=True)
    resolved.prompt.template = config.prompt.template or default_template(config.data.source)
    resolved.prompt.verbalizer = {label: list(words)
                                  for label, words in Verbalizer.build(config.prompt.verbalizer, labels).words.items()}
    return resolved


def template_fields(config: RunConfig) -> tuple[str, ...]:
    """The data columns a prompt-based run's template reads besides the text."""
    if config.prompt.template is None:
        return ()
    return tuple(field for field in Template.parse(config.prompt.template).fields if field != "text")


class SentenceRecipe(Recipe):
    """What classification and regression share: texts (or template rows) in, one vector per text, a head."""

    def read_examples(self, config: RunConfig, targets: Any, source: str, text_column: str,
                      label_column: str) -> pd.DataFrame:
        return load_examples(source, text_column, label_column, template_fields(config))

    @abstractmethod
    def targets_of(self, examples: pd.DataFrame, splits: Splits, config: RunConfig) -> LabelMap | TargetScale:
        """What the head's outputs mean, learnt from the data."""

    def prepare(self, config: RunConfig) -> Prepared:
        data = config.data
        examples = self.read_examples(config, None, data.source, data.text_column, data.label_column)
        splits = split_as_configured(examples, data)
        return Prepared(config, splits, self.targets_of(examples, splits, config), self.selected_on(config, splits))

    def data_checks(self, prepared: Prepared, tokenizer: PreTrainedTokenizerBase) -> DataChecks:
        """Rows, class balance, and the training texts' lengths in tokens against `max_length`."""
        lengths = [len(ids) for ids in tokenizer(prepared.splits.train["text"].tolist())["input_ids"]]
        return check_sentences(prepared.splits, lengths, prepared.config.training.max_length,
                               labelled=isinstance(prepared.targets, LabelMap))

    def build(self, config: RunConfig, strategy: ConfiguredStrategy,
              targets: LabelMap | TargetScale) -> tuple[SequenceClassifier | PromptClassifier, Any]:
        """Base model + head (or template and label words) for this config, with its strategy applied."""
        spec = resolve_model(config.model)
        tokenizer = load_tokenizer(spec)
        if strategy.strategy.prompt_based:
            prompt = resolve_prompt(config, targets.labels).prompt
            model = build_prompt_classifier(spec, tokenizer, prompt, targets.labels, config.training.max_length)
        else:
            model = SequenceClassifier(load_backbone(spec), targets.width, spec.pooling)
        strategy.apply(model)
        return model, tokenizer

    def fit(self, model: SequenceClassifier | PromptClassifier, tokenizer: PreTrainedTokenizerBase,
            prepared: Prepared, strategy: ConfiguredStrategy, checkpoints: Path, progress: bool) -> Fitted:
        """Train on token ids, or on cached sentence vectors when the strategy freezes the encoder; the test
        metrics come from the same pass. A model with nothing to train (zero-shot) only predicts."""
        config, splits, targets = prepared.config, prepared.splits, prepared.targets
        training = config.training
        if training.class_weights == "balanced":
            model.class_weights = targets.balanced_weights(splits.train["label"].tolist())
        score = lambda logits: targets.metrics(logits, splits.test["label"].tolist(), "test split")  # noqa: E731
        if count_parameters(model)[0] == 0:
            start = time.perf_counter()
            logits = Predictor(model, tokenizer, targets, training.max_length,
                               training.eval_batch_size).logits(splits.test)
            return Fitted({"feature_extraction_s": 0.0, "train_s": 0.0, "predict_s": time.perf_counter() - start},
                          score(logits))
        encode = input_encoder(model, tokenizer, training.max_length)
        encoded = {name: encode_examples(encode, part, targets.encode(part["label"].tolist(), name))
                   for name, part in vars(splits).items()}
        feature_extraction_s = 0.0
        if strategy.trains_on_features:
            start = time.perf_counter()
            vectors = {name: FeatureDataset(extract_features(model, data, tokenizer, training.eval_batch_size,
                                                             f"encoding {name}", progress), data["labels"])
                       for name, data in encoded.items()}
            feature_extraction_s = time.perf_counter() - start
            fit = fit_with_trainer(FeatureClassifier(model.head, model.class_weights), config, strategy,
                                   checkpoints, progress, prepared.selected_on, vectors["train"],
                                   vectors["validation"], None, targets.validation_metrics)
            test, order = vectors["test"], np.arange(len(vectors["test"]))
        else:
            validation, _ = by_length(encoded["validation"])  # the validation metric does not depend on the order
            fit = fit_with_trainer(model, config, strategy, checkpoints, progress, prepared.selected_on,
                                   encoded["train"], validation, DataCollatorWithPadding(tokenizer),
                                   targets.validation_metrics)
            test, order = by_length(encoded["test"])
        timings = {"feature_extraction_s": feature_extraction_s,
                   "train_s": feature_extraction_s + fit.timings["train_s"]}
        return Fitted(timings, score(in_original_order(fit.trainer.predict(test).predictions, order)),
                      log=fit.log, gathered=fit.gathered)

    def predictor(self, model: SequenceClassifier | PromptClassifier, tokenizer: PreTrainedTokenizerBase,
                  targets: LabelMap | TargetScale, config: RunConfig) -> Predictor:
        return Predictor(model, tokenizer, targets, config.training.max_length, config.training.eval_batch_size)

    def score(self, predictor: Predictor, examples: pd.DataFrame, source: str) -> dict[str, Any]:
        return predictor.score(examples, source)

    def latency_ms(self, predictor: Predictor, test: pd.DataFrame) -> float:
        return latency_per_example_ms(predictor.logits, [test.iloc[[index]] for index in range(min(32, len(test)))])


class ClassificationRecipe(SentenceRecipe):
    task = "classification"
    best_metric = "accuracy"
    quality_names = ("accuracy", "macro-F1")

    def check_training(self, config: RunConfig) -> None:
        """Every class-weight and selection setting applies."""

    def selected_on(self, config: RunConfig, splits: Splits) -> str:
        """`training.select_on`; by default macro-F1 when a class is rare in the training split (accuracy would
        reward predicting the common class), else accuracy."""
        choice = config.training.select_on
        if choice == "auto":
            return "macro_f1" if is_imbalanced(splits.train["label"]) else "accuracy"
        return choice.replace("-", "_")

    def baseline(self, prepared: Prepared) -> dict[str, Any]:
        """Always the training split's most frequent label: its test accuracy is that label's share p, and its
        macro-F1 that label's F1, 2p / (1 + p), over the number of labels."""
        majority = prepared.splits.train["label"].value_counts().idxmax()
        share = float((prepared.splits.test["label"] == majority).mean())
        return {"predicts": str(majority), "accuracy": share,
                "macro_f1": 2 * share / (1 + share) / prepared.targets.width}

    def did_not_learn(self, test: dict[str, Any], baseline: dict[str, Any]) -> str | None:
        """Collapsed (one label for 95% of the test split, though under 90% of it carries that label), or no
        better than the majority baseline on macro-F1."""
        label, count = max(test["predicted"].items(), key=lambda item: item[1])
        share, true_share = count / test["examples"], test["per_class"][label]["support"] / test["examples"]
        if share >= 0.95 and true_share < 0.9:
            what = f"it predicts '{label}' for {share:.0%} of the test split, where {true_share:.0%} carry it"
        elif test["macro_f1"] <= baseline["macro_f1"]:
            what = (f"its test macro-F1 {test['macro_f1']:.3f} does not beat the majority baseline's "
                    f"{baseline['macro_f1']:.3f} (always '{baseline['predicts']}')")
        else:
            return None
        return (f"the run did not learn: {what}. Try more optimizer steps (--epochs, or --set "
                f"training.min_steps=N), a higher learning rate (--lr), --class-weights balanced, or another "
                f"strategy (linear-probe learns from few examples)")

    def targets_of(self, examples: pd.DataFrame, splits: Splits, config: RunConfig) -> LabelMap:
        """Every label of the data, in the order the embedded dataset names them (else sorted)."""
        source = config.data.source
        return LabelMap.from_values(examples["label"].tolist(), CATALOG[source].labels if source in CATALOG else ())

    def prepare(self, config: RunConfig) -> Prepared:
        """The splits (few-shot: K per label drawn with the training seed), the labels, and a prompt-based
        strategy's template and label words spelled out."""
        prepared = super().prepare(config)
        splits, labels = prepared.splits, prepared.targets
        if config.data.shots is not None:
            splits = few_shot(splits, config.data.shots, config.training.seed)
        return Prepared(resolve_prompt(config, labels.labels), splits, labels, self.selected_on(config, splits))

    def predict(self, predictor: Predictor, inputs: list[str], context: str | None) -> list[dict[str, Any]]:
        refuse_context(context, self.task)
        return [{"text": text, "label": label, "probabilities": probabilities}
                for text, (label, probabilities) in zip(inputs, predictor.predict(inputs), strict=True)]

    def predictions_view(self, records: list[dict[str, Any]], title: str) -> RenderableType:
        """A row per text: the predicted label in bold, every label's probability."""
        labels = list(records[0]["probabilities"])
        table = Table(title=escape(title))
        for column in ["text", "label", *labels]:
            table.add_column(column, justify="right" if column in labels else "left")
        for record in records:
            table.add_row(escape(record["text"]), f"[bold]{escape(record['label'])}[/bold]",
                          *(f"{record['probabilities'][name]:.3f}" for name in labels))
        return table

    def quality_columns(self, metrics: dict[str, Any]) -> tuple[str, str]:
        return f"{metrics['test']['accuracy']:.3f}", f"{metrics['test']['macro_f1']:.3f}"

    def evaluation_view(self, metrics: dict[str, Any], title: str) -> RenderableType:
        """Per-class precision/recall/F1 with accuracy and macro-F1 in the caption."""
        table = Table(title=escape(title), caption=f"accuracy {metrics['accuracy']:.3f} · macro-F1 "
                                                   f"{metrics['macro_f1']:.3f} · {metrics['examples']} examples")
        for column in ("label", "precision", "recall", "F1", "support"):
            table.add_column(column, justify="left" if column == "label" else "right")
        for label, row in metrics["per_class"].items():
            table.add_row(escape(label), f"{row['precision']:.3f}", f"{row['recall']:.3f}", f"{row['f1-score']:.3f}",
                          f"{row['support']:.0f}")
        return table


RECIPE = ClassificationRecipe()
