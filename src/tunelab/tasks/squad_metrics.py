"""Exact match and F1 exactly as the official SQuAD evaluation scripts define them, in percent as they report them.

Ported from `evaluate-v2.0.py` (https://worksheets.codalab.org/rest/bundles/0x6b567e1cf2e041ec80d7098f031c5c9e/
contents/blob/), whose `normalize_answer`, token F1 and exact match are those of `evaluate-v1.1.py`. v2.0 differs in
two rules: it drops the gold answers that normalise to nothing (v1.1 keeps them, where such a gold scores exact match
1 and F1 0 against a prediction that also normalises to nothing), and a question left without gold answers is
unanswerable, scoring 1 only for a prediction that normalises to nothing. So on data without unanswerable questions
the two scripts agree except on a prediction that normalises to nothing for a question with such a gold answer. Our
own copy because the `evaluate` library fetches its metric scripts from the hub.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """Lower case, drop punctuation, the articles a/an/the and extra whitespace (the scripts' order)."""
    text = "".join(char for char in text.lower() if char not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(gold: str, prediction: str) -> int:
    return int(normalize_answer(gold) == normalize_answer(prediction))


def token_f1(gold: str, prediction: str) -> float:
    """Harmonic mean of token precision and recall after normalising; an empty side scores 1 only with the other."""
    gold_tokens, predicted_tokens = normalize_answer(gold).split(), normalize_answer(prediction).split()
    if not gold_tokens or not predicted_tokens:
        return float(gold_tokens == predicted_tokens)
    same = sum((Counter(gold_tokens) & Counter(predicted_tokens)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(predicted_tokens), same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def question_scores(golds: Sequence[str], prediction: str) -> tuple[int, float]:
    """(exact match, F1) of one prediction: the best over the gold answers; a question whose gold answers all
    normalise to nothing (or that has none) is unanswerable, and only the empty prediction is right."""
    answers = [gold for gold in golds if normalize_answer(gold)] or [""]
    return max(exact_match(gold, prediction) for gold in answers), max(token_f1(gold, prediction) for gold in answers)


def _summary(scores: list[tuple[int, float]]) -> dict[str, float | int]:
    return {"exact_match": 100.0 * sum(em for em, _ in scores) / len(scores),
            "f1": 100.0 * sum(f1 for _, f1 in scores) / len(scores), "examples": len(scores)}


def squad_scores(gold_answers: Sequence[Sequence[str]], predictions: Sequence[str]) -> dict[str, float | int]:
    """Mean exact match and F1 in percent over the questions; when some have no answer (SQuAD 2.0 data), also the
    scores on the answerable (`has_answer_*`) and unanswerable (`no_answer_*`) ones, as the v2.0 script reports."""
    scores = [question_scores(golds, prediction) for golds, prediction in zip(gold_answers, predictions, strict=True)]
    result = _summary(scores)
    answerable = [bool(golds) for golds in gold_answers]
    if not all(answerable):
        for name, wanted in (("has_answer", True), ("no_answer", False)):
            chosen = [score for score, has in zip(scores, answerable, strict=True) if has == wanted]
            if chosen:
                result.update({f"{name}_{key}": value for key, value in _summary(chosen).items()})
    return result
