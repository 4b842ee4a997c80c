"""RLHF data: the formats TRL reads, validated with one-line errors, and the embedded `movie-sentiment` preset.

Formats (TRL's conventions): language modelling (`text`, or chat `messages`), prompt-completion (`prompt`,
`completion`), preference (`chosen`, `rejected`, with a `prompt` or with the prompt implicit in both), and
prompt-only (`prompt`).

The preset is the controlled-sentiment task of Ziegler et al. 2019 and of the DPO paper (Rafailov et al. 2023),
built from real human judgements instead of a classifier's: movie-review snippets rated by about 20 people each
(VADER's ground truth, -4..+4). Snippets are split first, so training and test pairs never share a snippet.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from tunelab.data.loading import read_source, select_columns
from tunelab.data.messages import check_messages
from tunelab.errors import TunelabError

# format -> the column sets that make it, first match wins (a `prompt` column makes a preference explicit)
FORMATS: dict[str, tuple[tuple[str, ...], ...]] = {
    "preference": (("prompt", "chosen", "rejected"), ("chosen", "rejected")),
    "prompt-completion": (("prompt", "completion"),),
    "language-modelling": (("text",), ("messages",)),
    "prompt-only": (("prompt",),),
}
# what each stage reads
STAGE_FORMATS = {"sft": ("prompt-completion", "language-modelling"), "reward": ("preference",),
                 "dpo": ("preference",), "ppo": ("prompt-only",)}


def detect_format(columns: list[str]) -> tuple[str, tuple[str, ...]]:
    """The format a table's columns make, and the columns that make it."""
    for name, column_sets in FORMATS.items():
        for needed in column_sets:
            if set(needed) <= set(columns):
                return name, needed
    raise TunelabError(f"columns {', '.join(map(str, columns))} match no RLHF data format; give text (or messages), "
                       f"prompt + completion, chosen + rejected (+ prompt), or prompt")


def load_stage_data(source: str, stage: str) -> pd.DataFrame:
    """The table a stage trains on, in the first of its formats the source's columns make, validated."""
    frame = read_source(source)
    name, columns = detect_format(list(frame.columns))
    if name not in STAGE_FORMATS[stage]:
        wanted = " or ".join(STAGE_FORMATS[stage])
        raise TunelabError(f"{source} holds {name} data (columns {', '.join(columns)}); rlhf {stage} needs {wanted}")
    if columns == ("messages",):
        return pd.DataFrame({"messages": check_messages(frame["messages"], source)})
    return select_columns(frame, {column: column for column in columns}, source)


@dataclass(frozen=True)
class SentimentPreset:
    """The movie-sentiment task: what each stage trains and is evaluated on."""

    sft: pd.DataFrame  # text: training snippets
    sft_test: pd.DataFrame  # text: held-out snippets
    pairs_train: pd.DataFrame  # chosen, rejected (implicit prompt): two training snippets, the higher-rated chosen
    pairs_test: pd.DataFrame  # the same from held-out snippets
    prompts_train: pd.DataFrame  # prompt: the first words of training snippets
    prompts_test: pd.DataFrame  # prompt: the first words of held-out snippets


def preference_pairs(snippets: pd.DataFrame, count: int, gap: float, seed: int) -> pd.DataFrame:
    """`count` pairs of distinct snippets whose mean human ratings differ by at least `gap`, the higher-rated one
    chosen. Each snippet is drawn uniformly, so every snippet can appear in several pairs but no pair twice."""
    rng = np.random.default_rng(seed)
    texts, ratings = snippets["text"].to_numpy(), snippets["rating"].to_numpy()
    pairs: dict[tuple[int, int], None] = {}
    for _ in range(100):  # rounds of candidate draws; a gap that leaves too few pairs stops with an error below
        first, second = rng.integers(0, len(texts), size=(2, 4 * count))
        for i, j in zip(first, second, strict=True):
            if abs(ratings[i] - ratings[j]) >= gap and (min(i, j), max(i, j)) not in pairs:
                pairs[(int(min(i, j)), int(max(i, j)))] = None
            if len(pairs) == count:
                break
        if len(pairs) == count:
            break
    if len(pairs) < count:
        raise TunelabError(f"only {len(pairs)} pairs of snippets differ by a rating gap of {gap}; lower the gap "
                           f"or ask for fewer pairs")
    ordered = [(i, j) if ratings[i] > ratings[j] else (j, i) for i, j in pairs]
    return pd.DataFrame({"chosen": [texts[i] for i, _ in ordered], "rejected": [texts[j] for _, j in ordered],
                         "chosen_rating": [ratings[i] for i, _ in ordered],
                         "rejected_rating": [ratings[j] for _, j in ordered]})


def prompt_prefixes(snippets: pd.DataFrame, words: int) -> pd.DataFrame:
    """The first `words` words of each snippet long enough to have more after them: what the policy continues."""
    split = snippets["text"].str.split()
    long_enough = split.str.len() > words
    return pd.DataFrame({"prompt": split[long_enough].str[:words].str.join(" ")}).reset_index(drop=True)


def movie_sentiment(ratings: pd.DataFrame, train_pairs: int = 2000, test_pairs: int = 500, gap: float = 2.0,
                    prompt_words: int = 4, test_share: float = 0.2, seed: int = 0) -> SentimentPreset:
    """The preset from rated snippets (`text`, `rating`): snippets split first (test_share held out), then pairs
    and prompts drawn within each side."""
    shuffled = ratings.sample(frac=1.0, random_state=seed).reset_index(drop=True)
    cut = int(round(len(shuffled) * (1 - test_share)))
    train, test = shuffled.iloc[:cut].reset_index(drop=True), shuffled.iloc[cut:].reset_index(drop=True)
    return SentimentPreset(
        sft=train[["text"]], sft_test=test[["text"]], pairs_train=preference_pairs(train, train_pairs, gap, seed),
        pairs_test=preference_pairs(test, test_pairs, gap, seed + 1),
        prompts_train=prompt_prefixes(train, prompt_words), prompts_test=prompt_prefixes(test, prompt_words))


def load_movie_sentiment() -> SentimentPreset:
    """The preset from the embedded movie-review ratings (fetched and cached on first use, like movie-snippets)."""
    from tunelab.assets.datasets import read_vader_ratings, vader_archive

    return movie_sentiment(read_vader_ratings(vader_archive(), "movieReviewSnippets"))


# stage -> the preset's (training, held-out) parts
PRESET_PARTS = {"sft": ("sft", "sft_test"), "reward": ("pairs_train", "pairs_test"),
                "dpo": ("pairs_train", "pairs_test"), "ppo": ("prompts_train", "prompts_test")}


def stage_splits(source: str, stage: str, test_share: float = 0.05, seed: int = 0) -> tuple[pd.DataFrame,
                                                                                                pd.DataFrame]:
    """A stage's training and held-out examples: the preset's own parts, or a file's rows split at random."""
    if source == "movie-sentiment":
        preset = load_movie_sentiment()
        return tuple(getattr(preset, part) for part in PRESET_PARTS[stage])
    rows = load_stage_data(source, stage).sample(frac=1.0, random_state=seed).reset_index(drop=True)
    held_out = max(1, int(round(len(rows) * test_share)))
    if len(rows) - held_out < 1:
        raise TunelabError(f"{source} has {len(rows)} example(s): too few to hold some out for testing")
    return rows.iloc[held_out:].reset_index(drop=True), rows.iloc[:held_out].reset_index(drop=True)
