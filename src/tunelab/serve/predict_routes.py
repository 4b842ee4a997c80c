"""`POST /v1/predict`: each task's own answer, as `tunelab predict --json` gives it for the same run: a label with
every label's probability, a value, entities with character spans, or an answer with its span in the passage."""

from __future__ import annotations

from fastapi import APIRouter, Request

from tunelab.errors import TunelabError
from tunelab.serve.models import FoundPromptEngine, NotServed, SentencePool, TaskEngine
from tunelab.serve.schemas import PredictRequest, PredictResponse
from tunelab.serve.server import ERRORS, Caller, error, served_for, server_of

router = APIRouter()


@router.post("/v1/predict", response_model=PredictResponse, responses=ERRORS,
             summary="Classify, score, tag or answer with a run of a sentence, token or question-answering task")
async def predict(body: PredictRequest, request: Request, key: Caller) -> dict:
    server = server_of(request)
    served = served_for(request, key, body.model)
    texts = [body.inputs] if isinstance(body.inputs, str) else body.inputs
    server.check_texts(texts)
    if isinstance(served.engine, SentencePool | FoundPromptEngine):
        if body.context is not None:
            raise error(422, f"'{body.model}' is a {served.task} model: it takes no context")
        items = [(text, served.name) for text in texts]
    elif isinstance(served.engine, TaskEngine):
        if body.context is not None:
            server.check_texts([body.context], "context")
        items = [(text, body.context) for text in texts]
    else:
        raise error(400, f"'{body.model}' is a language model: ask it through /v1/completions, "
                         f"/v1/chat/completions or /v1/score")
    try:
        records = await server.batched(served, items)
    except NotServed as gone:
        raise error(404, str(gone)) from None
    except TunelabError as refused:
        raise error(422, str(refused)) from None
    return {"object": "prediction", "model": body.model, "task": served.task, "data": records}  # validated once
