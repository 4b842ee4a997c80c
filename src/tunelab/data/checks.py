"""What a user's data looks like before anything trains: rows per split, class balance, text lengths in tokens and
how many texts `max_length` cuts, with a warning where the data will hurt the run and what to do about it."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from rich.markup import escape
from rich.table import Table

from tunelab.data.splits import Splits

TRUNCATION_WARNING = 0.20  # share of training texts cut by max_length above which a run warns
RARE_CLASS = 0.10  # share of the training split under which a class is called rare


@dataclass
class DataChecks:
    rows: dict[str, int]  # per split
    class_shares: dict[str, float]  # label -> share of the training split; empty without labels
    token_lengths: dict[str, int]  # training texts: median, p95, max, in the model's tokens
    max_length: int
    truncated_share: float  # of the training texts
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def table(self, title: str) -> Table:
        table = Table(title=escape(title))
        for column in ("split", "rows", "class balance (training)", "tokens: median / p95 / max", "cut"):
            table.add_column(column, justify="left" if column in ("split", "class balance (training)") else "right")
        balance = ", ".join(f"{escape(label)} {share:.0%}" for label, share in self.class_shares.items()) or "-"
        lengths = self.token_lengths
        for name, rows in self.rows.items():
            first = name == "train"
            table.add_row(name, str(rows), balance if first else "",
                          f"{lengths['median']} / {lengths['p95']} / {lengths['max']}" if first else "",
                          f"{self.truncated_share:.0%} over {self.max_length}" if first else "")
        return table


def check_sentences(splits: Splits, lengths: list[int], max_length: int, labelled: bool) -> DataChecks:
    """The checks of a sentence task's splits, given the training texts' lengths in tokens (untruncated)."""
    shares = (splits.train["label"].value_counts(normalize=True).sort_index().to_dict() if labelled else {})
    tokens = np.asarray(lengths)
    p95 = int(math.ceil(np.percentile(tokens, 95)))
    checks = DataChecks({name: len(part) for name, part in vars(splits).items()},
                        {str(label): float(share) for label, share in shares.items()},
                        {"median": int(np.median(tokens)), "p95": p95, "max": int(tokens.max())}, max_length,
                        float((tokens > max_length).mean()))
    if checks.truncated_share > TRUNCATION_WARNING:
        checks.warnings.append(
            f"{checks.truncated_share:.0%} of the training texts are longer than --max-length {max_length} tokens and "
            f"are cut; --max-length {p95} keeps 95% of them whole, at about {p95 / max_length:.1f}x the memory and "
            f"time per example (more where attention dominates)")
    for label, share in checks.class_shares.items():
        if share < RARE_CLASS:
            checks.warnings.append(
                f"class '{label}' is {share:.0%} of the training rows: pass --class-weights balanced so that its "
                f"errors weigh as much as a common class's, and consider --select-on macro-f1")
    return checks


TOKENS_PER_WORD = 1.4  # WordPiece and BPE tokenizers on English prose, near enough for advice before any tokenizer


@dataclass(frozen=True)
class DataProfile:
    """A user's labelled file as `recommend` sees it: rows, class balance, text lengths in words."""

    source: str
    text_column: str
    label_column: str
    rows: int
    class_shares: dict[str, float]
    words_median: int
    words_p95: int

    @property
    def training_rows(self) -> int:
        """What trains after `train`'s default split (15% test, 10% validation)."""
        return max(1, round(self.rows * 0.75))

    def train_options(self, max_length: int = 128) -> list[str]:
        """The `tunelab train` options this data needs: its file and columns, class weights when a class is rare,
        and a longer `--max-length` when most texts would be cut."""
        options = ["--data", self.source]
        options += ["--text-column", self.text_column] if self.text_column != "text" else []
        options += ["--label-column", self.label_column] if self.label_column != "label" else []
        if min(self.class_shares.values()) < RARE_CLASS:
            options += ["--class-weights", "balanced"]
        tokens_p95 = math.ceil(self.words_p95 * TOKENS_PER_WORD)
        if tokens_p95 > max_length:
            options += ["--max-length", str(min(512, tokens_p95))]
        return options

    def summary(self) -> str:
        balance = ", ".join(f"{label} {share:.0%}" for label, share in self.class_shares.items())
        return (f"{self.source}: {self.rows} rows ({self.training_rows} to train on), {len(self.class_shares)} "
                f"classes ({balance}), {self.words_median} words per text (95% under {self.words_p95})")


def profile_file(source: str, text_column: str, label_column: str) -> DataProfile:
    from tunelab.data.loading import load_examples

    examples = load_examples(source, text_column, label_column)
    words = examples["text"].str.split().str.len()
    shares = examples["label"].value_counts(normalize=True)
    return DataProfile(source, text_column, label_column, len(examples),
                       {str(label): float(share) for label, share in shares.items()}, int(words.median()),
                       int(math.ceil(words.quantile(0.95))))


def is_imbalanced(labels: pd.Series) -> bool:
    """A class has under half its even share of the rows (under 25% of two classes, under 17% of three)."""
    shares = labels.value_counts(normalize=True)
    return bool(shares.min() < 0.5 / len(shares))
