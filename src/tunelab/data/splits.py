"""Deterministic, seeded, stratified train/validation/test splits.

The split depends only on the data and `split_seed`, never on the training seed or on
`limit_train`, so every strategy and every seed is measured on the same test set.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
from sklearn.model_selection import train_test_split

from tunelab.config import DataConfig
from tunelab.errors import TunelabError


@dataclass(frozen=True)
class Splits:
    train: pd.DataFrame
    validation: pd.DataFrame
    test: pd.DataFrame


def _count(size: float, total: int) -> int:
    return int(round(size * total)) if size < 1 else int(size)


def _stratify(frame: pd.DataFrame, count: int) -> pd.Series | None:
    """Stratify by label unless there is none, a label is too rare, or a side too small to hold every label."""
    if "label" not in frame.columns:
        return None
    counts = frame["label"].value_counts()
    fits = min(count, len(frame) - count) >= len(counts)
    return frame["label"] if counts.min() >= 2 and fits else None


def _take(frame: pd.DataFrame, count: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split off `count` rows (stratified); returns (taken, rest)."""
    if count >= len(frame):
        return frame, frame.iloc[:0]
    rest, taken = train_test_split(frame, test_size=count, random_state=seed, stratify=_stratify(frame, count))
    return taken, rest


def split_examples(examples: pd.DataFrame, test_size: float, validation_size: float, seed: int,
                   limit_train: int | None = None, limit_eval: int | None = None,
                   limit_validation: int | None = None) -> Splits:
    total = len(examples)
    n_test, n_validation = _count(test_size, total), _count(validation_size, total)
    if n_test < 1 or n_validation < 1 or n_test + n_validation >= total:
        raise TunelabError(f"cannot split {total} examples into test={n_test} and validation={n_validation} "
                           f"with training data left over: give more data, or set the sizes as counts, e.g. "
                           f"--set data.test_size=20 --set data.validation_size=10")
    test, rest = _take(examples, n_test, seed)
    validation, train = _take(rest, n_validation, seed)
    if limit_train is not None:
        train, _ = _take(train, limit_train, seed)
    if limit_validation is not None:
        validation, _ = _take(validation, limit_validation, seed)
    if limit_eval is not None:
        validation, test = validation.iloc[:limit_eval], test.iloc[:limit_eval]
    return Splits(*(part.reset_index(drop=True) for part in (train, validation, test)))


def _per_label(frame: pd.DataFrame, shots: int, seed: int, part: str) -> pd.DataFrame:
    counts = frame["label"].value_counts()
    if counts.min() < shots:
        raise TunelabError(f"--shots {shots}: the {part} split has only {counts.min()} examples of label "
                           f"'{counts.idxmin()}'; ask for fewer shots")
    return frame.groupby("label", sort=True, group_keys=False).sample(n=shots, random_state=seed) \
        .sample(frac=1.0, random_state=seed)


def few_shot(splits: Splits, shots: int, seed: int) -> Splits:
    """K examples per label for training and K per label for validation (LM-BFF's |dev| = |train|, so model
    selection cannot lean on more labels than training has), drawn with `seed`; the test split is unchanged."""
    return Splits(_per_label(splits.train, shots, seed, "training").reset_index(drop=True),
                  _per_label(splits.validation, shots, seed, "validation").reset_index(drop=True), splits.test)


def split_as_configured(examples: pd.DataFrame, data: DataConfig) -> Splits:
    """The split every task makes of its examples: the config's sizes, seed and limits."""
    return split_examples(examples, data.test_size, data.validation_size, data.split_seed, data.limit_train,
                          data.limit_eval, data.limit_validation)
