"""What every endpoint shares: the server's limits, its errors (OpenAI's error body, with the HTTP status a client
can act on), who is calling (API keys, rate limits), and the batchers that answer for each engine."""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from tunelab.serve.batcher import MicroBatcher, Overloaded
from tunelab.serve.keys import Key, Keys
from tunelab.serve.metrics import Metrics
from tunelab.serve.models import NotServed, SentencePool, Served, ServedModels
from tunelab.serve.schemas import ErrorBody


@dataclass(frozen=True)
class Limits:
    max_batch: int = 32  # rows per micro-batch
    max_wait_ms: float = 5.0  # how long a batch waits for more rows
    max_queue: int = 256  # requests waiting per engine before 503
    max_body_bytes: int = 1 << 20
    max_inputs: int = 64  # texts (or prompt x continuation pairs) per request
    max_input_chars: int = 20_000  # per text
    max_tokens: int = 1024  # generated per request
    timeout_s: float = 60.0


class ApiError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error",
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.headers = status, message, kind, headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "code": self.status}}


STATUS_KINDS = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                404: "not_found_error", 409: "conflict_error", 413: "request_too_large", 422: "invalid_request_error",
                429: "rate_limit_error", 503: "overloaded_error", 504: "timeout_error"}
ERRORS: dict[int | str, dict[str, Any]] = {status: {"model": ErrorBody} for status in STATUS_KINDS}


def error(status: int, message: str, headers: dict[str, str] | None = None) -> ApiError:
    return ApiError(status, message, STATUS_KINDS.get(status, "server_error"), headers)


@dataclass
class Server:
    models: ServedModels
    keys: Keys | None
    limits: Limits
    metrics: Metrics = field(default_factory=Metrics)
    batchers: dict[int, MicroBatcher] = field(default_factory=dict)  # id(engine) -> its batcher

    def batcher(self, served: Served) -> MicroBatcher:
        engine = served.engine
        if id(engine) not in self.batchers:
            name = served.base if isinstance(engine, SentencePool) else served.name  # a pool batches its base
            self.batchers[id(engine)] = MicroBatcher(
                engine.answer, self.limits.max_batch, self.limits.max_wait_ms, self.limits.max_queue,
                lambda rows, queued: self.metrics.batched(name, rows, queued))
        return self.batchers[id(engine)]

    async def batched(self, served: Served, items: list[Any]) -> list[Any]:
        """The engine's answers to `items`, through its micro-batcher, within the request timeout."""
        try:
            return await asyncio.wait_for(self.batcher(served).submit(items), self.limits.timeout_s)
        except Overloaded:
            raise error(503, "the server is busy: try again shortly", {"Retry-After": "1"}) from None
        except asyncio.TimeoutError:
            raise error(504, f"no answer within {self.limits.timeout_s:g} s") from None

    def check_texts(self, texts: list[str], what: str = "inputs") -> None:
        if not texts:
            raise error(422, f"{what} is empty: give at least one text")
        if len(texts) > self.limits.max_inputs:
            raise error(422, f"{len(texts)} {what} in one request; at most {self.limits.max_inputs}")
        longest = max(len(text) for text in texts)
        if longest > self.limits.max_input_chars:
            raise error(422, f"a text of {longest} characters; at most {self.limits.max_input_chars} each")


bearer = HTTPBearer(auto_error=False, description="an API key of the server's key file, as `Bearer KEY`")


def server_of(request: Request) -> Server:
    return request.app.state.server


async def caller(request: Request,
                 credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> Key | None:
    """The calling key (None on a server without keys): 401 without a valid one, 429 over its rate."""
    server = server_of(request)
    if server.keys is None:
        return None
    key = server.keys.find(credentials.credentials) if credentials is not None else None
    if key is None:
        raise error(401, "a valid API key is needed: send the header `Authorization: Bearer KEY`",
                    {"WWW-Authenticate": "Bearer"})
    wait = server.keys.wait(key)
    if wait > 0:
        raise error(429, f"over this key's rate: try again in {wait:.1f} s", {"Retry-After": str(math.ceil(wait))})
    return key


Caller = Annotated[Key | None, Depends(caller)]


def admin(request: Request, key: Caller) -> Key | None:
    if key is not None and not key.admin:
        raise error(403, "loading and unloading models takes an admin key")
    return key


Admin = Annotated[Key | None, Depends(admin)]


def served_for(request: Request, key: Key | None, name: str) -> Served:
    """The model a request names, if its key may use it: 403 when not, 404 when no such model is served."""
    request.state.model = name
    if key is not None and not key.may_use(name):
        raise error(403, f"this key may not use '{name}'")
    try:
        return server_of(request).models.get(name)
    except NotServed as missing:
        raise error(404, str(missing)) from None
