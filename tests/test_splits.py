"""Seeded, stratified splits that every strategy and seed shares: same data + split seed -> same test set."""

import pandas as pd
import pytest
from tiny import sentiment_frame

from tunelab.data.splits import split_examples
from tunelab.errors import TunelabError


def _frame(n: int = 200) -> pd.DataFrame:
    """70% positive, 20% negative, 10% neutral, texts unique so rows can be followed by text."""
    labels = ["positive"] * 7 + ["negative"] * 2 + ["neutral"]
    return pd.DataFrame({"text": [f"text {index}" for index in range(n)],
                         "label": [labels[index % 10] for index in range(n)]})


def _texts(part: pd.DataFrame) -> list[str]:
    return part["text"].tolist()


def test_sizes_and_disjoint_cover():
    frame = _frame(200)
    splits = split_examples(frame, 0.15, 0.1, seed=0)
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (150, 20, 30)
    parts = [set(_texts(part)) for part in (splits.train, splits.validation, splits.test)]
    assert parts[0].isdisjoint(parts[1]) and parts[0].isdisjoint(parts[2]) and parts[1].isdisjoint(parts[2])
    assert set.union(*parts) == set(frame["text"])
    for part in (splits.train, splits.validation, splits.test):
        assert list(part.index) == list(range(len(part)))


def test_counts_instead_of_fractions():
    splits = split_examples(_frame(200), 40, 10, seed=0)
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (150, 10, 40)


def test_deterministic_for_a_seed_and_different_across_seeds():
    frame = _frame(200)
    first, again, other = (split_examples(frame, 0.15, 0.1, seed) for seed in (3, 3, 4))
    for name in ("train", "validation", "test"):
        pd.testing.assert_frame_equal(getattr(first, name), getattr(again, name))
    assert set(_texts(first.test)) != set(_texts(other.test))


def test_does_not_depend_on_row_identity_beyond_the_data():
    frame = _frame(200)
    copy = frame.copy(deep=True)
    assert _texts(split_examples(frame, 0.15, 0.1, 0).test) == _texts(split_examples(copy, 0.15, 0.1, 0).test)


@pytest.mark.parametrize("part", ["train", "validation", "test"])
def test_stratified_label_shares(part: str):
    splits = split_examples(_frame(200), 0.15, 0.1, seed=0)
    shares = getattr(splits, part)["label"].value_counts(normalize=True)
    assert shares["positive"] == pytest.approx(0.7, abs=0.04)
    assert shares["negative"] == pytest.approx(0.2, abs=0.04)
    assert shares["neutral"] == pytest.approx(0.1, abs=0.04)


def test_stratified_test_split_exact_counts():
    # 200 rows 140/40/20 -> 30 test rows hold exactly 21/6/3.
    counts = split_examples(_frame(200), 0.15, 0.1, seed=0).test["label"].value_counts().to_dict()
    assert counts == {"positive": 21, "negative": 6, "neutral": 3}


@pytest.mark.parametrize("limit_train", [None, 10, 50, 149, 1000])
def test_test_split_does_not_depend_on_limit_train(limit_train):
    frame = _frame(200)
    unlimited = split_examples(frame, 0.15, 0.1, seed=0)
    limited = split_examples(frame, 0.15, 0.1, seed=0, limit_train=limit_train)
    pd.testing.assert_frame_equal(limited.test, unlimited.test)
    pd.testing.assert_frame_equal(limited.validation, unlimited.validation)
    assert len(limited.train) == min(limit_train or 150, 150)
    assert set(_texts(limited.train)) <= set(_texts(unlimited.train))


def test_limit_train_is_stratified():
    counts = split_examples(_frame(200), 0.15, 0.1, seed=0, limit_train=50).train["label"].value_counts()
    assert counts.to_dict() == {"positive": 35, "negative": 10, "neutral": 5}


def test_limit_validation_is_a_stratified_subset_and_leaves_the_rest():
    frame = _frame(400)
    unlimited = split_examples(frame, 0.15, 0.1, seed=0)
    limited = split_examples(frame, 0.15, 0.1, seed=0, limit_validation=20)
    assert limited.validation["label"].value_counts().to_dict() == {"positive": 14, "negative": 4, "neutral": 2}
    assert set(_texts(limited.validation)) <= set(_texts(unlimited.validation))
    pd.testing.assert_frame_equal(limited.test, unlimited.test)
    pd.testing.assert_frame_equal(limited.train, unlimited.train)


def test_limit_eval_takes_prefixes():
    frame = _frame(200)
    unlimited = split_examples(frame, 0.15, 0.1, seed=0)
    limited = split_examples(frame, 0.15, 0.1, seed=0, limit_eval=7)
    pd.testing.assert_frame_equal(limited.test, unlimited.test.iloc[:7])
    pd.testing.assert_frame_equal(limited.validation, unlimited.validation.iloc[:7])
    pd.testing.assert_frame_equal(limited.train, unlimited.train)


def test_rare_label_falls_back_to_unstratified():
    frame = pd.concat([sentiment_frame(40), pd.DataFrame({"text": ["meh"], "label": ["neutral"]})],
                      ignore_index=True)
    splits = split_examples(frame, 0.2, 0.1, seed=0)
    assert len(splits.train) + len(splits.validation) + len(splits.test) == 41


@pytest.mark.parametrize(("n", "labels", "limit_train", "sizes"), [
    (8, ("negative", "positive"), None, (6, 1, 1)),  # one test row cannot hold both labels
    (90, ("negative", "neutral", "positive"), 2, (2, 9, 14)),  # two training rows cannot hold three labels
    (90, ("negative", "neutral", "positive"), 66, (66, 9, 14)),  # one row left over cannot either
])
def test_sides_too_small_to_stratify_still_split(n, labels, limit_train, sizes):
    splits = split_examples(sentiment_frame(n, labels), 0.15, 0.1, seed=0, limit_train=limit_train)
    assert (len(splits.train), len(splits.validation), len(splits.test)) == sizes


@pytest.mark.parametrize(("n", "test_size", "validation_size"), [
    (5, 0.15, 0.1),   # rounds to 1 test, 0 validation
    (3, 2, 1),        # nothing left to train on
    (10, 6, 4),
    (100, 0.01, 0.001),
])
def test_too_little_data(n: int, test_size: float, validation_size: float):
    with pytest.raises(TunelabError, match=rf"cannot split {n} examples"):
        split_examples(sentiment_frame(n), test_size, validation_size, seed=0)
