"""Generation for the OpenAI-compatible endpoints: the same `generate` call that `tunelab generate` and `chat` make
(so a seeded answer is the same in-process and over HTTP), with each token's log-probability, stop strings, and
the text handed out piece by piece as it is generated.

The log-probabilities are those of the model's distribution at each step before temperature and top-p reshape it
(OpenAI's convention), read by a logits processor that transformers runs before its sampling warpers. Sampling
draws from torch's global generator, seeded per request as `complete` does, so generations take turns
(`GENERATION_LOCK`); batched predictions run beside them.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from tunelab.tasks.generation import CausalLM, pad_id

GENERATION_LOCK = threading.Lock()
REPLACEMENT = "\ufffd"  # what a token that ends inside a multi-byte character decodes to


@dataclass(frozen=True)
class Sampling:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    stop: tuple[str, ...] = ()
    top_logprobs: int = 0  # alternatives reported per token


@dataclass
class Piece:
    """Text that follows the last piece, with the tokens that made it and their log-probabilities."""

    text: str
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    top: list[list[tuple[int, float]]] = field(default_factory=list)


@dataclass
class Finished:
    reason: str  # "stop" (end of sequence or a stop string) or "length"
    completion_tokens: int


class _Tap(BaseStreamer):
    """One generated sequence: each step's distribution (read by `Reader`), the token chosen from it (received as
    a streamer), and a flag that ends generation (checked by `Halt`)."""

    def __init__(self, top: int, cancelled: threading.Event):
        self.top, self.steps, self.cancelled = top, queue.Queue(), cancelled
        self.prompt_seen, self.pending = False, None

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # a streamer is handed the prompt first
            self.prompt_seen = True
            return
        token = int(value.flatten()[0])
        logprobs = self.pending
        best = logprobs.topk(self.top) if self.top else None
        top = list(zip(best.indices.tolist(), best.values.tolist(), strict=True)) if best is not None else []
        self.steps.put((token, float(logprobs[token]), top))

    def end(self) -> None:
        self.steps.put(None)


class _Reader(LogitsProcessor):
    def __init__(self, tap: _Tap):
        self.tap = tap

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        self.tap.pending = torch.log_softmax(scores[0].float(), dim=-1)
        return scores


class _Halt(StoppingCriteria):
    def __init__(self, tap: _Tap):
        self.tap = tap

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self.tap.cancelled.is_set(), dtype=torch.bool,
                          device=input_ids.device)


def stream(model: CausalLM, tokenizer, ids: list[int], sampling: Sampling,
           cancelled: threading.Event | None = None) -> Iterator[Piece | Finished]:
    """Generate after `ids`, yielding pieces of text as they are decided and a `Finished` last. Setting
    `cancelled` (a client that went away, a timeout) or closing the iterator stops the generation at its next
    token."""
    tap = _Tap(sampling.top_logprobs, cancelled or threading.Event())
    pad = pad_id(tokenizer)
    device = next(model.parameters()).device
    options = {"do_sample": True, "temperature": sampling.temperature} if sampling.temperature > 0 else \
        {"do_sample": False}
    if sampling.temperature > 0 and sampling.top_p < 1.0:
        options["top_p"] = sampling.top_p
    failure: list[BaseException] = []

    def generate() -> None:
        try:
            with GENERATION_LOCK, torch.no_grad():
                model.eval()
                torch.manual_seed(sampling.seed)
                model.backbone.generate(input_ids=torch.tensor([ids], device=device),
                                        attention_mask=torch.ones(1, len(ids), dtype=torch.long, device=device),
                                        max_new_tokens=sampling.max_tokens, pad_token_id=pad, streamer=tap,
                                        logits_processor=LogitsProcessorList([_Reader(tap)]),
                                        stopping_criteria=StoppingCriteriaList([_Halt(tap)]), **options)
        except BaseException as error:  # handed to the reader, which raises it in the request's context
            failure.append(error)
            tap.end()

    threading.Thread(target=generate, daemon=True).start()
    try:
        yield from _pieces(tap, tokenizer, sampling, _end_ids(model, tokenizer))
        if failure:
            raise failure[0]
    finally:
        tap.cancelled.set()  # the thread ends at its next token, or at its first once another generation is done


def _end_ids(model: CausalLM, tokenizer) -> set[int]:
    """The tokens that end a generation: the tokenizer's end of sequence and the model's generation config's (an
    instruction-tuned model may end its turn with another)."""
    configured = model.backbone.generation_config.eos_token_id
    ends = set(configured if isinstance(configured, list) else [configured])
    return {token for token in ends | {tokenizer.eos_token_id} if token is not None}


def _pieces(tap: _Tap, tokenizer, sampling: Sampling, ends: set[int]) -> Iterator[Piece | Finished]:
    """Decode the growing sequence and hand out what is settled: text that cannot still become a stop string or
    the start of a multi-byte character. A stop string ends the text before it."""
    tokens: list[int] = []
    sent = 0  # characters handed out
    held = Piece("")
    hold = max((len(stop) for stop in sampling.stop), default=1) - 1
    while (step := tap.steps.get()) is not None:
        token, logprob, top = step
        text = tokenizer.decode(tokens + [token], skip_special_tokens=True)
        tokens.append(token)
        held.tokens.append(token)
        held.logprobs.append(logprob)
        held.top.append(top)
        cut = min((index for index in (text.find(stop, max(sent - hold, 0)) for stop in sampling.stop)
                   if index >= 0), default=None)
        if cut is not None:
            tap.cancelled.set()
            yield Piece(text[sent:cut], held.tokens, held.logprobs, held.top)
            _drain(tap)
            yield Finished("stop", len(tokens))
            return
        if token in ends:
            break
        settled = len(text) - hold if not text.endswith(REPLACEMENT) else text.rfind(REPLACEMENT)
        if settled > sent:
            yield Piece(text[sent:settled], held.tokens, held.logprobs, held.top)
            sent, held = settled, Piece("")
    text = tokenizer.decode(tokens, skip_special_tokens=True)
    if text[sent:] or held.tokens:
        yield Piece(text[sent:], held.tokens, held.logprobs, held.top)
    yield Finished("stop" if tokens and tokens[-1] in ends else "length", len(tokens))


def _drain(tap: _Tap) -> None:
    while tap.steps.get() is not None:
        pass


def collect(pieces: Iterator[Piece | Finished]) -> tuple[Piece, Finished]:
    """The whole generation as one piece, and how it finished."""
    whole = Piece("")
    for piece in pieces:
        if isinstance(piece, Finished):
            return whole, piece
        whole.text += piece.text
        whole.tokens += piece.tokens
        whole.logprobs += piece.logprobs
        whole.top += piece.top
    raise RuntimeError("generation ended without finishing")
