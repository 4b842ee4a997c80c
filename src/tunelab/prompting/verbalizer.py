"""Label words: which words stand for which label, and their token ids.

A label may have several words; the model scores each word and a label's score is the log of its words' summed
probabilities (the label is said if any of its words is). A word of several tokens is scored by the sum of its
tokens' log-probabilities (its probability as a continuation), or by their mean (`word_score: mean`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from tunelab.errors import TunelabError


def _word_list(label: str, words: Sequence[str] | str) -> tuple[str, ...]:
    """' great, good' -> (' great', ' good'): a leading space is part of the word; trailing ones are not."""
    items = words.split(",") if isinstance(words, str) else list(words)
    cleaned = tuple(str(word).rstrip() for word in items)
    if not cleaned or any(not word.strip() for word in cleaned):
        raise TunelabError(f"verbalizer: label '{label}' has an empty label word; give words like "
                           f"{label}=\" good, great\"")
    return cleaned


@dataclass(frozen=True)
class Verbalizer:
    words: dict[str, tuple[str, ...]]  # in the label map's order

    @classmethod
    def build(cls, given: Mapping[str, Sequence[str] | str] | None, labels: Sequence[str]) -> Verbalizer:
        """The configured words for exactly the data's labels; each label's own name when none are given."""
        if given is None:
            return cls({label: (label,) for label in labels})
        unknown = [label for label in given if label not in labels]
        if unknown:
            raise TunelabError(f"verbalizer names label '{unknown[0]}', which the data does not have; its labels "
                               f"are {', '.join(labels)}")
        missing = [label for label in labels if label not in given]
        if missing:
            raise TunelabError(f"verbalizer has no words for label '{missing[0]}'; add --verbalizer "
                               f"'{missing[0]}=word, word'")
        return cls({label: _word_list(label, given[label]) for label in labels})

    def token_ids(self, tokenizer: PreTrainedTokenizerBase, lead: str) -> tuple[list[list[int]], list[int]]:
        """Every word's token ids and its label's index. `lead` is the whitespace the template puts before the
        label slot; a word that does not start with whitespace is scored with it in front."""
        ids, owners = [], []
        for index, (label, words) in enumerate(self.words.items()):
            for word in words:
                text = word if word[:1].isspace() else lead + word
                tokens = tokenizer(text, add_special_tokens=False)["input_ids"]
                if not tokens:
                    raise TunelabError(f"label word {word!r} of '{label}' tokenises to nothing; choose another word")
                ids.append(tokens)
                owners.append(index)
        return ids, owners
