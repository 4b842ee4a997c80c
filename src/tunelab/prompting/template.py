"""The template language of prompt-based classification.

`Review: {text}\\nSentiment: {label}` is literal text with placeholders: `{text}` (or any other data column) is an
input field, `{label}` is the slot the label word fills (the end of the template when absent), `{soft}` is one
trainable token, `{soft:N}` N of them, and `{soft:some words}` trainable tokens initialised from those words'
embeddings. `{{` and `}}` are literal braces.

Whitespace before a field or the label slot belongs to what follows it: byte-level BPE tokenizers fold a
leading space into the next word (" great" is one token, " " + "great" two), so `Review: {text}` tokenises the
text as " <text>" and `Sentiment: {label}` scores the label word "positive" as " positive".
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from tunelab.errors import TunelabError

LABEL = "label"
SOFT = "soft"
PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")


@dataclass(frozen=True)
class Text:
    text: str


@dataclass(frozen=True)
class Field:
    name: str
    lead: str = ""  # the whitespace written before the placeholder


@dataclass(frozen=True)
class LabelSlot:
    lead: str = ""


@dataclass(frozen=True)
class Soft:
    count: int = 1  # used when `init` is None: tokens initialised from random vocabulary embeddings
    init: str | None = None  # words whose token embeddings initialise the soft tokens


Segment = Text | Field | LabelSlot | Soft


def _placeholder(body: str, position: int) -> Segment:
    name, colon, argument = body.partition(":")
    name = name.strip()
    if name == SOFT:
        if not colon:
            return Soft()
        if argument.strip().isdecimal():  # not isdigit: int() refuses superscripts such as '²'
            if int(argument) < 1:
                raise TunelabError(f"template: {{{body}}} asks for no soft tokens; write {{soft:1}} or more")
            return Soft(count=int(argument))
        if not argument.strip():
            raise TunelabError(f"template: {{{body}}} has no words to start from; write {{soft}}, {{soft:3}} or "
                               f"{{soft:some words}}")
        return Soft(init=argument.strip())
    if colon or not name.isidentifier():
        raise TunelabError(f"template: '{{{body}}}' at character {position} is not a placeholder; write {{text}} "
                           f"(or another column), {{label}} or {{soft}}, and {{{{ or }}}} for a literal brace")
    return LabelSlot() if name == LABEL else Field(name)


def _move_whitespace_forward(segments: list[Segment]) -> list[Segment]:
    """Trailing whitespace of a text before a field or the label slot becomes that placeholder's `lead`."""
    moved: list[Segment] = []
    for segment in segments:
        if isinstance(segment, Field | LabelSlot) and moved and isinstance(moved[-1], Text):
            kept = moved[-1].text.rstrip()
            segment = replace(segment, lead=moved[-1].text[len(kept):])
            moved[-1] = Text(kept)
        moved.append(segment)
    return [segment for segment in moved if not (isinstance(segment, Text) and not segment.text)]


@dataclass(frozen=True)
class Template:
    source: str
    segments: tuple[Segment, ...]

    @classmethod
    def parse(cls, source: str) -> Template:
        segments: list[Segment] = []
        literal, end = "", 0
        for match in PLACEHOLDER.finditer(source):
            literal += source[end:match.start()]
            end = match.end()
            token = match.group(0)
            if token in ("{{", "}}"):
                literal += token[0]
                continue
            if match.group(1) is None:
                raise TunelabError(f"template: unbalanced '{token}' at character {match.start()}; write {token * 2} "
                                   f"for a literal brace")
            segments += [Text(literal)] if literal else []
            literal = ""
            segments.append(_placeholder(match.group(1), match.start()))
        literal += source[end:]
        segments += [Text(literal)] if literal else []
        slots = sum(isinstance(segment, LabelSlot) for segment in segments)
        if slots > 1:
            raise TunelabError(f"template '{source}' has {slots} label slots; keep one {{label}}")
        if slots == 0:
            segments.append(LabelSlot())
        template = cls(source, tuple(_move_whitespace_forward(segments)))
        if not template.fields:
            raise TunelabError(f"template '{source}' reads no input: put {{text}} where the text goes")
        return template

    @property
    def fields(self) -> list[str]:
        return list(dict.fromkeys(segment.name for segment in self.segments if isinstance(segment, Field)))

    @property
    def label_slot(self) -> LabelSlot:
        return next(segment for segment in self.segments if isinstance(segment, LabelSlot))

    @property
    def has_soft_tokens(self) -> bool:
        return any(isinstance(segment, Soft) for segment in self.segments)

    def ends_with_label_slot(self) -> bool:
        return isinstance(self.segments[-1], LabelSlot)

    def softened(self) -> Template:
        """The template's words become trainable tokens initialised from them (P-tuning's continuous prompt);
        fields, the label slot and whitespace at the edges of a text stay as they are."""
        segments: list[Segment] = []
        for segment in self.segments:
            if not isinstance(segment, Text) or not segment.text.strip():
                segments.append(segment)
                continue
            core = segment.text.strip()
            start = segment.text.index(core)
            edges = (segment.text[:start], segment.text[start + len(core):])
            segments += [Text(edges[0])] * bool(edges[0]) + [Soft(init=core)] + [Text(edges[1])] * bool(edges[1])
        return replace(self, segments=tuple(segments))
