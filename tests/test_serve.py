"""`tunelab serve`: every endpoint answers what the same run answers in-process, batches mix adapters, keys and
limits refuse what they should with the status a client can act on, and models load and unload while served."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from test_question_answering import people as qa_people
from test_question_answering import write_jsonl
from test_token_classification import ner_config, people, write_conll
from tiny import run_main

from tunelab import api, build_config, make_bundle
from tunelab.errors import TunelabError
from tunelab.serve.app import create_app
from tunelab.serve.batcher import MicroBatcher, Overloaded
from tunelab.serve.decoding import Sampling, collect, stream
from tunelab.serve.keys import parse_keys, read_keys
from tunelab.serve.models import SentencePool, ServedModels
from tunelab.serve.server import Limits
from tunelab.tasks.conversation import context_ids, user
from tunelab.tasks.generation import complete, generate
from tunelab.tasks.likelihood import score_continuations

ADMIN, READER, LIMITED = "admin-secret", "reader-secret", "limited-secret"
TEXTS = ["good great fine nice", "bad awful poor nasty", "lovely superb good fine"]


@pytest.fixture(scope="module")
def ner_run(tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("serve-ner")
    data = write_conll(people(40), folder / "people.conll")
    return api.train(ner_config(tiny_bert, data, folder / "ner"), progress=False).path


@pytest.fixture(scope="module")
def qa_run(tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("serve-qa")
    data = write_jsonl(qa_people(16, unanswerable=True), folder / "people.jsonl")
    config = build_config({"model": str(tiny_bert), "task": "question-answering", "data": {"source": str(data)},
                           "training": {"epochs": 1, "batch_size": 8, "max_length": 32}, "output": str(folder / "qa")})
    return api.train(config, progress=False).path


@pytest.fixture(scope="module")
def runs(bert_lora, bert_lora_three, bert_ia3, bert_adapter_three, bert_full, bert_ratings, ner_run, qa_run,
         chat_run) -> dict[str, Path]:
    return {"lora": bert_lora.path, "lora3": bert_lora_three.path, "ia3": bert_ia3.path,
            "adapter3": bert_adapter_three.path, "full": bert_full.path, "ratings": bert_ratings.path,
            "ner": ner_run, "qa": qa_run, "chat": chat_run.path}


@pytest.fixture(scope="module")
def models(runs: dict[str, Path], tiny_llama_lm: Path) -> ServedModels:
    served = ServedModels("fp32")
    served.load([f"{name}={path}" for name, path in runs.items()])
    served.load_base(str(tiny_llama_lm))
    return served


@pytest.fixture(scope="module")
def keys_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("keys") / "keys.txt"
    hashed = hashlib.sha256(READER.encode()).hexdigest()
    path.write_text(f"# who may call\n{ADMIN} admin\nsha256:{hashed} models=lora,ia3\n{LIMITED} rate=2/min\n")
    return path


@pytest.fixture(scope="module")
def client(models: ServedModels, keys_file: Path) -> TestClient:
    app = create_app(models, read_keys(keys_file), Limits(max_inputs=8, max_input_chars=200, max_tokens=32,
                                                          max_body_bytes=100_000))
    with TestClient(app, headers={"Authorization": f"Bearer {ADMIN}"}) as test_client:
        yield test_client


def post(client: TestClient, path: str, body: dict, key: str = ADMIN) -> httpx.Response:
    return client.post(path, json=body, headers={"Authorization": f"Bearer {key}"})


# --- names and the model list -------------------------------------------------------------------------------------

def test_models_are_listed_by_name_with_their_base_task_and_strategy(client: TestClient, tiny_llama_lm: Path):
    listed = {model["id"]: model for model in client.get("/v1/models").json()["data"]}
    assert set(listed) == {"lora", "lora3", "ia3", "adapter3", "full", "ratings", "ner", "qa", "chat",
                           str(tiny_llama_lm)}
    assert (listed["lora"]["task"], listed["lora"]["strategy"], listed["ratings"]["task"]) == \
        ("classification", "lora", "regression")
    assert listed[str(tiny_llama_lm)]["parent"] is None and listed["chat"]["task"] == "generation"
    assert client.get("/v1/models/ner").json()["task"] == "token-classification"


def test_the_sentence_tasks_of_one_base_share_one_copy_of_it(models: ServedModels):
    pools = {id(models.get(name).engine) for name in ("lora", "lora3", "ia3", "adapter3", "full", "ratings")}
    assert len(pools) == 1 and len(models.pools) == 1


def test_a_bundle_serves_each_task_under_its_name(bert_lora, bert_ia3, tmp_path: Path):
    made = make_bundle([f"tweets={bert_lora.path}", f"news={bert_ia3.path}"], tmp_path / "bundle")
    served = ServedModels("fp32")
    assert [entry.name for entry in served.load([str(made.path)])] == ["tweets", "news"]
    assert [entry.name for entry in served.load([f"sentiment={made.path}"])] == ["sentiment/tweets",
                                                                                  "sentiment/news"]
    with pytest.raises(TunelabError, match="'tweets' is served already; unload it first"):
        served.load([str(made.path)])


# --- predict: the in-process answer, per task ---------------------------------------------------------------------

@pytest.mark.parametrize("name", ["lora", "lora3", "ia3", "adapter3", "full"])
def test_classification_answers_as_predict_does(client: TestClient, runs: dict[str, Path], name: str):
    answer = post(client, "/v1/predict", {"model": name, "inputs": TEXTS})
    assert answer.status_code == 200, answer.text
    expected = api.predict(runs[name], TEXTS, precision="fp32")
    data = answer.json()["data"]
    assert [row["label"] for row in data] == [row["label"] for row in expected]
    for row, want in zip(data, expected, strict=True):
        assert row["text"] == want["text"]
        assert row["probabilities"] == pytest.approx(want["probabilities"], abs=1e-5)


def test_regression_answers_its_value(client: TestClient, runs: dict[str, Path]):
    data = post(client, "/v1/predict", {"model": "ratings", "inputs": TEXTS}).json()["data"]
    expected = api.predict(runs["ratings"], TEXTS, precision="fp32")
    assert [row["value"] for row in data] == pytest.approx([row["value"] for row in expected], abs=1e-4)


def test_ner_answers_entities_with_character_spans(client: TestClient, runs: dict[str, Path]):
    texts = ["Anna met Ben in Paris", "nobody here"]
    data = post(client, "/v1/predict", {"model": "ner", "inputs": texts}).json()["data"]
    expected = api.predict(runs["ner"], texts, precision="fp32")
    assert [[(e["text"], e["type"], e["start"], e["end"]) for e in row["entities"]] for row in data] == \
        [[(e["text"], e["type"], e["start"], e["end"]) for e in row["entities"]] for row in expected]


def test_qa_answers_questions_about_the_context(client: TestClient, runs: dict[str, Path]):
    context, questions = "Anna lives in Paris and likes red.", ["Where does Anna live?", "Who lives in Paris?"]
    answer = post(client, "/v1/predict", {"model": "qa", "inputs": questions, "context": context})
    expected = api.predict(runs["qa"], questions, context, precision="fp32")
    assert [(row["answer"], row["start"], row["end"]) for row in answer.json()["data"]] == \
        [(row["answer"], row["start"], row["end"]) for row in expected]
    missing = post(client, "/v1/predict", {"model": "qa", "inputs": questions})
    assert missing.status_code == 422 and "--context" in missing.json()["error"]["message"]


def test_requests_for_different_adapters_are_answered_in_one_batch(models: ServedModels, runs: dict[str, Path]):
    app = create_app(models, None, Limits(max_batch=64, max_wait_ms=200))
    names = ["lora", "lora3", "ia3", "adapter3", "ratings", "lora", "ia3", "lora3"]

    async def all_at_once() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as session:
            return await asyncio.gather(*(session.post("/v1/predict", json={"model": name, "inputs": [TEXTS[0]]})
                                          for name in names))

    answers = asyncio.run(all_at_once())
    assert [answer.status_code for answer in answers] == [200] * len(names)
    metrics = app.state.server.metrics
    batches = metrics.registry.get_sample_value("tunelab_batch_rows_count", {"engine": models.get("lora").base})
    assert batches is not None and batches < len(names)  # fewer forwards than requests
    for name, answer in zip(names, answers, strict=True):
        if name != "ratings":
            want = api.predict(runs[name], [TEXTS[0]], precision="fp32")[0]["probabilities"]
            assert answer.json()["data"][0]["probabilities"] == pytest.approx(want, abs=1e-5)


def test_a_language_model_is_refused_on_predict_and_a_classifier_on_completions(client: TestClient):
    refused = post(client, "/v1/predict", {"model": "chat", "inputs": ["hi"]})
    assert refused.status_code == 400 and "/v1/completions" in refused.json()["error"]["message"]
    refused = post(client, "/v1/completions", {"model": "lora", "prompt": "hi"})
    assert refused.status_code == 400 and "/v1/predict" in refused.json()["error"]["message"]


# --- completions, chat, score -------------------------------------------------------------------------------------

def test_completions_continue_the_prompt_as_generate_does(client: TestClient, models: ServedModels):
    model = models.get("chat").engine
    answer = post(client, "/v1/completions", {"model": "chat", "prompt": "say something", "max_tokens": 6,
                                              "temperature": 0})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    expected = generate(model.model, model.tokenizer, "say something", 6, continuation=True)
    assert body["choices"][0]["text"].strip() == expected
    assert body["usage"]["completion_tokens"] <= 6 and body["object"] == "text_completion"
    sampled = {"model": "chat", "prompt": "say something", "max_tokens": 6, "temperature": 0.9, "seed": 7}
    twice = [post(client, "/v1/completions", sampled).json()["choices"][0]["text"] for _ in range(2)]
    assert twice[0] == twice[1]
    assert twice[0].strip() == generate(model.model, model.tokenizer, "say something", 6, 0.9, 7, True)


def test_chat_answers_as_the_chat_command_does(client: TestClient, models: ServedModels):
    model = models.get("chat").engine
    messages = [{"role": "user", "content": "say something positive"}]
    body = post(client, "/v1/chat/completions", {"model": "chat", "messages": messages, "temperature": 0,
                                                 "max_tokens": 8}).json()
    expected = complete(model.model, model.tokenizer, [context_ids(model.tokenizer, [user(messages[0]["content"])])],
                        8)[0]
    assert body["choices"][0]["message"]["content"].strip() == expected
    assert body["choices"][0]["finish_reason"] in ("stop", "length") and body["object"] == "chat.completion"


def test_logprobs_are_the_model_log_probabilities_of_the_tokens_it_chose(models: ServedModels, tiny_llama_lm: Path):
    model = models.get(str(tiny_llama_lm)).engine
    ids = model.tokenizer("the film was", add_special_tokens=False)["input_ids"]
    for temperature in (0.0, 1.5):  # before temperature reshapes the distribution, as OpenAI reports them
        piece, finished = collect(stream(model.model, model.tokenizer, ids, Sampling(6, temperature, seed=1,
                                                                                     top_logprobs=3)))
        expected = score_continuations(model.model, [(ids, piece.tokens)])[0].logprobs
        assert piece.logprobs == pytest.approx(expected, abs=1e-4) and finished.completion_tokens == 6
        assert piece.text == model.tokenizer.decode(piece.tokens, skip_special_tokens=True)


def test_completion_logprobs_list_the_top_alternatives(client: TestClient, tiny_llama_lm: Path):
    body = post(client, "/v1/completions", {"model": str(tiny_llama_lm), "prompt": "the film was", "max_tokens": 5,
                                            "temperature": 0, "logprobs": 3}).json()
    logprobs = body["choices"][0]["logprobs"]
    assert len(logprobs["tokens"]) == 5 and logprobs["text_offset"][0] == 0
    for chosen, top in zip(logprobs["token_logprobs"], logprobs["top_logprobs"], strict=True):
        assert 1 <= len(top) <= 3 and chosen == pytest.approx(max(top.values()), abs=1e-5)  # greedy: the best one


def test_echo_gives_the_prompt_back_with_its_log_probabilities(client: TestClient):
    body = post(client, "/v1/completions", {"model": "chat", "prompt": "say something", "max_tokens": 2,
                                            "temperature": 0, "echo": True, "logprobs": 0}).json()
    choice = body["choices"][0]
    assert choice["text"].startswith("say something")
    assert choice["logprobs"]["token_logprobs"][0] is None and all(
        value <= 0 for value in choice["logprobs"]["token_logprobs"][1:])


def test_a_stop_string_ends_the_text_before_it(client: TestClient):
    request = {"model": "chat", "messages": [{"role": "user", "content": "say something positive"}],
               "max_tokens": 8, "temperature": 0}
    whole = post(client, "/v1/chat/completions", request).json()["choices"][0]["message"]["content"]
    stop = whole.split()[1]
    cut = post(client, "/v1/chat/completions", {**request, "stop": stop}).json()["choices"][0]
    assert cut["message"]["content"] == whole[:whole.index(stop)] and cut["finish_reason"] == "stop"


def test_streaming_sends_the_same_text_in_pieces(client: TestClient):
    request = {"model": "chat", "messages": [{"role": "user", "content": "say something"}], "temperature": 0.8,
               "seed": 3, "max_tokens": 8}
    whole = post(client, "/v1/chat/completions", request).json()["choices"][0]["message"]["content"]
    with client.stream("POST", "/v1/chat/completions", json={**request, "stream": True}) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line.removeprefix("data: ") for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    chunks = [json.loads(line) for line in lines[:-1]]
    assert "".join(chunk["choices"][0]["delta"].get("content", "") for chunk in chunks) == whole
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")


def test_score_gives_each_continuation_log_probability_after_each_prompt(client: TestClient, models: ServedModels,
                                                                         tiny_llama_lm: Path):
    base = str(tiny_llama_lm)
    model = models.get(base).engine
    body = post(client, "/v1/score", {"model": base, "prompts": ["the film was", "it is"],
                                      "continuations": [" good", " very bad"], "top_logprobs": 2}).json()
    assert len(body["data"]) == 2 and [len(row) for row in body["data"]] == [2, 2]
    ids = model.tokenizer("the film was very bad", add_special_tokens=False)["input_ids"]
    prompt = len(model.tokenizer("the film was", add_special_tokens=False)["input_ids"])
    with torch.no_grad():
        logits = model.model.backbone(input_ids=torch.tensor([ids])).logits[0].log_softmax(-1)
    by_hand = sum(float(logits[position - 1, ids[position]]) for position in range(prompt, len(ids)))
    assert body["data"][0][1]["logprob"] == pytest.approx(by_hand, abs=1e-4)
    assert len(body["data"][0][1]["tokens"][0]["top_logprobs"]) == 2


def test_a_soft_prompt_goes_before_the_prompt(client: TestClient, models: ServedModels, tiny_llama_lm: Path):
    base = str(tiny_llama_lm)
    model = models.get(base).engine
    soft = torch.randn(3, model.hidden_size, generator=torch.Generator().manual_seed(0))
    request = {"model": base, "prompts": "the film was", "continuations": [" good"]}
    plain = post(client, "/v1/score", request).json()["data"][0][0]["logprob"]
    prompted = post(client, "/v1/score", {**request, "soft_prompt": soft.tolist()}).json()["data"][0][0]["logprob"]
    tokens = model.tokenizer
    by_hand = score_continuations(model.model, [(tokens("the film was", add_special_tokens=False)["input_ids"],
                                                 tokens(" good", add_special_tokens=False)["input_ids"])], soft)
    assert prompted == pytest.approx(by_hand[0].total, abs=1e-4) and prompted != pytest.approx(plain, abs=1e-3)
    only_soft = post(client, "/v1/score", {**request, "prompts": "", "soft_prompt": soft.tolist()})
    assert only_soft.status_code == 200
    wrong = post(client, "/v1/score", {**request, "soft_prompt": [[0.0] * 5]})
    assert wrong.status_code == 422 and f"rows of {model.hidden_size} numbers" in wrong.json()["error"]["message"]


def test_a_soft_prompt_goes_between_pieces_of_a_prompt(client: TestClient, models: ServedModels,
                                                       tiny_llama_lm: Path):
    base = str(tiny_llama_lm)
    model = models.get(base).engine
    words = post(client, "/v1/token_embeddings", {"model": base, "text": "the film"}).json()
    assert len(words["tokens"]) == len(words["data"]) == words["usage"]["prompt_tokens"] > 0
    request = {"model": base, "continuations": [" good"]}
    plain = post(client, "/v1/score", {**request, "prompts": "the film was"}).json()["data"][0][0]["logprob"]
    # the words' own embeddings between the pieces: the same text, read the same way
    pieced = post(client, "/v1/score", {**request, "prompts": [["", " was"]], "soft_prompt": words["data"],
                                        "soft_lengths": [len(words["data"])]})
    assert pieced.status_code == 200 and pieced.json()["data"][0][0]["logprob"] == pytest.approx(plain, abs=1e-4)
    for wrong, message in (({"prompts": [["", " was"]]}, "needs soft_lengths"),
                           ({"prompts": ["the film was"], "soft_lengths": [2]}, "every prompt is a list of 2 pieces"),
                           ({"prompts": [["", " was"]], "soft_lengths": [1]}, "soft_lengths add up to 1 rows")):
        answer = post(client, "/v1/score", {**request, "soft_prompt": words["data"], **wrong})
        assert answer.status_code == 422 and message in answer.json()["error"]["message"], answer.text
    assert model.hidden_size == len(words["data"][0])


# --- keys and limits ----------------------------------------------------------------------------------------------

def test_keys_guard_models_and_admin(client: TestClient):
    anonymous = client.post("/v1/predict", json={"model": "lora", "inputs": ["x"]}, headers={"Authorization": ""})
    assert anonymous.status_code == 401 and anonymous.json()["error"]["type"] == "authentication_error"
    assert post(client, "/v1/predict", {"model": "lora", "inputs": ["x"]}, "wrong").status_code == 401
    assert post(client, "/v1/predict", {"model": "lora", "inputs": ["x"]}, READER).status_code == 200  # hashed key
    forbidden = post(client, "/v1/predict", {"model": "full", "inputs": ["x"]}, READER)
    assert forbidden.status_code == 403 and "may not use 'full'" in forbidden.json()["error"]["message"]
    listed = client.get("/v1/models", headers={"Authorization": f"Bearer {READER}"}).json()["data"]
    assert {model["id"] for model in listed} == {"lora", "ia3"}
    assert post(client, "/v1/adapters", {"path": "x"}, READER).status_code == 403


def test_over_the_rate_is_429_with_retry_after(client: TestClient):
    codes = [post(client, "/v1/predict", {"model": "lora", "inputs": ["x"]}, LIMITED) for _ in range(3)]
    assert [code.status_code for code in codes] == [200, 200, 429]
    assert int(codes[2].headers["Retry-After"]) >= 1


def test_limits_refuse_big_bodies_bad_json_and_long_inputs(client: TestClient):
    huge = client.post("/v1/predict", content=b'{"model": "lora", "inputs": ["' + b"a" * 10_000_000 + b'"]}',
                       headers={"Content-Type": "application/json"})
    assert huge.status_code == 413 and huge.json()["error"]["type"] == "request_too_large"
    malformed = client.post("/v1/predict", content=b'{"model": "lora", "inputs": [', headers={
        "Content-Type": "application/json"})
    assert malformed.status_code == 422
    many = post(client, "/v1/predict", {"model": "lora", "inputs": ["x"] * 9})
    assert many.status_code == 422 and "9 inputs in one request; at most 8" in many.json()["error"]["message"]
    long = post(client, "/v1/predict", {"model": "lora", "inputs": ["x" * 201]})
    assert long.status_code == 422 and "at most 200 each" in long.json()["error"]["message"]
    tokens = post(client, "/v1/completions", {"model": "chat", "prompt": "x", "max_tokens": 33})
    assert tokens.status_code == 422 and "over this server's limit of 32" in tokens.json()["error"]["message"]
    unknown = post(client, "/v1/predict", {"model": "nope", "inputs": ["x"]})
    assert unknown.status_code == 404 and "GET /v1/models" in unknown.json()["error"]["message"]


def test_a_body_sent_in_chunks_is_cut_at_the_limit(client: TestClient):
    def chunks():
        yield b'{"model": "lora", "inputs": ["'
        for _ in range(20):
            yield b"a" * 10_000
        yield b'"]}'

    answer = client.post("/v1/predict", content=chunks(), headers={"Content-Type": "application/json"})
    assert answer.status_code == 413


def test_key_lines_are_read_and_a_bad_one_says_what_a_line_holds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    keys = parse_keys("a models=x,y rate=10/s\nb admin ; c rate=60/min", "keys.txt")
    assert [(key.models, key.rate, key.admin) for key in keys] == [(frozenset({"x", "y"}), 10.0, False),
                                                                   (None, None, True), (None, 1.0, False)]
    with pytest.raises(TunelabError, match=r"keys.txt: line 1: cannot read 'rate=fast'; a key line is KEY"):
        parse_keys("a rate=fast", "keys.txt")
    with pytest.raises(TunelabError, match="no API key file at"):
        read_keys(tmp_path / "missing.txt")
    monkeypatch.setenv("TUNELAB_API_KEYS", "k1;k2 admin")
    assert read_keys(None).find("k2").admin and read_keys(None).find("k3") is None


# --- loading and unloading at run time ----------------------------------------------------------------------------

def test_admins_load_and_unload_models_while_serving(models: ServedModels, runs: dict[str, Path]):
    app = create_app(models, None, Limits(max_batch=4, max_wait_ms=20))
    with TestClient(app) as client:
        loaded = client.post("/v1/adapters", json={"path": str(runs["lora3"]), "name": "extra"})
        assert loaded.status_code == 200 and loaded.json()["data"][0]["id"] == "extra"
        assert client.post("/v1/adapters", json={"path": str(runs["lora3"]), "name": "extra"}).status_code == 409
        missing = client.post("/v1/adapters", json={"path": "/nowhere/run"})
        assert missing.status_code == 422
        expected = api.predict(runs["lora3"], TEXTS, precision="fp32")
        got = client.post("/v1/predict", json={"model": "extra", "inputs": TEXTS}).json()["data"]
        assert [row["label"] for row in got] == [row["label"] for row in expected]

        async def unload_in_flight() -> list[int]:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as session:
                requests = [session.post("/v1/predict", json={"model": "extra", "inputs": TEXTS})
                            for _ in range(12)]
                answers = await asyncio.gather(*requests[:6], session.delete("/v1/adapters/extra"), *requests[6:])
            return [answer.status_code for answer in answers]

        codes = asyncio.run(unload_in_flight())
        assert codes[6] == 200 and set(codes) <= {200, 404}, codes
        assert client.post("/v1/predict", json={"model": "extra", "inputs": TEXTS}).status_code == 404
        assert client.delete("/v1/adapters/extra").status_code == 404
        assert client.post("/v1/predict", json={"model": "lora3", "inputs": TEXTS}).status_code == 200


def test_a_removed_task_waiting_in_a_batch_is_not_found(models: ServedModels):
    pool: SentencePool = models.get("lora").engine
    answers = pool.answer([("good", "lora"), ("good", "gone")])
    assert answers[0]["label"] and isinstance(answers[1], TunelabError)


# --- the batcher --------------------------------------------------------------------------------------------------

def test_a_full_queue_refuses_and_a_failed_item_fails_its_request_alone():
    async def scenario() -> None:
        release = asyncio.Event()
        loop = asyncio.get_running_loop()

        def answer(items: list) -> list:
            asyncio.run_coroutine_threadsafe(release.wait(), loop).result()
            return [ValueError("bad") if item == "bad" else item * 2 for item in items]

        batcher = MicroBatcher(answer, max_batch=8, max_wait_ms=0, max_queue=1)
        first = asyncio.create_task(batcher.submit([1]))
        await asyncio.sleep(0.05)  # the worker holds the first batch
        second = asyncio.create_task(batcher.submit([2, 3]))
        third = asyncio.create_task(batcher.submit(["bad"]))
        await asyncio.sleep(0.05)
        assert third.done() and isinstance(third.exception(), Overloaded)
        release.set()
        assert await first == [2] and await second == [4, 6]
        with pytest.raises(ValueError):
            await batcher.submit(["bad"])
        assert await batcher.submit([5]) == [10]

    asyncio.run(scenario())


def test_rows_from_many_requests_go_in_one_batch():
    async def scenario() -> list[int]:
        sizes: list[int] = []
        batcher = MicroBatcher(lambda items: items, max_batch=64, max_wait_ms=100, max_queue=64,
                               on_batch=lambda rows, queued: sizes.append(rows))
        answers = await asyncio.gather(*(batcher.submit([index, index]) for index in range(10)))
        assert answers == [[index, index] for index in range(10)]
        return sizes

    assert asyncio.run(scenario()) == [20]


# --- metrics, health and the command ------------------------------------------------------------------------------

def test_metrics_count_requests_latency_and_batches(client: TestClient):
    post(client, "/v1/predict", {"model": "lora", "inputs": ["x"]})
    text = client.get("/metrics").text
    assert 'tunelab_requests_total{endpoint="/v1/predict",model="lora",status="200"}' in text
    assert "tunelab_request_seconds_bucket" in text and "tunelab_batch_rows_bucket" in text
    assert "tunelab_queue_depth" in text
    assert client.get("/health").json()["status"] == "ok" and client.get("/ready").status_code == 200


def test_the_command_refuses_an_open_server_on_a_public_address(bert_lora, monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture):
    monkeypatch.delenv("TUNELAB_API_KEYS", raising=False)
    code, _, err = run_main(["serve", str(bert_lora.path), "--host", "0.0.0.0"], monkeypatch, capsys)
    assert code == 2 and err.startswith("error: --host 0.0.0.0 is reachable from other machines: give --api-keys"), \
        err
    code, _, err = run_main(["serve"], monkeypatch, capsys)
    assert code == 2 and err.startswith("error: nothing to serve"), err
    code, _, err = run_main(["serve", "/nowhere/run"], monkeypatch, capsys)
    assert code == 2 and err.count("\n") == 1, err


def test_logits_equal_in_every_row_whatever_the_batch_holds(models: ServedModels):
    pool: SentencePool = models.get("lora").engine
    alone = [pool.answer([(text, "lora")])[0]["probabilities"] for text in TEXTS]
    mixed = pool.answer([(TEXTS[0], "ia3"), (TEXTS[0], "lora"), (TEXTS[1], "lora3"), (TEXTS[1], "lora"),
                         (TEXTS[2], "lora")])
    for want, got in zip(alone, [mixed[1], mixed[3], mixed[4]], strict=True):
        np.testing.assert_allclose(list(got["probabilities"].values()), list(want.values()), atol=1e-5)


def test_a_dpo_policy_is_served_for_completions(tiny_llama_lm: Path, tmp_path: Path):
    import pandas as pd
    from test_rlhf_dpo import PAIRS
    from tiny import sentiment_frame

    from tunelab.rlhf.dpo import DPOSettings, train_dpo
    from tunelab.rlhf.sft import train_sft

    text = pd.DataFrame({"text": sentiment_frame(24)["text"]})
    sft = build_config({"model": str(tiny_llama_lm), "task": "generation", "strategy": {"name": "lora"},
                        "output": str(tmp_path / "sft"), "training": {"max_length": 16, "epochs": 1}})
    train_sft(sft, text, text.iloc[:4], progress=False)
    train_dpo(DPOSettings(epochs=1, batch_size=4, max_length=16), tmp_path / "sft", PAIRS, PAIRS.iloc[:4],
              tmp_path / "dpo", progress=False)
    served = ServedModels("fp32")
    [policy] = served.load([str(tmp_path / "dpo")])
    assert (policy.name, policy.task, policy.strategy, policy.base) == ("dpo", "generation", "dpo",
                                                                        str(tiny_llama_lm))
    with TestClient(create_app(served)) as client:
        body = client.post("/v1/completions", json={"model": "dpo", "prompt": "a good", "max_tokens": 5,
                                                    "temperature": 0}).json()
    expected = api.generate_text(tmp_path / "dpo", "a good", 5, continuation=True)
    assert body["choices"][0]["text"].strip() == expected
