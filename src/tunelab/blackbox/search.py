"""Discrete prompt search: a better prompt made of text alone, so it works through any endpoint that scores label
words, OpenAI-compatible servers included. A candidate is an instruction, the template, and in-context
demonstrations (training shots written through the template with their label word), in order. Each round edits
the best prompt so far in `candidates` ways (GrIPS' phrase edits of the instruction and the template's words:
delete, swap, add; and the demonstrations: add, drop, replace, reorder), scores each on the training shots that are
not among its demonstrations (one call each), and keeps the round's best if it also scores better on the
validation shots (one more call). With `proposals`, each round also asks the endpoint to write instructions
(APE, Zhou et al. 2023: a few training pairs shown, "The instruction was to"; one generation call) and tries each
proposal as the best prompt's instruction. The search stops when the budget has no room for a round, or after
`patience` rounds without a better validation accuracy; its state is saved after every round, so a killed search
resumes.
"""

from __future__ import annotations

import pickle
import random
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import pandas as pd

from tunelab.blackbox.endpoints import Endpoint
from tunelab.blackbox.loop import resume, search_rounds
from tunelab.blackbox.prompts import LabelPrompts, Shots, checked_template
from tunelab.prompting.template import Field, Text
from tunelab.runs import write_bytes_atomic, write_text_atomic

PROMPT_FILE = "prompt.txt"


@dataclass(frozen=True)
class SearchSettings:
    demonstrations: int = 4  # in-context examples at most
    candidates: int = 8  # edits tried per round
    patience: int = 10  # rounds without a better validation accuracy before stopping; 0: never
    seed: int = 42
    proposals: int = 0  # instructions the endpoint writes per round (one generation call); 0: edits only

    @property
    def calls_per_round(self) -> int:
        """The candidates' training calls, the proposals' and their generation call, one validation call."""
        return self.candidates + (self.proposals + 1 if self.proposals else 0) + 1


@dataclass(frozen=True)
class Candidate:
    instruction: str
    template: str
    demonstrations: tuple[int, ...]  # training shots, in the order they are written


@dataclass
class SearchState:
    best: Candidate
    best_validation: float = -1.0
    best_train: tuple[float, float] = (-1.0, 0.0)  # (accuracy, -loss) on the training shots
    generation: int = 0  # rounds done
    stale: int = 0
    curve: list[dict] = field(default_factory=list)
    rng: random.Random = field(default_factory=random.Random)


PROPOSAL_SHOTS, PROPOSAL_TOKENS, PROPOSAL_TEMPERATURE = 5, 32, 0.9
INDUCTION = ("I gave a friend an instruction and some inputs. The friend read the instruction and wrote an output "
             "for every one of the inputs. Here are the input-output pairs:\n\n{pairs}\n\nThe instruction was to")


def instructions(labels: list[str]) -> list[str]:
    """Phrases the search may add to the instruction: task-agnostic, naming the labels."""
    names = ", ".join(labels)
    return [f"Classify the text as one of: {names}.", f"Answer with one word: {names}.",
            "Read the text carefully.", "Choose the label that fits best.", f"The possible answers are {names}."]


class PromptSearch:
    name = "search"

    def __init__(self, endpoint: Endpoint, prompts: LabelPrompts, settings: SearchSettings):
        self.endpoint, self.prompts, self.settings = endpoint, prompts, settings
        self.phrases = instructions(prompts.labels)
        self.train = pd.DataFrame()  # the training shots, the demonstrations' source: set by `search`

    # --- prompts ------------------------------------------------------------------------------------------------

    def asked(self, state: SearchState | None, rows: pd.DataFrame) -> tuple[list[str], None]:
        """Each row's prompt under the found candidate (None: the template alone)."""
        candidate = state.best if state is not None else Candidate("", self.prompts.template.source, ())
        return self.render(candidate, rows), None

    def render(self, candidate: Candidate, rows: pd.DataFrame) -> list[str]:
        prompts = LabelPrompts(checked_template(candidate.template), self.prompts.verbalizer)
        words = {label: words[0] for label, words in self.prompts.verbalizer.words.items()}
        lead = prompts.template.label_slot.lead
        shown = self.train.iloc[list(candidate.demonstrations)]
        demonstrations = "".join(f"{text}{word if word[:1].isspace() else lead + word}\n\n" for text, word in zip(
            prompts.prompts(shown), [words[label] for label in shown["label"]], strict=True))
        head = f"{candidate.instruction}\n\n" if candidate.instruction else ""
        return [head + demonstrations + text for text in prompts.prompts(rows)]

    def measure(self, candidate: Candidate, rows: pd.DataFrame) -> tuple[float, float]:
        """(accuracy, -loss) of a candidate on `rows`: one call."""
        loss, accuracy = self.prompts.measure(self.endpoint, Shots(self.render(candidate, rows),
                                                                   self.prompts.targets(rows)))
        return accuracy, -loss

    def on_training(self, candidate: Candidate) -> tuple[float, float]:
        """Measured on the training shots a candidate does not show as demonstrations."""
        return self.measure(candidate, self.train.drop(index=list(candidate.demonstrations)))

    # --- edits --------------------------------------------------------------------------------------------------

    def edit(self, candidate: Candidate, rng: random.Random) -> Candidate:
        edits = [self._instruction, self._template_words, self._demonstrations]
        for _ in range(10):  # an edit that changes nothing (nothing to delete, say) is drawn again
            edited = rng.choice(edits)(candidate, rng)
            if edited != candidate:
                return edited
        return candidate

    def _instruction(self, candidate: Candidate, rng: random.Random) -> Candidate:
        phrases = [phrase for phrase in candidate.instruction.split("\n") if phrase]
        operation = rng.choice(["add", "delete", "swap"] if len(phrases) > 1 else ["add", "delete"])
        if operation == "add":
            phrases.insert(rng.randint(0, len(phrases)), rng.choice(self.phrases))
        elif operation == "delete" and phrases:
            phrases.pop(rng.randrange(len(phrases)))
        elif operation == "swap":
            first, second = rng.sample(range(len(phrases)), 2)
            phrases[first], phrases[second] = phrases[second], phrases[first]
        return replace(candidate, instruction="\n".join(phrases))

    def _template_words(self, candidate: Candidate, rng: random.Random) -> Candidate:
        """Delete or swap words in the template's own text, never its placeholders."""
        template = checked_template(candidate.template)
        texts = [index for index, segment in enumerate(template.segments) if isinstance(segment, Text)]
        if not texts:
            return candidate
        segments = list(template.segments)
        chosen = rng.choice(texts)
        words = segments[chosen].text.split(" ")
        if len(words) > 1 and rng.random() < 0.5:
            first, second = rng.sample(range(len(words)), 2)
            words[first], words[second] = words[second], words[first]
        elif len(words) > 1:
            words.pop(rng.randrange(len(words)))
        segments[chosen] = Text(" ".join(words))
        return replace(candidate, template=_source(segments))

    def _demonstrations(self, candidate: Candidate, rng: random.Random) -> Candidate:
        shown = list(candidate.demonstrations)
        unused = [index for index in range(len(self.train)) if index not in shown]
        moves = [move for move, possible in (("add", len(shown) < self.settings.demonstrations and unused),
                                             ("drop", shown), ("replace", shown and unused),
                                             ("reorder", len(shown) > 1)) if possible]
        if not moves:
            return candidate
        move = rng.choice(moves)
        if move == "add":
            shown.insert(rng.randint(0, len(shown)), rng.choice(unused))
        elif move == "drop":
            shown.pop(rng.randrange(len(shown)))
        elif move == "replace":
            shown[rng.randrange(len(shown))] = rng.choice(unused)
        else:
            rng.shuffle(shown)
        return replace(candidate, demonstrations=tuple(shown))

    # --- the search ---------------------------------------------------------------------------------------------

    def search(self, train_rows: pd.DataFrame, validation_rows: pd.DataFrame, checkpoint: Path,
               on_generation=lambda state: None) -> SearchState:
        self.train = train_rows.reset_index(drop=True)
        state = resume(checkpoint)
        if state is None:
            start = Candidate("", self.prompts.template.source, ())
            state = SearchState(start, rng=random.Random(self.settings.seed))
            state.best_train = self.on_training(start)
            state.best_validation = self.measure(start, validation_rows)[0]
            write_bytes_atomic(checkpoint, pickle.dumps(state))
        return search_rounds(self.endpoint, state, self.settings.calls_per_round, self.settings.patience,
                             lambda: self.round(state, validation_rows), checkpoint, on_generation)

    def proposed(self, best: Candidate, rng: random.Random) -> set[Candidate]:
        """The best prompt with each instruction the endpoint proposes from a few training pairs (one call)."""
        if not self.settings.proposals:
            return set()
        shown = self.train.sample(min(PROPOSAL_SHOTS, len(self.train)), random_state=rng.randrange(2**31))
        words = {label: words[0].strip() for label, words in self.prompts.verbalizer.words.items()}
        pairs = "\n\n".join(f"Input: {text}\nOutput: {words[label]}"
                             for text, label in zip(self.prompts.prompts(shown), shown["label"], strict=True))
        texts = self.endpoint.generate(INDUCTION.format(pairs=pairs), self.settings.proposals, PROPOSAL_TOKENS,
                                       PROPOSAL_TEMPERATURE, rng.randrange(2**31))
        return {replace(best, instruction=instruction) for instruction in map(as_instruction, texts) if instruction}

    def round(self, state: SearchState, validation_rows: pd.DataFrame) -> None:
        tried = {self.edit(state.best, state.rng) for _ in range(self.settings.candidates)}
        tried |= self.proposed(state.best, state.rng)
        measured = sorted(((self.on_training(candidate), candidate) for candidate in tried),
                          key=lambda pair: pair[0], reverse=True)
        (train, best), state.generation = measured[0], state.generation + 1
        validation = self.measure(best, validation_rows)[0] if train >= state.best_train else -1.0
        if validation > state.best_validation or (validation == state.best_validation and train > state.best_train):
            state.best, state.best_validation, state.best_train, state.stale = best, validation, train, 0
        else:
            state.stale += 1
        state.curve.append({"generation": state.generation, "calls": self.endpoint.usage.calls,
                            "train_accuracy": state.best_train[0], "validation_accuracy": state.best_validation})

    def save(self, state: SearchState, folder: Path) -> dict:
        """The found prompt, written out with {text} where each input goes; what blackbox.yaml records of it."""
        example = pd.DataFrame({name: ["{" + name + "}"] for name in checked_template(state.best.template).fields})
        write_text_atomic(folder / PROMPT_FILE, self.render(state.best, example)[0])
        return {"prompt": PROMPT_FILE, "instruction": state.best.instruction, "template": state.best.template,
                "demonstrations": [self.train.iloc[index].to_dict() for index in state.best.demonstrations],
                "search": asdict(self.settings)}


def as_instruction(proposal: str) -> str:
    """A proposal's first line as an instruction: "classify the review" -> "Classify the review."."""
    line = proposal.strip().split("\n")[0].strip()
    if not line:
        return ""
    return line[0].upper() + line[1:] + ("" if line.endswith((".", "!", "?")) else ".")


def _source(segments: list) -> str:
    """Template segments back into a template's source (braces in text doubled)."""
    parts = []
    for segment in segments:
        if isinstance(segment, Text):
            parts.append(segment.text.replace("{", "{{").replace("}", "}}"))
        elif isinstance(segment, Field):
            parts.append(f"{segment.lead}{{{segment.name}}}")
        else:
            parts.append(f"{segment.lead}{{label}}")
    return "".join(parts)
