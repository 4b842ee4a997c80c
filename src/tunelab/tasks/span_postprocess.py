"""From start and end logits to an answer span: the n-best search of Hugging Face's `postprocess_qa_predictions`
(run_qa's utils_qa.py), and SQuAD 2.0's null answer (Devlin et al. 2019, section 4.3). Pure numpy, no model.

An example's context may span several windows. In each one the `n_best` highest start and end logits pair into
candidate spans that lie in the context, end at or after their start and take at most `max_answer_length` tokens;
a span's score is its start logit plus its end logit, and the best span over all windows wins; a span of blank
context (a byte-level token of spaces or newlines) is none. Where unanswerable questions are allowed, the null score
(start and end at the window's null position) is taken at its minimum over the windows, and the answer is nothing
when it beats the best span's score by more than `null_threshold`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

Offsets = list[tuple[int, int] | None]  # per token of a window: its characters in the context; None outside it
# (T,) start logits, (T,) end logits, offsets of the T tokens, and the null position (where a window without the
# answer points; see tasks.question_answering.encode_windows)
Window = tuple[np.ndarray, np.ndarray, Offsets, int]


@dataclass(frozen=True)
class Answer:
    text: str  # "" when the model answers nothing
    start: int | None  # the span's characters in the context, [start, end); None for no answer
    end: int | None
    score: float  # start + end logit of the span, or the null score for no answer
    probability: float  # softmax of the scores over the n-best spans (and the null answer where it is allowed)


def window_spans(window: Window, n_best: int, max_answer_length: int) -> dict[tuple[int, int], float]:
    """(first character, end character) -> score of the valid spans among one window's n-best starts and ends.

    Logits past the window's own tokens (the padding of a batch) are never read."""
    offsets = window[2]
    start_logits, end_logits = (logits[:len(offsets)] for logits in window[:2])  # (T,) each
    starts, ends = (np.argsort(logits, kind="stable")[::-1][:n_best] for logits in (start_logits, end_logits))
    return {(offsets[start][0], offsets[end][1]): float(start_logits[start] + end_logits[end])
            for start in starts for end in ends
            if offsets[start] is not None and offsets[end] is not None and start <= end < start + max_answer_length}


def best_answer(windows: list[Window], context: str, n_best: int, max_answer_length: int, null_threshold: float,
                no_answer: bool) -> Answer:
    """The answer to one question from the logits of its windows. A span found in two overlapping windows keeps
    its best score. With no valid span at all the answer is nothing, whatever `no_answer` says."""
    spans: dict[tuple[int, int], float] = {}
    for window in windows:
        for span, score in window_spans(window, n_best, max_answer_length).items():
            if context[span[0]:span[1]].strip():  # spaces alone are no answer
                spans[span] = max(score, spans.get(span, -np.inf))
    ranked = sorted(spans.items(), key=lambda item: -item[1])[:n_best]
    null_score = min(float(start[null] + end[null]) for start, end, _, null in windows)
    scores = np.array([score for _, score in ranked] + ([null_score] if no_answer or not ranked else []))
    probabilities = np.exp(scores - scores.max())
    probabilities /= probabilities.sum()
    if not ranked or (no_answer and null_score - ranked[0][1] > null_threshold):
        return Answer("", None, None, null_score, float(probabilities[-1]))
    (start, end), score = ranked[0]
    text = context[start:end]  # byte-level BPE tokens carry the space before a word: not part of the answer
    start, end = start + len(text) - len(text.lstrip()), end - len(text) + len(text.rstrip())
    return Answer(context[start:end], start, end, score, float(probabilities[0]))
