"""The server as its clients meet it: the official `openai` client over real HTTP, `tunelab serve` as a process,
and schemathesis generating requests from the published OpenAPI schema."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest
import schemathesis
import torch
import uvicorn
from hypothesis import HealthCheck, given, settings, strategies
from hypothesis.errors import Unsatisfiable
from peft import PeftModel
from safetensors.torch import load_file
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from tiny import generation_config
from transformers import AutoModelForCausalLM

from tunelab import api
from tunelab.serve.app import create_app
from tunelab.serve.keys import Keys, parse_keys
from tunelab.serve.models import ServedModels
from tunelab.serve.server import Limits
from tunelab.strategies.peft_adapter import ADAPTER_DIR
from tunelab.tasks.conversation import context_ids, user
from tunelab.tasks.generation import complete, generate

KEY = "client-secret"


@pytest.fixture(scope="module")
def models(bert_lora, chat_run) -> ServedModels:
    served = ServedModels("fp32")
    served.load([f"tweets={bert_lora.path}", f"chat={chat_run.path}"])
    return served


@pytest.fixture(scope="module")
def live_url(models: ServedModels) -> str:
    """The app under uvicorn on a free loopback port, in a thread, for the length of the module."""
    app = create_app(models, Keys(parse_keys(f"{KEY} admin", "test")), Limits(max_tokens=16))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join()


def test_the_openai_client_completes_chats_and_streams(live_url: str, models: ServedModels):
    client = openai.OpenAI(base_url=f"{live_url}/v1", api_key=KEY)
    model = models.get("chat").engine
    assert {entry.id for entry in client.models.list()} == {"tweets", "chat"}
    completion = client.completions.create(model="chat", prompt="say something", max_tokens=4, temperature=0,
                                           logprobs=2)
    assert completion.choices[0].text.strip() == generate(model.model, model.tokenizer, "say something", 4,
                                                          continuation=True)
    question = "say something positive"
    expected = complete(model.model, model.tokenizer, [context_ids(model.tokenizer, [user(question)])], 8)[0]
    chat = client.chat.completions.create(model="chat", messages=[{"role": "user", "content": question}],
                                          max_tokens=8, temperature=0, logprobs=True, top_logprobs=2)
    assert chat.choices[0].message.content.strip() == expected
    assert len(chat.choices[0].logprobs.content[0].top_logprobs) == 2 and chat.usage.completion_tokens >= 1
    streamed = client.chat.completions.create(model="chat", messages=[{"role": "user", "content": question}],
                                              max_tokens=8, temperature=0, stream=True)
    assert "".join(chunk.choices[0].delta.content or "" for chunk in streamed).strip() == expected


def test_the_openai_client_reads_our_errors(live_url: str):
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{live_url}/v1", api_key="wrong").models.list()
    client = openai.OpenAI(base_url=f"{live_url}/v1", api_key=KEY)
    with pytest.raises(openai.NotFoundError, match="no model 'missing' is served"):
        client.completions.create(model="missing", prompt="x")
    with pytest.raises(openai.UnprocessableEntityError, match="over this server's limit of 16"):
        client.completions.create(model="chat", prompt="x", max_tokens=17)


def test_curl_style_predict_over_http(live_url: str):
    answer = httpx.post(f"{live_url}/v1/predict", json={"model": "tweets", "inputs": ["great game"]},
                        headers={"Authorization": f"Bearer {KEY}"})
    assert answer.status_code == 200 and answer.json()["data"][0]["label"] in ("negative", "positive")
    schema = httpx.get(f"{live_url}/openapi.json").json()
    assert {"/v1/predict", "/v1/completions", "/v1/chat/completions", "/v1/score", "/v1/models", "/v1/adapters",
            "/metrics", "/health", "/ready"} <= set(schema["paths"])


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_tunelab_serve_runs_as_a_process(bert_lora, tmp_path: Path):
    port = _free_port()
    keys = tmp_path / "keys.txt"
    keys.write_text(f"{KEY}\n")
    command = [sys.executable, "-m", "tunelab", "serve", f"tweets={bert_lora.path}", "--port", str(port),
               "--api-keys", str(keys), "--precision", "fp32"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "TUNELAB_API_KEYS": ""})
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(600):
            try:
                if httpx.get(f"{url}/ready").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        else:
            pytest.fail(f"the server did not start: {process.stderr.read() if process.poll() is not None else ''}")
        assert httpx.post(f"{url}/v1/predict", json={"model": "tweets", "inputs": ["x"]}).status_code == 401
        answer = httpx.post(f"{url}/v1/predict", json={"model": "tweets", "inputs": ["great game"]},
                            headers={"Authorization": f"Bearer {KEY}"})
        assert answer.status_code == 200, answer.text
    finally:
        process.terminate()
        out, _ = process.communicate(timeout=30)
    assert "tweets" in out and "API keys: 1" in out


# --- the schema -------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def served_schema(models: ServedModels):
    app = create_app(models, Keys(parse_keys(f"{KEY} admin", "test")),
                     Limits(max_tokens=4, max_inputs=4, max_input_chars=200, timeout_s=30))
    return schemathesis.openapi.from_asgi("/openapi.json", app)


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_every_endpoint_answers_as_its_schema_says(served_schema, mode: GenerationMode):
    """Generated requests, valid (positive) and not (negative): never a 5xx, and every answer's status, type and
    body as documented. (schemathesis' pytest plugin does not load under pytest 9: the operations are walked
    here.)"""
    operations = [result.ok() for result in served_schema.get_all_operations()]
    assert len(operations) >= 10
    tried, statuses = 0, []
    for operation in operations:
        @given(case=operation.as_strategy(generation_mode=mode), name=strategies.sampled_from(["tweets", "chat"]))
        @settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def answers_as_documented(case, name: str) -> None:
            if mode is GenerationMode.POSITIVE and isinstance(case.body, dict) and "model" in case.body:
                case.body["model"] = name  # a served model, so that valid requests reach the models
            statuses.append(case.call_and_validate(headers={"Authorization": f"Bearer {KEY}"},
                                   checks=[not_a_server_error, status_code_conformance, content_type_conformance,
                                           response_schema_conformance]).status_code)

        try:
            answers_as_documented()
            tried += 1
        except Unsatisfiable:  # an operation without inputs has no invalid ones
            assert mode is GenerationMode.NEGATIVE
    assert tried >= 6
    assert mode is GenerationMode.NEGATIVE or statuses.count(200) >= 10  # valid requests reached the models


def test_a_generation_lora_is_the_plain_peft_folder_vllm_loads(tiny_llama_lm: Path, writing_jsonl: Path,
                                                                tmp_path: Path):
    """vLLM's `--enable-lora` (and `/v1/load_lora_adapter`) read PEFT's folder: adapter_config.json with the rank,
    alpha and target modules, adapter_model.safetensors with PEFT's key names, no extra trained modules."""
    run = api.train(generation_config(tiny_llama_lm, writing_jsonl, tmp_path / "lora", epochs=1), progress=False)
    folder = run.path / ADAPTER_DIR
    adapter = json.loads((folder / "adapter_config.json").read_text())
    assert adapter["peft_type"] == "LORA" and adapter["r"] > 0 and adapter["lora_alpha"] > 0
    assert set(adapter["target_modules"]) <= {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                              "down_proj"}
    assert not adapter.get("modules_to_save")
    assert all(key.startswith("base_model.model.model.layers.") for key in load_file(folder /
                                                                                  "adapter_model.safetensors"))
    plain = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama_lm), folder).eval()
    ids = torch.tensor([[101, 2204, 2307, 102]])
    with torch.no_grad():
        torch.testing.assert_close(plain(input_ids=ids).logits, run.predictor.model.backbone(input_ids=ids).logits,
                                   atol=1e-5, rtol=0)


def test_the_dockerfile_installs_what_make_install_does():
    """The image is not built here (no Docker): its recipe must at least name what `make install` pins."""
    root = Path(__file__).resolve().parents[1]
    docker, make = (root / "Dockerfile").read_text(), (root / "Makefile").read_text()
    assert all(package in docker for package in re.search(r"EMBEDDED := (.*)", make).group(1).split())
    assert re.search(r"torch==[\d.]+", make).group(0) in docker and "-c constraints.txt" in docker
    for line in re.findall(r"^COPY (.+) \S+$", docker, re.MULTILINE):
        assert all((root / name).exists() for name in line.split())
