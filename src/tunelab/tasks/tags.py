"""Entity tags without torch: tag schemes (IOB1, IOB2 = BIO, BIOES = IOBES), entities with word and character
spans, raw text split into words, and entity-level metrics computed by `seqeval`.

Entities are read from tags the way conlleval (and seqeval's default mode) reads them: an entity starts at a
B-, an S-, or an I- that does not continue an entity of its type, and ends before the next tag that does not
continue it. Gold data, predictions and the scores therefore agree on what the entities of a tag sequence are,
whichever scheme wrote it.
"""

from __future__ import annotations

import re
import warnings
from typing import Any

from seqeval.metrics import accuracy_score, classification_report
from seqeval.metrics.sequence_labeling import get_entities

PREFIXES = {"IOB1": ("B", "I"), "IOB2": ("B", "I"), "BIOES": ("B", "I", "E", "S")}
OUTSIDE = "O"
TAG = re.compile(r"([BIES])-(\S+)")

# Words as CoNLL corpora cut them (the Penn Treebank's way): abbreviations (U.S.), numbers with separators
# (1,000.5), the clitics 's n't 're 'll 've 'd 'm on their own (Merkel 's, do n't), words with inner hyphens or
# apostrophes (Jean-Luc, O'Neil), and any other character that is not a space on its own (punctuation).
CLITIC = r"(?i:n['’]t|['’](?:s|re|ll|ve|d|m))(?!\w)"
LETTERS = rf"(?:(?!{CLITIC})\w)+"  # a word's letters up to a clitic: 'do' of don't
WORD = re.compile(rf"(?:[^\W\d_]\.){{2,}}|\d+(?:[.,]\d+)+|{CLITIC}|{LETTERS}(?:(?:-|(?!{CLITIC})['’]){LETTERS})*"
                  r"|[^\w\s]")

Entity = tuple[str, int, int]  # (type, first word, one past the last word)


def parse_tag(tag: str) -> tuple[str, str] | None:
    """'B-PER' -> ('B', 'PER'), 'O' -> ('O', ''); None for anything else (the caller says what is wrong)."""
    if tag == OUTSIDE:
        return OUTSIDE, ""
    match = TAG.fullmatch(tag)
    return (match.group(1), match.group(2)) if match else None


def to_entities(tags: list[str]) -> list[Entity]:
    """The entities of one sentence's tags, read leniently (conlleval): [('PER', 0, 2), ...]."""
    return [(kind, first, last + 1) for kind, first, last in get_entities(tags)]


def from_entities(entities: list[Entity], length: int, scheme: str) -> list[str]:
    """The tags that write `entities` in `scheme`. IOB1 uses B- only where an entity directly follows one of its
    own type; IOB2 starts every entity with B-; BIOES also ends them with E- and writes one-word ones as S-."""
    tags = [OUTSIDE] * length
    previous: Entity | None = None
    for kind, first, end in entities:
        tags[first:end] = [f"I-{kind}"] * (end - first)
        follows_own_kind = previous is not None and previous[0] == kind and previous[2] == first
        if scheme != "IOB1" or follows_own_kind:
            tags[first] = f"B-{kind}"
        if scheme == "BIOES":
            tags[end - 1] = f"S-{kind}" if end - first == 1 else f"E-{kind}"
        previous = (kind, first, end)
    return tags


def convert(tags: list[str], scheme: str) -> list[str]:
    """The same entities written in `scheme` (repairs sequences that break it, as conlleval reads them)."""
    return from_entities(to_entities(tags), len(tags), scheme)


def detect_scheme(sentences: list[list[str]]) -> str:
    """BIOES when any tag is E- or S-; else IOB1 when an entity starts with I-; else IOB2."""
    if any(tag[:2] in ("E-", "S-") for tags in sentences for tag in tags):
        return "BIOES"
    if any(tags[first].startswith("I-") for tags in sentences for _, first, _ in to_entities(tags)):
        return "IOB1"
    return "IOB2"


def model_scheme(data_scheme: str) -> str:
    """The scheme a model learns: BIOES data stays BIOES; IOB1 becomes IOB2, so that every entity's first word
    has one tag to learn (B-) instead of two depending on its neighbour."""
    return "BIOES" if data_scheme == "BIOES" else "IOB2"


def scheme_of(tag_list: list[str]) -> str:
    """The scheme a model's tag list (`tag_set`) is written in."""
    return "BIOES" if any(tag.startswith("S-") for tag in tag_list) else "IOB2"


def tag_set(kinds: set[str], scheme: str) -> list[str]:
    """O, then each entity type's tags in prefix order: what a model of these types predicts among."""
    return [OUTSIDE] + [f"{prefix}-{kind}" for kind in sorted(kinds) for prefix in PREFIXES[scheme]]


def split_words(text: str) -> list[tuple[int, int]]:
    """Raw text -> the (start, end) character span of each word."""
    return [match.span() for match in WORD.finditer(text)]


def entity_metrics(gold: list[list[str]], predicted: list[list[str]]) -> dict[str, Any]:
    """Entity-level precision, recall and F1 (micro over entities, as CoNLL reports; also the macro average over
    types), per type, and token accuracy: all computed by seqeval, in its default (conlleval) mode.

    Both sides should be in one scheme (token accuracy compares tags one by one)."""
    with warnings.catch_warnings():  # without any entity, seqeval's averages are the mean of nothing
        warnings.simplefilter("ignore", RuntimeWarning)
        report = classification_report(gold, predicted, output_dict=True, zero_division=0)
    micro, macro = report.pop("micro avg"), report.pop("macro avg")
    del report["weighted avg"]
    return {
        "precision": float(micro["precision"]), "recall": float(micro["recall"]), "f1": float(micro["f1-score"]),
        "macro_f1": float(macro["f1-score"]) if report else 0.0, "accuracy": float(accuracy_score(gold, predicted)),
        "per_type": {kind: {"precision": float(row["precision"]), "recall": float(row["recall"]),
                            "f1": float(row["f1-score"]), "support": int(row["support"])}
                     for kind, row in sorted(report.items())},
        "entities": int(micro["support"]), "predicted_entities": sum(len(to_entities(tags)) for tags in predicted),
        "sentences": len(gold), "words": sum(len(tags) for tags in gold),
    }
