"""A classification task as a black-box method asks it: each example's prompt as text (the template up to its label
slot; cut into pieces where a softened template has soft tokens) and the label words as the continuations to score,
so that one call scores every label of many examples."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.special import logsumexp, softmax

from tunelab.blackbox.endpoints import Prompt, SoftPrompt
from tunelab.errors import TunelabError
from tunelab.prompting.template import Field, LabelSlot, Soft, Template, Text
from tunelab.prompting.verbalizer import Verbalizer

SCORED_PAIRS = 64  # prompt x label-word pairs per call beyond a search's own (`tunelab serve`'s default --max-inputs)


@dataclass
class Shots:
    """Examples as a method asks them: their prompts, and their labels' indices."""

    prompts: list[Prompt]
    targets: np.ndarray


@dataclass(frozen=True)
class LabelPrompts:
    template: Template
    verbalizer: Verbalizer

    @classmethod
    def build(cls, template: str, verbalizer: dict | None, labels: list[str]) -> LabelPrompts:
        return cls(checked_template(template), Verbalizer.build(verbalizer, labels))

    @property
    def labels(self) -> list[str]:
        return list(self.verbalizer.words)

    @property
    def continuations(self) -> list[str]:
        """Every label word with the whitespace the template puts before the label slot."""
        lead = self.template.label_slot.lead
        return [word if word[:1].isspace() else lead + word for words in self.verbalizer.words.values()
                for word in words]

    @property
    def owners(self) -> np.ndarray:
        """Each continuation's label index."""
        return np.array([index for index, words in enumerate(self.verbalizer.words.values()) for _ in words])

    @property
    def soft_words(self) -> list[str]:
        """The words each block of soft tokens starts from, in order (a softened template's words)."""
        return [segment.init or "" for segment in self.template.segments if isinstance(segment, Soft)]

    def prompts(self, rows: pd.DataFrame) -> list[Prompt]:
        """Each row's text up to the label slot; where the template has soft tokens, the pieces of text around them."""
        texts = []
        for _, row in rows.iterrows():
            pieces, parts = [], []
            for segment in self.template.segments:
                if isinstance(segment, Text):
                    parts.append(segment.text)
                elif isinstance(segment, Field):
                    parts.append(segment.lead + str(row[segment.name]))
                elif isinstance(segment, Soft):
                    pieces.append("".join(parts))
                    parts = []
                elif isinstance(segment, LabelSlot):
                    break
            pieces.append("".join(parts))
            texts.append(tuple(pieces) if len(pieces) > 1 else pieces[0])
        return texts

    def targets(self, rows: pd.DataFrame) -> np.ndarray:
        """Each row's label as its index among the labels."""
        index = {label: position for position, label in enumerate(self.labels)}
        return rows["label"].map(index).to_numpy()

    def shots(self, rows: pd.DataFrame) -> Shots:
        return Shots(self.prompts(rows), self.targets(rows))

    def measure(self, endpoint, shots: Shots, soft_prompt: SoftPrompt | None = None) -> tuple[float, float]:
        """(loss, accuracy) of asking `shots` through `endpoint` (with `soft_prompt`): one call."""
        scores = endpoint.score(shots.prompts, self.continuations, soft_prompt)
        return loss_and_accuracy(self.label_logprobs(scores), shots.targets)

    def ask(self, endpoint, asked: list[Prompt], soft_prompt: SoftPrompt | None = None) -> np.ndarray:
        """(prompts, labels) log-probabilities of any number of prompts, in calls of at most SCORED_PAIRS pairs."""
        step = max(1, SCORED_PAIRS // len(self.continuations))
        return self.label_logprobs(np.concatenate([endpoint.score(asked[start:start + step], self.continuations,
                                                                  soft_prompt)
                                                   for start in range(0, len(asked), step)]))

    def label_logprobs(self, scores: np.ndarray) -> np.ndarray:
        """(examples, words) log-probabilities -> (examples, labels) log-probabilities normalised over the labels;
        a label of several words scores the probability of any of them."""
        owners = self.owners
        per_label = np.stack([logsumexp(scores[:, owners == label], axis=1) for label in range(len(self.labels))],
                             axis=1)
        return np.log(softmax(per_label, axis=1))


def checked_template(template: str) -> Template:
    """The template, if a black-box method can ask it: the label slot last (the words to score come next) and no
    {soft} tokens (an endpoint reads text)."""
    parsed = Template.parse(template)
    if not parsed.ends_with_label_slot() or parsed.has_soft_tokens:
        raise TunelabError(f"template '{template}': a black-box method asks for the next words, so the label slot "
                           f"must end the template and it cannot hold {{soft}} tokens")
    return parsed


def loss_and_accuracy(label_logprobs: np.ndarray, targets: np.ndarray) -> tuple[float, float]:
    """Mean cross-entropy of the true labels, and accuracy."""
    loss = -float(label_logprobs[np.arange(len(targets)), targets].mean())
    return loss, float((label_logprobs.argmax(axis=1) == targets).mean())
