"""Extractive question answering: a span extractor trained on SQuAD-style data, the epoch with the best validation F1
kept, questions answered about a passage, the answers scored with SQuAD's exact match and F1."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pandas as pd
import torch
from rich.console import RenderableType
from rich.markup import escape
from rich.table import Table
from transformers import DataCollatorWithPadding, EvalPrediction, PreTrainedTokenizerBase

from tunelab.assets.models import resolve_model
from tunelab.batching import padded_batches
from tunelab.config import QuestionAnsweringConfig, RunConfig
from tunelab.data.squad import has_unanswerable, load_squad, split_by_context
from tunelab.errors import TunelabError
from tunelab.modeling import load_backbone, load_tokenizer
from tunelab.recipes.base import Fitted, Prepared, Recipe, fit_with_trainer
from tunelab.resources import latency_per_example_ms
from tunelab.runs import write_json
from tunelab.strategies.registry import ConfiguredStrategy
from tunelab.tasks.question_answering import SpanExtractor, Windows, encode_windows, is_causal, reads_segments
from tunelab.tasks.span_postprocess import Answer, best_answer
from tunelab.tasks.squad_metrics import squad_scores

PREDICTIONS_FILE = "test_predictions.json"  # question id -> answer, as the official SQuAD scripts read them


class Answerer:
    """A span extractor with its tokenizer and settings: questions with their contexts in, answers out."""

    def __init__(self, model: SpanExtractor, tokenizer: PreTrainedTokenizerBase, max_length: int,
                 settings: QuestionAnsweringConfig, batch_size: int = 64):
        self.model, self.tokenizer, self.max_length = model, tokenizer, max_length
        self.settings, self.batch_size = settings, batch_size

    def windows(self, examples: pd.DataFrame) -> Windows:
        backbone = self.model.backbone
        return encode_windows(self.tokenizer, examples, self.max_length, self.settings.doc_stride,
                              reads_segments(backbone), is_causal(backbone))

    @torch.no_grad()
    def logits(self, windows: Windows) -> tuple[np.ndarray, np.ndarray]:
        """(N, max_length) start and end logits of every window, in batches of similar length; a window's logits
        past its own length are zero and never read."""
        self.model.eval()
        start, end = (np.zeros((len(windows.example), self.max_length), dtype=np.float32) for _ in range(2))
        for chosen, batch in padded_batches(self.model, self.tokenizer, windows.inputs, self.batch_size):
            output = self.model(**batch)
            width = batch["input_ids"].size(1)
            start[chosen, :width] = output.start_logits.float().cpu().numpy()
            end[chosen, :width] = output.end_logits.float().cpu().numpy()
        return start, end

    def answers_from(self, windows: Windows, start: np.ndarray, end: np.ndarray,
                     examples: pd.DataFrame) -> list[Answer]:
        """One answer per question from the (N, T) logits of the windows."""
        settings = self.settings
        grouped = windows.by_example()
        return [best_answer([(start[w], end[w], windows.offsets[w], windows.null[w]) for w in grouped[row]], context,
                            settings.n_best, settings.max_answer_length, settings.null_threshold,
                            bool(settings.no_answer))
                for row, context in enumerate(examples["context"])]

    def answer(self, examples: pd.DataFrame) -> list[Answer]:
        """The answer to each question of a table with `question` and `context` columns."""
        windows = self.windows(examples)
        return self.answers_from(windows, *self.logits(windows), examples)

    def ask(self, questions: list[str], context: str) -> list[Answer]:
        """Answers to questions about one passage."""
        if not context.strip():
            raise TunelabError("the context is empty: pass the passage the questions are about with --context")
        if not all(question.strip() for question in questions):
            raise TunelabError("a question is empty: ask something")
        return self.answer(pd.DataFrame({"id": [str(n) for n in range(1, len(questions) + 1)], "question": questions,
                                         "context": context, "answers": [[] for _ in questions],
                                         "answer_starts": [[] for _ in questions]}))


def squad_metrics_of(answers: list[Answer], examples: pd.DataFrame) -> dict[str, float | int]:
    return squad_scores(examples["answers"].tolist(), [answer.text for answer in answers])


def _dataset(windows: Windows) -> datasets.Dataset:
    return datasets.Dataset.from_dict({**windows.inputs, "labels": windows.labels})


def _validation_scores(answerer: Answerer, windows: Windows,
                       examples: pd.DataFrame) -> Callable[[EvalPrediction], dict[str, float]]:
    """The Trainer's per-epoch metric: SQuAD EM and F1 of the validation questions, whose windows it evaluates in
    order (its padding of the logits across batches lies past each window's length, so it is never read)."""
    def compute(prediction: EvalPrediction) -> dict[str, float]:
        scores = squad_metrics_of(answerer.answers_from(windows, *prediction.predictions, examples), examples)
        return {"exact_match": scores["exact_match"], "f1": scores["f1"]}
    return compute


def resolve_no_answer(config: RunConfig, examples: pd.DataFrame) -> RunConfig:
    """The config with `qa.no_answer` decided (from the data, unless set), so that the run says how it answers.
    Unanswerable questions with `no_answer` false are refused: training would teach the null answer that prediction
    never gives."""
    if config.qa.no_answer is False and has_unanswerable(examples):
        unanswerable = examples["id"][examples["answers"].map(len) == 0]
        raise TunelabError(f"{config.data.source} has {len(unanswerable)} unanswerable questions (e.g. question id "
                           f"{unanswerable.iloc[0]!r}) but qa.no_answer is false: leave qa.no_answer unset (or true) "
                           f"to let the model answer nothing, or remove those questions")
    if config.qa.no_answer is not None:
        return config
    resolved = config.model_copy(deep=True)
    resolved.qa.no_answer = has_unanswerable(examples)
    return resolved


class QuestionAnsweringRecipe(Recipe):
    task = "question-answering"
    best_metric = "f1"  # SQuAD F1
    quality_names = ("exact match", "F1")

    def prepare(self, config: RunConfig) -> Prepared:
        """The questions split by paragraph, and `qa.no_answer` decided from the data unless set."""
        examples = load_squad(config.data.source)
        config = resolve_no_answer(config, examples)
        splits = split_by_context(examples, config.data)
        return Prepared(config, splits, None, self.selected_on(config, splits))

    def build(self, config: RunConfig, strategy: ConfiguredStrategy, targets: None) -> tuple[SpanExtractor, Any]:
        """The base model with a start/end head, with its strategy applied."""
        spec = resolve_model(config.model)
        model = SpanExtractor(load_backbone(spec))
        strategy.apply(model)
        return model, load_tokenizer(spec)

    def fit(self, model: SpanExtractor, tokenizer: PreTrainedTokenizerBase, prepared: Prepared,
            strategy: ConfiguredStrategy, checkpoints: Path, progress: bool) -> Fitted:
        """Train on every window of the training questions; keep the epoch with the best validation F1. A
        frozen-encoder strategy (linear-probe) trains through the frozen encoder: its cached sentence vectors are of
        no use to spans."""
        config, splits = prepared.config, prepared.splits
        answerer = self.predictor(model, tokenizer, None, config)
        train_windows, validation_windows = answerer.windows(splits.train), answerer.windows(splits.validation)
        fit = fit_with_trainer(model, config, strategy, checkpoints, progress, prepared.selected_on,
                               _dataset(train_windows), _dataset(validation_windows),
                               DataCollatorWithPadding(tokenizer),
                               _validation_scores(answerer, validation_windows, splits.validation))
        return Fitted(fit.timings, facts={"train_windows": len(train_windows.example)}, log=fit.log,
                      gathered=fit.gathered)

    def predictor(self, model: SpanExtractor, tokenizer: PreTrainedTokenizerBase, targets: None,
                  config: RunConfig) -> Answerer:
        return Answerer(model, tokenizer, config.training.max_length, config.qa, config.training.eval_batch_size)

    def score(self, predictor: Answerer, examples: pd.DataFrame, source: str) -> dict[str, Any]:
        return squad_metrics_of(predictor.answer(examples), examples)

    def test(self, predictor: Answerer, prepared: Prepared, folder: Path) -> dict[str, Any]:
        """SQuAD EM/F1 of the test questions, whose answers are saved as the official SQuAD scripts read them."""
        test = prepared.splits.test
        answers = predictor.answer(test)
        write_json(folder / PREDICTIONS_FILE, dict(zip(test["id"], (answer.text for answer in answers), strict=True)))
        return squad_metrics_of(answers, test)

    def latency_ms(self, predictor: Answerer, test: pd.DataFrame) -> float:
        return latency_per_example_ms(predictor.answer, [test.iloc[[index]] for index in range(min(32, len(test)))])

    def read_examples(self, config: RunConfig, targets: None, source: str, text_column: str,
                      label_column: str) -> pd.DataFrame:
        return load_squad(source)

    def test_examples(self, config: RunConfig) -> pd.DataFrame:
        """The test questions, split as the run split them; `qa.no_answer` is already decided in its config."""
        return split_by_context(load_squad(config.data.source), config.data).test

    def predict(self, predictor: Answerer, inputs: list[str], context: str | None) -> list[dict[str, Any]]:
        """Answers to questions about one passage, each with its character span in it (end exclusive)."""
        if context is None:
            raise TunelabError("this is a question-answering run: ask it questions about a passage, "
                               "`tunelab predict RUN QUESTION --context PASSAGE`")
        return [{"question": question, "answer": answer.text, "start": answer.start, "end": answer.end,
                 "score": answer.score, "probability": answer.probability}
                for question, answer in zip(inputs, predictor.ask(inputs, context), strict=True)]

    def predictions_view(self, records: list[dict[str, Any]], title: str) -> RenderableType:
        """Each question's answer with its character span, or "no answer"."""
        table = Table(title=escape(title))
        for column in ("question", "answer", "characters", "probability", "score"):
            table.add_column(column, justify="right" if column in ("probability", "score") else "left")
        for record in records:
            found = record["start"] is not None
            table.add_row(escape(record["question"]),
                          f"[bold]{escape(record['answer'])}[/bold]" if found else "[dim]no answer[/dim]",
                          f"{record['start']}-{record['end']}" if found else "-", f"{record['probability']:.3f}",
                          f"{record['score']:.2f}")
        return table

    def quality_columns(self, metrics: dict[str, Any]) -> tuple[str, str]:
        return f"EM {metrics['test']['exact_match']:.1f}", f"F1 {metrics['test']['f1']:.1f}"  # percent

    def evaluation_view(self, metrics: dict[str, Any], title: str) -> RenderableType:
        """SQuAD exact match and F1 (percent) over all questions, and on SQuAD 2.0 data over the answerable and
        the unanswerable ones apart."""
        table = Table(title=f"{escape(title)} (SQuAD scores, %)")
        for column in ("questions", "count", "exact match", "F1"):
            table.add_column(column, justify="left" if column == "questions" else "right")
        for name, prefix in (("all", ""), ("answerable", "has_answer_"), ("unanswerable", "no_answer_")):
            if f"{prefix}examples" in metrics:
                table.add_row(name, str(metrics[f"{prefix}examples"]), f"{metrics[f'{prefix}exact_match']:.2f}",
                              f"{metrics[f'{prefix}f1']:.2f}")
        return table


RECIPE = QuestionAnsweringRecipe()
