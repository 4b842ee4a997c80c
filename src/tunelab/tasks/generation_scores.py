"""How well a causal LM answers held-out examples: the loss and perplexity of the written answers under the model,
and ROUGE-L of the model's own greedy answers against them.

The loss says how likely the model finds the reference answers; ROUGE-L (Lin 2004: the longest common subsequence
of words, as an F-measure of its precision and recall) says how close what it actually writes comes to them.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

import datasets
import pandas as pd
from rouge_score.rouge_scorer import RougeScorer
from transformers import PreTrainedTokenizerBase

from tunelab.tasks.conversation import context_ids
from tunelab.tasks.generation import CausalLM, complete, contexts_and_references, held_out_loss, tokenize_examples


@dataclass(frozen=True)
class HeldOut:
    """A held-out split, prepared once and scored before and after training."""

    tokens: datasets.Dataset  # every example with its answer labels: the loss
    contexts: list[list[int]]  # the first examples' questions as token ids: what the model answers for ROUGE-L
    references: list[str]  # the answers written for them


def held_out_set(examples: pd.DataFrame, tokenizer: PreTrainedTokenizerBase, max_length: int, source: str,
                 rouge_examples: int) -> HeldOut:
    """The examples tokenised for the loss, and the first `rouge_examples` of them asked for ROUGE-L."""
    contexts, references = contexts_and_references(examples.iloc[:rouge_examples])
    return HeldOut(tokenize_examples(examples, tokenizer, max_length, source),
                   [context_ids(tokenizer, context) for context in contexts], references)


def rouge_l(predictions: list[str], references: list[str]) -> float:
    """Mean ROUGE-L F-measure over the pairs, from 0 to 1, with Porter stemming (`rouge-score`, as the CNN/DailyMail
    and XSum results report it). Its tokenizer keeps only the letters a-z and digits, lowercased."""
    scorer = RougeScorer(["rougeL"], use_stemmer=True)
    return statistics.fmean(scorer.score(reference, prediction)["rougeL"].fmeasure
                            for prediction, reference in zip(predictions, references, strict=True))


def score(model: CausalLM, tokenizer: PreTrainedTokenizerBase, held_out: HeldOut, batch_size: int,
          max_new_tokens: int) -> dict[str, float]:
    """Loss and perplexity per answer token; with questions to ask, ROUGE-L of greedy answers and how many."""
    scores = held_out_loss(model, held_out.tokens, tokenizer, batch_size)
    if not held_out.contexts:
        return scores
    answers = [answer for start in range(0, len(held_out.contexts), batch_size)
               for answer in complete(model, tokenizer, held_out.contexts[start:start + batch_size], max_new_tokens)]
    return {**scores, "rouge_l": rouge_l(answers, held_out.references), "rouge_examples": len(answers)}
