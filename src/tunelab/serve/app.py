"""The FastAPI application: health and readiness, the model list, loading and unloading at run time, Prometheus
metrics, and the routers of the task and language-model endpoints; every error as OpenAI's error body."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import version
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tunelab.errors import TunelabError
from tunelab.serve import language_routes, predict_routes
from tunelab.serve.keys import Keys
from tunelab.serve.metrics import Metrics
from tunelab.serve.models import NameTaken, NotServed, ServedModels
from tunelab.serve.schemas import Health, LoadRequest, Model, ModelList
from tunelab.serve.server import ERRORS, Admin, ApiError, Caller, Limits, Server, error, served_for, server_of


class BodyLimit:
    """413 for a body over `limit` bytes: by its Content-Length at once, or, for a body sent in chunks, as soon as
    the chunks pass it (the endpoint then reads an empty body, and its answer is replaced by the 413)."""

    def __init__(self, app: ASGIApp, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            await self._too_large(send)
            return
        received, over = 0, False

        async def limited() -> Message:
            nonlocal received, over
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    over = True
                    return {"type": "http.request", "body": b"", "more_body": False}
            return message

        async def checked(message: Message) -> None:
            if over:
                if message["type"] == "http.response.start":
                    await self._too_large(send)
                return
            await send(message)

        await self.app(scope, limited, checked)

    async def _too_large(self, send: Send) -> None:
        response = JSONResponse(error(413, f"the body is over {self.limit} bytes").body(), status_code=413)
        await response({"type": "http"}, _nothing, send)


async def _nothing() -> Message:
    return {"type": "http.disconnect"}


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    yield
    for batcher in app.state.server.batchers.values():  # on shutdown: the workers stop, their threads end
        batcher.close()


def create_app(models: ServedModels, keys: Keys | None = None, limits: Limits | None = None) -> FastAPI:
    limits = limits or Limits()
    app = FastAPI(title="tunelab", version=version("tunelab"), lifespan=_lifespan,
                  description="Trained tunelab runs and bundles: many adapters on one base model, micro-batched; "
                              "OpenAI-compatible completions and chat for language models.")
    app.state.server = Server(models, keys, limits)
    app.include_router(predict_routes.router)
    app.include_router(language_routes.router)
    app.add_middleware(BodyLimit, limit=limits.max_body_bytes)
    app.add_middleware(Measured, metrics=app.state.server.metrics)
    _errors(app)

    @app.get("/health", response_model=Health, summary="Liveness: the process answers")
    async def health(request: Request) -> Health:
        return Health(status="ok", models=len(server_of(request).models.entries))

    @app.get("/ready", response_model=Health, responses={503: {"model": Health}},
             summary="Readiness: at least one model is served")
    async def ready(request: Request) -> Any:
        count = len(server_of(request).models.entries)
        return Health(status="ready", models=count) if count else \
            JSONResponse(Health(status="no models", models=0).model_dump(), status_code=503)

    @app.get("/v1/models", response_model=ModelList, responses=ERRORS,
             summary="The served models (OpenAI's list): base models and the adapters on them")
    async def list_models(request: Request, key: Caller) -> ModelList:
        entries = server_of(request).models.entries.values()
        return ModelList(data=[Model(**served.describe()) for served in entries
                               if key is None or key.may_use(served.name)])

    @app.get("/v1/models/{name:path}", response_model=Model, responses=ERRORS, summary="One served model")
    async def one_model(name: str, request: Request, key: Caller) -> Model:
        return Model(**served_for(request, key, name).describe())

    @app.post("/v1/adapters", response_model=ModelList, responses=ERRORS,
              summary="Load a run or a bundle from the server's disk (admin keys)")
    async def load(body: LoadRequest, request: Request, key: Admin) -> ModelList:
        server = server_of(request)
        source = f"{body.name}={body.path}" if body.name else body.path
        try:
            added = await asyncio.to_thread(server.models.load, [source])
        except NameTaken as taken:
            raise error(409, str(taken)) from None
        except TunelabError as refused:
            raise error(422, str(refused)) from None
        return ModelList(data=[Model(**served.describe()) for served in added])

    @app.delete("/v1/adapters/{name:path}", response_model=Model, responses=ERRORS,
                summary="Unload a served model (admin keys); its requests in flight are answered")
    async def unload(name: str, request: Request, key: Admin) -> Model:
        server = server_of(request)
        request.state.model = name
        try:
            served = await asyncio.to_thread(server.models.unload, name)
        except NotServed as missing:
            raise error(404, str(missing)) from None
        if all(entry.engine is not served.engine for entry in server.models.entries.values()):
            server.batchers.pop(id(served.engine), None)  # its queue is answered by the batcher's running worker
        return Model(**served.describe())

    @app.get("/metrics", response_class=Response, responses={**ERRORS, 200: {"content": {"text/plain": {}}}},
             summary="Prometheus metrics: requests, latency, batch sizes, queue depth")
    async def metrics(request: Request, key: Caller) -> Response:
        return Response(server_of(request).metrics.exposition(), media_type="text/plain; version=0.0.4")

    return app


def _errors(app: FastAPI) -> None:
    """Every error as {"error": {"message", "type", "code"}}, as OpenAI's API and its clients expect."""

    @app.exception_handler(ApiError)
    async def api_error(request: Request, raised: ApiError) -> JSONResponse:
        return JSONResponse(raised.body(), status_code=raised.status, headers=raised.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, raised: RequestValidationError) -> JSONResponse:
        first = raised.errors()[0] if raised.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(part) for part in first["loc"] if part != "body") or "the body"
        return JSONResponse(error(422, f"{where}: {first['msg']}").body(), status_code=422)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, raised: HTTPException) -> JSONResponse:
        return JSONResponse(error(raised.status_code, str(raised.detail)).body(), status_code=raised.status_code,
                            headers=raised.headers)


class Measured:
    """Counts and times every request (a plain ASGI middleware: Starlette's `BaseHTTPMiddleware` costs about a
    millisecond a request, which is much of a batched prediction's share)."""

    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), 500

        async def sent(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sent)
        finally:
            route = scope.get("route")
            model = scope.get("state", {}).get("model", "-")
            self.metrics.observe(route.path if route is not None else "unknown", model, status,
                                 time.perf_counter() - started)
