"""The language-model endpoints: OpenAI's `/v1/completions` and `/v1/chat/completions` (streamed or whole, with
log-probabilities, echo, stop strings, seeds), tunelab's `/v1/score`, the log-probabilities of given continuations
after given prompts, optionally with soft-prompt embeddings before them or between their pieces, and
`/v1/token_embeddings`, the input embeddings a soft prompt starts from."""

from __future__ import annotations

import asyncio
import json
import secrets
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import torch
from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import iterate_in_threadpool

from tunelab.errors import TunelabError
from tunelab.serve.decoding import Finished, Piece, Sampling, collect, stream
from tunelab.serve.models import LanguageModel, Served
from tunelab.serve.schemas import (
    ChatCompletion,
    ChatRequest,
    Completion,
    CompletionRequest,
    ScoreRequest,
    ScoreResponse,
    TokenEmbeddings,
    TokenEmbeddingsRequest,
)
from tunelab.serve.server import ERRORS, Caller, Server, error, served_for, server_of
from tunelab.tasks.conversation import context_ids
from tunelab.tasks.generation import pad_id
from tunelab.tasks.likelihood import score_continuations, score_texts
from tunelab.tasks.likelihood import token_embeddings as embeddings_of

router = APIRouter()
COMPLETION_MAX_TOKENS = 16  # OpenAI's default for /v1/completions
STREAMED = {200: {"content": {"application/json": {}, "text/event-stream": {}},
                  "description": "the whole answer, or with `stream` a server-sent event per piece"}}


def language_model(served: Served) -> LanguageModel:
    if not isinstance(served.engine, LanguageModel):
        raise error(400, f"'{served.name}' is a {served.task} model: ask it through /v1/predict")
    return served.engine


def token_text(tokenizer: Any, token: int) -> str:
    return tokenizer.decode([token])


def sampling(server: Server, body: Any, max_tokens: int, top: int) -> Sampling:
    if max_tokens > server.limits.max_tokens:
        raise error(422, f"max_tokens {max_tokens} is over this server's limit of {server.limits.max_tokens}")
    stops = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
    if any(not stop for stop in stops) or len(stops) > 4:
        raise error(422, "stop takes up to 4 non-empty strings")
    seed = body.seed if body.seed is not None else secrets.randbelow(2**32)
    return Sampling(max_tokens, body.temperature, body.top_p, seed, stops, top)


async def generated(server: Server, model: LanguageModel, ids: list[int], settings: Sampling) -> tuple[Piece,
                                                                                                        Finished]:
    """The whole generation, within the request timeout (a generation that overruns it is stopped)."""
    cancelled = threading.Event()
    try:
        return await asyncio.wait_for(asyncio.to_thread(collect, stream(model.model, model.tokenizer, ids, settings,
                                                                        cancelled)), server.limits.timeout_s)
    except asyncio.TimeoutError:
        cancelled.set()
        raise error(504, f"no answer within {server.limits.timeout_s:g} s") from None


def events(chunks: Iterator[dict[str, Any]], cancelled: threading.Event) -> StreamingResponse:
    """Server-sent events, one per chunk, then [DONE]; a client that goes away stops the generation."""

    async def lines() -> AsyncIterator[str]:
        try:
            async for chunk in iterate_in_threadpool(chunks):
                yield f"data: {json.dumps(chunk)}\n\n"
            yield "data: [DONE]\n\n"
        finally:
            cancelled.set()

    return StreamingResponse(lines(), media_type="text/event-stream")


# --- completions ------------------------------------------------------------------------------------------------

def completion_logprobs(tokenizer: Any, piece: Piece, start: int, prompt: str | None = None) -> dict[str, Any]:
    """OpenAI's completion logprobs of one piece: its tokens, their log-probabilities, the top alternatives, and
    where each token starts in the answer's text (`start`: where the piece starts). An echoed `prompt` takes its
    offsets from the tokenizer's own offset mapping, and its first token has no log-probability."""
    if prompt is not None:
        mapping = tokenizer(prompt, add_special_tokens=False, return_offsets_mapping=True).get("offset_mapping")
        offsets = [begin for begin, _ in mapping] if mapping else _decoded_offsets(tokenizer, piece.tokens, 0)
    else:
        offsets = _decoded_offsets(tokenizer, piece.tokens, start)
    chosen: list[float | None] = list(piece.logprobs)
    tops: list[dict[str, float] | None] = [{token_text(tokenizer, other): value for other, value in top}
                                           for top in piece.top]
    if prompt is not None and chosen:
        chosen[0], tops[0] = None, None
    return {"tokens": [token_text(tokenizer, token) for token in piece.tokens], "token_logprobs": chosen,
            "top_logprobs": tops, "text_offset": offsets}


def _decoded_offsets(tokenizer: Any, tokens: list[int], start: int) -> list[int]:
    """Where each token starts: the length of the text the tokens before it decode to."""
    return [start + len(tokenizer.decode(tokens[:index], skip_special_tokens=True)) for index in range(len(tokens))]


def _joined(first: dict[str, list], second: dict[str, list]) -> dict[str, list]:
    return {key: first[key] + second[key] for key in first}


def echoed(model: LanguageModel, ids: list[int], top: int) -> Piece:
    """The prompt's own tokens with their log-probabilities (the first has none: nothing comes before it)."""
    if len(ids) < 2:
        return Piece("", ids, [0.0] * len(ids), [[] for _ in ids])
    scored = score_continuations(model.model, [(ids[:1], ids[1:])], top=top, pad_id=pad_id(model.tokenizer))[0]
    return Piece("", ids, [0.0, *scored.logprobs], [[], *scored.top])


def prompt_ids(model: LanguageModel, prompt: str) -> list[int]:
    """A completion prompt as `tunelab generate --continuation` reads it: plain text, no special tokens."""
    ids = model.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    if not ids:
        raise error(422, "the prompt has no tokens")
    return ids


@router.post("/v1/completions", response_model=Completion, responses={**ERRORS, **STREAMED},
             summary="OpenAI completions: continue plain text")
async def completions(body: CompletionRequest, request: Request, key: Caller) -> Any:
    server = server_of(request)
    model = language_model(served_for(request, key, body.model))
    prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
    server.check_texts(prompts, "prompt")
    top = body.logprobs or 0
    settings = sampling(server, body, body.max_tokens or COMPLETION_MAX_TOKENS, top)
    contexts = [prompt_ids(model, prompt) for prompt in prompts]
    header = {"id": f"cmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": body.model}
    if body.stream:
        cancelled = threading.Event()
        return events(_completion_chunks(model, prompts, contexts, settings, body, header, cancelled), cancelled)
    choices, used = [], 0
    for index, (prompt, ids) in enumerate(zip(prompts, contexts, strict=True)):
        piece, finished = await generated(server, model, ids, settings)
        used += finished.completion_tokens
        logprobs = None
        if body.logprobs is not None:
            logprobs = completion_logprobs(model.tokenizer, piece, len(prompt) if body.echo else 0)
            if body.echo:
                echo = await asyncio.to_thread(echoed, model, ids, top)
                logprobs = _joined(completion_logprobs(model.tokenizer, echo, 0, prompt), logprobs)
        choices.append({"index": index, "text": (prompt if body.echo else "") + piece.text, "logprobs": logprobs,
                        "finish_reason": finished.reason})
    prompt_tokens = sum(map(len, contexts))
    return {**header, "object": "text_completion", "choices": choices,
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": used, "total_tokens": prompt_tokens + used}}


def _completion_chunks(model: LanguageModel, prompts: list[str], contexts: list[list[int]], settings: Sampling,
                       body: CompletionRequest, header: dict[str, Any],
                       cancelled: threading.Event) -> Iterator[dict[str, Any]]:
    def chunk(index: int, text: str, logprobs: dict | None, reason: str | None) -> dict[str, Any]:
        return {**header, "object": "text_completion",
                "choices": [{"index": index, "text": text, "logprobs": logprobs, "finish_reason": reason}]}

    for index, (prompt, ids) in enumerate(zip(prompts, contexts, strict=True)):
        offset = 0
        if body.echo:
            logprobs = completion_logprobs(model.tokenizer, echoed(model, ids, settings.top_logprobs), 0, prompt) \
                if body.logprobs is not None else None
            offset = len(prompt)
            yield chunk(index, prompt, logprobs, None)
        for piece in stream(model.model, model.tokenizer, ids, settings, cancelled):
            if isinstance(piece, Finished):
                yield chunk(index, "", None, piece.reason)
                break
            logprobs = completion_logprobs(model.tokenizer, piece, offset) if body.logprobs is not None else None
            offset += len(piece.text)
            yield chunk(index, piece.text, logprobs, None)


# --- chat ---------------------------------------------------------------------------------------------------------

def chat_logprobs(tokenizer: Any, piece: Piece) -> dict[str, Any]:
    def entry(token: int, logprob: float) -> dict[str, Any]:
        text = token_text(tokenizer, token)
        return {"token": text, "logprob": logprob, "bytes": list(text.encode())}

    return {"content": [{**entry(token, logprob), "top_logprobs": [entry(other, value) for other, value in top]}
                        for token, logprob, top in zip(piece.tokens, piece.logprobs, piece.top, strict=True)]}


@router.post("/v1/chat/completions", response_model=ChatCompletion, responses={**ERRORS, **STREAMED},
             summary="OpenAI chat completions: the next turn of a conversation, through the model's chat template")
async def chat_completions(body: ChatRequest, request: Request, key: Caller) -> Any:
    server = server_of(request)
    model = language_model(served_for(request, key, body.model))
    messages = [message.model_dump() for message in body.messages]
    server.check_texts([message["content"] for message in messages], "messages")
    top = (body.top_logprobs or 0) if body.logprobs else 0
    settings = sampling(server, body, body.max_completion_tokens or body.max_tokens or model.max_tokens, top)
    try:
        ids = context_ids(model.tokenizer, messages, "messages")
    except TunelabError as refused:
        raise error(422, str(refused)) from None
    header = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": body.model}
    if body.stream:
        cancelled = threading.Event()
        return events(_chat_chunks(model, ids, settings, body.logprobs, header, cancelled), cancelled)
    piece, finished = await generated(server, model, ids, settings)
    return {**header, "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": piece.text},
                         "logprobs": chat_logprobs(model.tokenizer, piece) if body.logprobs else None,
                         "finish_reason": finished.reason}],
            "usage": {"prompt_tokens": len(ids), "completion_tokens": finished.completion_tokens,
                      "total_tokens": len(ids) + finished.completion_tokens}}


def _chat_chunks(model: LanguageModel, ids: list[int], settings: Sampling, logprobs: bool, header: dict[str, Any],
                 cancelled: threading.Event) -> Iterator[dict[str, Any]]:
    def chunk(delta: dict[str, str], piece: Piece | None, reason: str | None) -> dict[str, Any]:
        return {**header, "object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": delta, "finish_reason": reason,
                             "logprobs": chat_logprobs(model.tokenizer, piece) if logprobs and piece else None}]}

    yield chunk({"role": "assistant", "content": ""}, None, None)
    for piece in stream(model.model, model.tokenizer, ids, settings, cancelled):
        if isinstance(piece, Finished):
            yield chunk({}, None, piece.reason)
            return
        yield chunk({"content": piece.text}, piece, None)


# --- score --------------------------------------------------------------------------------------------------------

@router.post("/v1/score", response_model=ScoreResponse, responses=ERRORS,
             summary="Log-probabilities of given continuations after given prompts (label words, black-box tuning)")
async def score(body: ScoreRequest, request: Request, key: Caller) -> Any:
    server = server_of(request)
    model = language_model(served_for(request, key, body.model))
    prompts = [body.prompts] if isinstance(body.prompts, str) else body.prompts
    pieced = _checked_pieces(prompts, body.soft_lengths)
    server.check_texts(["".join(prompt) for prompt in pieced] if body.soft_lengths else prompts, "prompts")
    server.check_texts(body.continuations, "continuations")
    if len(prompts) * len(body.continuations) > server.limits.max_inputs:
        raise error(422, f"{len(prompts)} prompts x {len(body.continuations)} continuations in one request; at "
                         f"most {server.limits.max_inputs} pairs")
    soft = _soft_prompt(body.soft_prompt, model)
    if soft is None and not all(prompts):
        raise error(422, "a prompt is empty and there is no soft prompt: nothing to predict the first continuation "
                         "token from")
    scoring = asyncio.to_thread(score_texts, model.model, model.tokenizer, pieced, body.continuations, soft,
                                body.top_logprobs, None if body.soft_lengths is None else tuple(body.soft_lengths))
    try:
        rows = await asyncio.wait_for(scoring, server.limits.timeout_s)
    except asyncio.TimeoutError:
        raise error(504, f"no answer within {server.limits.timeout_s:g} s") from None
    except TunelabError as refused:  # a text with no tokens, soft_lengths that miss the soft prompt's rows
        raise error(422, str(refused)) from None
    used = sum(scored.read for row in rows for scored in row)
    return {"object": "score", "model": body.model,
            "data": [[_scored(model.tokenizer, text, scored) for text, scored in zip(body.continuations, row,
                                                                                     strict=True)] for row in rows],
            "usage": {"prompt_tokens": used, "completion_tokens": 0, "total_tokens": used}}


def _checked_pieces(prompts: list[str] | list[list[str]],
                    lengths: list[int] | None) -> list[str] | list[tuple[str, ...]]:
    """The prompts as `score_texts` takes them: texts, or with soft-prompt blocks, pieces one more than the blocks."""
    if lengths is None:
        if not all(isinstance(prompt, str) for prompt in prompts):
            raise error(422, "a prompt given in pieces needs soft_lengths: the soft-prompt blocks between them")
        return prompts
    if any(length < 1 for length in lengths):
        raise error(422, "soft_lengths: every block holds at least one row")
    if any(isinstance(prompt, str) or len(prompt) != len(lengths) + 1 for prompt in prompts):
        raise error(422, f"with {len(lengths)} soft-prompt blocks, every prompt is a list of {len(lengths) + 1} "
                         f"pieces of text")
    return [tuple(prompt) for prompt in prompts]


def _soft_prompt(rows: list[list[float]] | None, model: LanguageModel) -> torch.Tensor | None:
    if rows is None:
        return None
    width = model.hidden_size
    if not rows or any(len(row) != width for row in rows):
        raise error(422, f"soft_prompt must be rows of {width} numbers (the model's hidden size), one per virtual "
                         f"token")
    soft = torch.tensor(rows, dtype=torch.float32)
    if not torch.isfinite(soft).all():
        raise error(422, "soft_prompt holds a number that is not finite")
    return soft


@router.post("/v1/token_embeddings", response_model=TokenEmbeddings, responses=ERRORS,
             summary="The input embeddings of a text's tokens: where a soft prompt starts (black-box tuning)")
async def token_embeddings(body: TokenEmbeddingsRequest, request: Request, key: Caller) -> Any:
    server = server_of(request)
    model = language_model(served_for(request, key, body.model))
    server.check_texts([body.text], "text")
    ids, rows = embeddings_of(model.model, model.tokenizer, body.text)
    if not ids:
        raise error(422, "the text has no tokens")
    return {"object": "token_embeddings", "model": body.model, "tokens": [token_text(model.tokenizer, token)
                                                                          for token in ids],
            "data": rows.float().tolist(), "usage": {"prompt_tokens": len(ids), "completion_tokens": 0,
                                                     "total_tokens": len(ids)}}


def _scored(tokenizer: Any, text: str, result: Any) -> dict[str, Any]:
    return {"continuation": text, "logprob": result.total,
            "tokens": [{"token": token_text(tokenizer, token), "logprob": logprob,
                        "top_logprobs": [{"token": token_text(tokenizer, other), "logprob": value}
                                         for other, value in top]}
                       for token, logprob, top in zip(result.tokens, result.logprobs, result.top, strict=True)]}
