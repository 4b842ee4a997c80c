"""Question-answering runs: train a span extractor on SQuAD-style data, keep the epoch with the best validation F1,
answer questions, and score the answers with SQuAD's exact match and F1."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pandas as pd
import torch
import transformers
from transformers import DataCollatorWithPadding, EvalPrediction, PreTrainedTokenizerBase

from tunelab.batching import padded_batches
from tunelab.config import QuestionAnsweringConfig, RunConfig
from tunelab.data.squad import has_unanswerable, load_squad, split_by_context
from tunelab.errors import TunelabError
from tunelab.resources import PeakMemory, latency_per_example_ms
from tunelab.runs import CHECKPOINTS, LoadedRun, RunResult, StagedRun, build_span_extractor, commit_run, write_json
from tunelab.tasks.question_answering import SpanExtractor, Windows, encode_windows, is_causal, reads_segments
from tunelab.tasks.span_postprocess import Answer, best_answer
from tunelab.tasks.squad_metrics import squad_scores
from tunelab.training.trainer import build_trainer, training_arguments

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


def fit_span_extractor(answerer: Answerer, train: pd.DataFrame, validation: pd.DataFrame, config: RunConfig,
                       checkpoints: Path, progress: bool) -> tuple[dict[str, float], int]:
    """Train on every window of the training questions; keep the epoch with the best validation F1. Returns the
    timings and the number of training windows. A frozen-encoder strategy (linear-probe) trains through the frozen
    encoder: its cached sentence vectors are of no use to spans."""
    args = training_arguments(config, checkpoints, progress, best_metric="f1")
    train_windows, validation_windows = answerer.windows(train), answerer.windows(validation)
    trainer = build_trainer(answerer.model, args, _dataset(train_windows), _dataset(validation_windows),
                            DataCollatorWithPadding(answerer.tokenizer),
                            _validation_scores(answerer, validation_windows, validation))
    start = time.perf_counter()
    trainer.train()
    return {"train_s": time.perf_counter() - start}, len(train_windows.example)


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


def train_span_extractor(config: RunConfig, staged: StagedRun, progress: bool) -> RunResult:
    """`api.train` for question answering: a run whose metrics are SQuAD EM/F1 on the test split's questions."""
    examples = load_squad(config.data.source)
    config = resolve_no_answer(config, examples)
    splits = split_by_context(examples, config.data)
    transformers.set_seed(config.training.seed)
    model, tokenizer = build_span_extractor(config)
    answerer = Answerer(model, tokenizer, config.training.max_length, config.qa, config.training.eval_batch_size)
    with staged:
        with PeakMemory() as memory:
            timings, train_windows = fit_span_extractor(answerer, splits.train, splits.validation, config,
                                                        staged.path / CHECKPOINTS, progress)
        answers = answerer.answer(splits.test)
        metrics = {"test": squad_metrics_of(answers, splits.test), "train_examples": len(splits.train),
                   "validation_examples": len(splits.validation), "train_windows": train_windows}
        one_at_a_time = [splits.test.iloc[[index]] for index in range(min(32, len(splits.test)))]
        latency = latency_per_example_ms(answerer.answer, one_at_a_time)
        write_json(staged.path / PREDICTIONS_FILE, dict(zip(splits.test["id"], (a.text for a in answers),
                                                            strict=True)))
        return commit_run(staged, config, model, metrics, timings, memory, latency, answerer)


def run_answerer(run: LoadedRun) -> Answerer:
    return Answerer(run.model, run.tokenizer, run.config.training.max_length, run.config.qa,
                    run.config.training.eval_batch_size)


def evaluate_span_extractor(run_dir: Path, run: LoadedRun, source: str | None, limit: int | None) -> dict[str, Any]:
    """SQuAD EM/F1 on the questions of the run's test split, or of every question in `source`."""
    examples = load_squad(source) if source else split_by_context(load_squad(run.config.data.source),
                                                                   run.config.data).test
    examples = examples.iloc[:limit]
    return squad_metrics_of(run_answerer(run).answer(examples), examples)
