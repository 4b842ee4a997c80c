"""The independent judge: the VADER lexicon analyser (Hutto & Gilbert 2014), which was not trained here, so a
policy cannot have learnt its quirks the way it can learn the reward model's. It scores a text's sentiment as a
compound score in [-1, 1]; a policy wins a prompt against another when its response to it scores higher."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache

import numpy as np
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer


@cache
def _analyser() -> SentimentIntensityAnalyzer:
    return SentimentIntensityAnalyzer()  # reads its lexicon file once


def vader_scores(texts: Sequence[str]) -> np.ndarray:
    """(N,) VADER compound scores."""
    return np.array([_analyser().polarity_scores(text)["compound"] for text in texts], dtype=np.float64)


def win_rate(scores: np.ndarray, baseline: np.ndarray) -> float:
    """The share of prompts whose response outscores the baseline's response to the same prompt; a tie is half a
    win (both responses neutral, say)."""
    if len(scores) != len(baseline) or not len(scores):
        raise ValueError(f"win rate needs paired scores, got {len(scores)} and {len(baseline)}")
    return float(np.mean(np.where(scores > baseline, 1.0, np.where(scores == baseline, 0.5, 0.0))))
