"""The naive server the serving benchmark measures tunelab against: FastAPI calling a transformers `pipeline` once
per request, the way the Hugging Face docs show a pipeline behind a web endpoint, with no batching across requests.

Its model is a tunelab run's merged export (`tunelab export --merge`: the LoRA folded into MiniLM's weights, a plain
transformers folder), so it computes what the served adapter computes per text: the same encoder, a linear head
(the architecture's own head here, untrained: its answers are not the run's, its cost is).

    python benchmarks/naive_server.py MODEL_FOLDER PORT
    python benchmarks/naive_server.py none PORT      # no model: a fixed answer, the HTTP stack's own ceiling
"""

from __future__ import annotations

import sys

import torch
import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel
from transformers import pipeline

NO_MODEL = sys.argv[1] == "none"
classifier = None if NO_MODEL else pipeline("text-classification", model=sys.argv[1], dtype=torch.float32,
                                            device="cpu")
app = FastAPI()


class Request(BaseModel):
    model: str
    inputs: list[str]


@app.post("/v1/predict")
def predict(request: Request) -> dict:
    if NO_MODEL:
        return {"data": [[{"label": "LABEL_0", "score": 0.5}, {"label": "LABEL_1", "score": 0.5}]]}
    return {"data": classifier(request.inputs, top_k=None)}


@app.get("/ready")
def ready() -> dict:
    return {"status": "ready"}


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
