"""Black-box tuning: every call counted exactly once (cache, retries, a kill and a resume), the budget never passed,
each endpoint scoring as the model in this process does, and a bbt run written whole."""

from __future__ import annotations

import json
import random
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from tunelab import api, build_config
from tunelab.api import load_language_model
from tunelab.blackbox import endpoints
from tunelab.blackbox.bbt import BBTSettings, BlackBoxTuning
from tunelab.blackbox.endpoints import Budget, BudgetSpent, Endpoint, InProcess, OpenAICompatible, TunelabServer
from tunelab.blackbox.found import FoundPrompt
from tunelab.blackbox.mezo import MeZOSettings
from tunelab.blackbox.prompts import LabelPrompts, checked_template
from tunelab.blackbox.run import run_blackbox
from tunelab.blackbox.search import Candidate, PromptSearch, SearchSettings
from tunelab.errors import TunelabError
from tunelab.serve.app import create_app
from tunelab.serve.models import ServedModels

HIDDEN = 4


class Counting(Endpoint):
    """A fake model: a label word's score falls with the soft prompt's distance from a target, so a search can
    find it; its words' embeddings are zeros; every call is recorded, and the call numbered `fail_at` raises (a
    kill)."""

    soft_prompts = True
    hidden_size = HIDDEN
    embedding_std = 0.05

    def __init__(self, budget: Budget, fail_at: int | None = None):
        super().__init__(budget)
        self.made, self.fail_at = 0, fail_at
        self.target = np.linspace(-0.02, 0.02, 2 * HIDDEN).reshape(2, HIDDEN)

    def _call(self) -> None:
        self.made += 1
        if self.fail_at is not None and self.made == self.fail_at:
            raise KeyboardInterrupt

    def _token_embeddings(self, text):
        self._call()
        return np.zeros((len(text.split()), self.hidden_size), dtype=np.float32), len(text.split()), 0

    def _score(self, prompts, continuations, soft_prompt, soft_lengths=None):
        self._call()
        distance = 0.0 if soft_prompt is None else float(((soft_prompt - self.target) ** 2).sum())
        scores = np.array([[-distance * 100 if index % 2 == label else -1.0 for index in range(len(continuations))]
                           for label, _ in zip([0, 1] * len(prompts), prompts, strict=False)])
        return scores, 10 * len(prompts), 0

    def _generate(self, prompt, samples, max_tokens, temperature, seed):
        self.made += 1
        return [f"say word {index}" for index in range(samples)], 10, 3 * samples


PROMPTS = LabelPrompts.build("{text} It was {label}", None, ["negative", "positive"])  # two words: one block of 2
ROWS = pd.DataFrame({"text": ["a", "b", "c", "d"], "label": ["negative", "positive"] * 2})
SETTINGS = BBTSettings(intrinsic_dim=6, population=4, sigma=1.0)


def test_cached_questions_are_free_and_the_budget_is_never_passed():
    endpoint = Counting(Budget(calls=3))
    for _ in range(2):
        endpoint.score(["x"], [" a", " b"])
    assert (endpoint.usage.calls, endpoint.usage.cached, endpoint.made) == (1, 1, 1)
    endpoint.score(["y"], [" a"])
    endpoint.score(["z"], [" a"])
    with pytest.raises(BudgetSpent, match="the budget of 3 calls is spent"):
        endpoint.score(["w"], [" a"])
    assert endpoint.usage.calls == endpoint.made == 3


def test_a_search_stops_within_its_budget_and_counts_every_call(tmp_path: Path):
    endpoint = Counting(Budget(calls=23))
    state = BlackBoxTuning(endpoint, PROMPTS, SETTINGS).search(ROWS, ROWS, tmp_path / "state.pkl")
    assert endpoint.usage.calls == endpoint.made <= 23
    assert endpoint.usage.calls > 23 - (SETTINGS.population + 1)  # no room left for another generation
    assert state.curve[-1]["calls"] == endpoint.usage.calls and state.generation == len(state.curve)
    assert [point["train_loss"] for point in state.curve] == sorted(
        [point["train_loss"] for point in state.curve], reverse=True)


def test_a_killed_search_resumes_and_counts_each_call_once(tmp_path: Path):
    ledger, checkpoint = tmp_path / "calls.json", tmp_path / "state.pkl"
    first = Counting(Budget(calls=40), fail_at=13)  # dies inside the third generation (after 2 + 2 x 5 calls)
    first.keep_ledger(ledger)
    with pytest.raises(KeyboardInterrupt):
        BlackBoxTuning(first, PROMPTS, SETTINGS).search(ROWS, ROWS, checkpoint)
    assert json.loads(ledger.read_text())["calls"] == first.made - 1 == 12  # the failing call never answered
    second = Counting(Budget(calls=40))
    second.keep_ledger(ledger)
    state = BlackBoxTuning(second, PROMPTS, SETTINGS).search(ROWS, ROWS, checkpoint)
    assert second.usage.calls == 12 + second.made <= 40  # the calls before the kill, once, and the new ones
    assert state.curve[0]["generation"] == 1 and state.generation == len(state.curve)


class FarTemplate(Counting):
    """The template alone scores as a prompt far from the target would: a search can beat it."""

    def _score(self, prompts, continuations, soft_prompt, soft_lengths=None):
        return super()._score(prompts, continuations, self.target + 0.3 if soft_prompt is None else soft_prompt)


def test_bbt_returns_the_template_alone_unless_a_candidate_beats_it_on_validation(tmp_path: Path):
    for endpoint, beaten in ((Counting(Budget(calls=23)), False), (FarTemplate(Budget(calls=23)), True)):
        bbt = BlackBoxTuning(endpoint, PROMPTS, SETTINGS)
        state = bbt.search(ROWS, ROWS, tmp_path / f"{beaten}.pkl")
        assert state.result_z is not None and (state.result > state.template) == beaten
        folder = tmp_path / str(beaten)
        folder.mkdir()
        record = bbt.save(state, folder)
        _, soft = bbt.asked(state, ROWS)
        if beaten:
            assert state.found is state.result_z and state.best_validation == state.result[0]
            np.testing.assert_array_equal(soft[0], bbt.soft_prompt(state.result_z)[0])
            assert record["soft_prompt"] == "soft_prompt.safetensors" and (folder / record["soft_prompt"]).exists()
            assert record["soft_lengths"] == [2]
        else:  # the template alone scores every shot right, at the lowest loss a prompt can reach here
            assert state.found is None and soft is None and state.best_validation == state.template[0] == 1.0
            assert "soft_prompt" not in record and not any(folder.iterdir())


class Recording(Counting):
    """Keeps the soft prompt of every call."""

    def __init__(self, budget: Budget):
        super().__init__(budget)
        self.soft_prompts_asked: list[np.ndarray | None] = []

    def _score(self, prompts, continuations, soft_prompt, soft_lengths=None):
        self.soft_prompts_asked.append(soft_prompt)
        return super()._score(prompts, continuations, soft_prompt)


def test_bbt_scores_cma_es_mean_on_validation_after_each_generation(tmp_path: Path):
    # the words' embeddings and the template alone, then two generations
    endpoint = Recording(Budget(calls=2 + 2 * (SETTINGS.population + 1)))
    bbt = BlackBoxTuning(endpoint, PROMPTS, SETTINGS)
    state = bbt.search(ROWS, ROWS, tmp_path / "state.pkl")
    asked = endpoint.soft_prompts_asked
    assert state.generation == 2 and len(asked) == endpoint.usage.calls - 1 == 11 and asked[0] is None
    np.testing.assert_allclose(asked[-1], bbt.soft_prompt(state.strategy.mean)[0], rtol=1e-6)
    means, candidates = [asked[5], asked[10]], asked[1:5] + asked[6:10]
    assert not any(np.allclose(mean, candidate) for mean in means for candidate in candidates)
    np.testing.assert_allclose(bbt.soft_prompt(state.result_z)[0], asked[10], rtol=1e-6)  # the last half: 1 mean


@pytest.mark.parametrize(("generations", "average", "averaged"), [(3, 10, 2), (5, 2, 2), (6, 10, 3)])
def test_bbt_runs_its_generations_and_keeps_the_average_of_the_last_half_of_its_means(
        tmp_path: Path, generations: int, average: int, averaged: int):
    endpoint = Recording(Budget(calls=200))
    means = []
    settings = BBTSettings(intrinsic_dim=6, population=4, sigma=1.0, generations=generations, average=average)
    bbt = BlackBoxTuning(endpoint, PROMPTS, settings)
    state = bbt.search(ROWS, ROWS, tmp_path / "state.pkl",
                       lambda state: means.append(np.array(state.strategy.result.xfavorite)))
    assert state.generation == len(means) == generations and endpoint.usage.calls == 2 + generations * 5
    np.testing.assert_allclose(state.result_z, np.mean(means[-averaged:], axis=0))
    np.testing.assert_allclose(endpoint.soft_prompts_asked[-1], bbt.soft_prompt(state.result_z)[0], rtol=1e-6)
    assert len(state.means) == min(average, generations)
    again = bbt.search(ROWS, ROWS, tmp_path / "state.pkl")  # done: a rerun resumes and asks nothing more
    assert again.generation == generations and endpoint.usage.calls == 2 + generations * 5


def test_bbt_searches_around_the_templates_words_at_the_embeddings_scale():
    class Wide(Counting):
        hidden_size, embedding_std = 64, 0.1

        def _token_embeddings(self, text):
            words = len(text.split())
            return np.arange(words * 64, dtype=np.float32).reshape(words, 64), words, 0

    prompts = LabelPrompts.build("Review: {text} All in all, it was {label}", None, ["negative", "positive"])
    settings = BBTSettings(intrinsic_dim=20)
    bbt = BlackBoxTuning(Wide(Budget()), prompts, settings)
    assert bbt.softened.soft_words == ["Review:", "All in all, it was"]
    bbt.begin_at([bbt.endpoint.token_embeddings(words) for words in bbt.softened.soft_words])
    start = bbt.soft_prompt(np.zeros(settings.intrinsic_dim))  # z = 0: exactly the words' embeddings
    assert [block.shape for block in start] == [(1, 64), (5, 64)]
    np.testing.assert_array_equal(start[1], np.arange(5 * 64).reshape(5, 64))
    moved = bbt.soft_prompt(np.ones(settings.intrinsic_dim))  # a z of unit entries moves each by about the scale
    assert np.concatenate([after - before for after, before in zip(moved, start, strict=True)]).std() == \
        pytest.approx(0.1, rel=0.1)

    class Unscaled(Counting):
        embedding_std = None

    with pytest.raises(TunelabError, match="does not say its embeddings' scale"):
        BlackBoxTuning(Unscaled(Budget()), PROMPTS, settings)
    wordless = LabelPrompts.build("{text} {label}", None, ["negative", "positive"])
    with pytest.raises(TunelabError, match="this template has none: give --template with words"):
        BlackBoxTuning(Counting(Budget()), wordless, settings)


def test_top_logprob_scoring_asks_each_prompt_alone_and_reads_first_tokens():
    asked: list[dict] = []

    def server(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        asked.append(body)
        top = {" pos": -0.5, " neg": -1.5, " the": -2.0} if "good" in body["prompt"] else {" neg": -0.2, " pos": -3.0}
        return httpx.Response(200, json={"choices": [{"index": 0, "text": " x", "logprobs": {"top_logprobs": [top]}}],
                                         "usage": {"prompt_tokens": 4, "completion_tokens": 1}})

    endpoint = OpenAICompatible("http://server", "m", None, client=httpx.Client(transport=httpx.MockTransport(server)),
                                scoring="top")
    scores = endpoint.score(["good film", "dull film"], [" positive", " negative", " other"])
    # " positive" starts with the token " pos"; " other" is not among the top entries: the lowest listed
    assert scores.tolist() == [[-0.5, -1.5, -2.0], [-3.0, -0.2, -3.0]]
    assert [body["prompt"] for body in asked] == ["good film", "dull film"]  # one prompt per request
    assert asked[0]["logprobs"] == 20 and asked[0]["max_tokens"] == 1 and "echo" not in asked[0]
    assert (endpoint.usage.calls, endpoint.usage.tokens_in, endpoint.usage.tokens_out) == (1, 8, 2)


def test_an_endpoint_without_soft_prompts_is_refused_before_any_call():
    endpoint = OpenAICompatible("http://127.0.0.1:9", "x", None)
    with pytest.raises(TunelabError, match="bbt searches soft prompts and .* takes none"):
        BlackBoxTuning(endpoint, PROMPTS, SETTINGS)
    assert endpoint.usage.calls == 0


def test_transient_failures_are_retried_and_counted(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(endpoints, "BACKOFF_S", 0.0)
    answers = iter([httpx.Response(503), httpx.Response(502),
                    httpx.Response(200, json={"data": [[{"logprob": -1.0}]], "usage": {"prompt_tokens": 3}})])
    transport = httpx.MockTransport(lambda request: next(answers) if request.url.path == "/v1/score" else
                                    httpx.Response(200, json={"hidden_size": 8}))
    endpoint = TunelabServer("http://server", "m", "key", client=httpx.Client(transport=transport))
    assert endpoint.score(["p"], [" a"]).tolist() == [[-1.0]]
    assert (endpoint.usage.calls, endpoint.usage.retries, endpoint.usage.tokens_in) == (1, 2, 3)
    refused = httpx.MockTransport(lambda request: httpx.Response(400, text="bad request") if
                                  request.url.path == "/v1/score" else httpx.Response(200, json={}))
    endpoint = TunelabServer("http://server", "m", None, client=httpx.Client(transport=refused))
    with pytest.raises(TunelabError, match="answered 400: bad request"):
        endpoint.score(["p"], [" a"])
    assert (endpoint.usage.calls, endpoint.usage.retries) == (0, 0)


@pytest.fixture(scope="module")
def tiny_lm(tiny_llama_lm: Path):
    return load_language_model(str(tiny_llama_lm))


def test_every_endpoint_scores_as_the_model_in_this_process(tiny_llama_lm: Path, tiny_lm):
    models = ServedModels("fp32")
    models.load_base(str(tiny_llama_lm))
    prompts, words = ["the film was", "a dull and long"], [" good", " bad", " very bad"]
    rng = np.random.default_rng(0)
    soft = rng.normal(0, 0.1, (3, tiny_lm[0].backbone.config.hidden_size))
    blocks = [rng.normal(0, 0.1, (length, tiny_lm[0].backbone.config.hidden_size)) for length in (2, 1)]
    pieced = [("", " the film", " was"), ("a", " dull and", " long")]
    local = InProcess(*tiny_lm)
    with TestClient(create_app(models)) as client:
        served = TunelabServer("http://testserver", str(tiny_llama_lm), None, client=client)
        assert served.hidden_size == local.hidden_size
        assert served.embedding_std == pytest.approx(local.embedding_std) and local.embedding_std > 0
        np.testing.assert_allclose(served.score(prompts, words), local.score(prompts, words), atol=1e-4)
        np.testing.assert_allclose(served.score(prompts, words, soft), local.score(prompts, words, soft), atol=1e-4)
        np.testing.assert_allclose(served.score(pieced, words, blocks), local.score(pieced, words, blocks), atol=1e-4)
        np.testing.assert_allclose(served.token_embeddings("the film"), local.token_embeddings("the film"),
                                   atol=1e-6)
        openai = OpenAICompatible("http://testserver", str(tiny_llama_lm), None, client=client)
        np.testing.assert_allclose(openai.score(prompts, words), local.score(prompts, words), atol=1e-4)
        written = local.generate("the film was", 2, 5, 0.0, 0)  # greedy: the same text through every endpoint
        assert len(written) == 2 and written[0] == written[1] and local.usage.tokens_out > 0
        assert served.generate("the film was", 2, 5, 0.0, 0) == openai.generate("the film was", 2, 5, 0.0, 0) == written
    for asked, given in ((prompts, soft), (pieced, blocks)):  # one token each: one forward per prompt
        single = local.score(asked, [" good", " bad"], given)
        np.testing.assert_allclose(single, local.score(asked, [" good", " bad", " very bad"], given)[:, :2],
                                   atol=1e-5)


def test_the_templates_words_as_their_own_embeddings_score_as_the_template(tiny_lm):
    """bbt's start (z = 0): the softened template with its words' embeddings is the template itself."""
    prompts = LabelPrompts.build("Review: {text}\nIn a word, it was {label}", None, ["negative", "positive"])
    softened = LabelPrompts(prompts.template.softened(), prompts.verbalizer)
    rows = pd.DataFrame({"text": ["a good film", "dull"], "label": ["positive", "negative"]})
    assert softened.prompts(rows) == [("", " a good film\n", ""), ("", " dull\n", "")]
    local = InProcess(*tiny_lm)
    words = [local.token_embeddings(text) for text in softened.soft_words]
    np.testing.assert_allclose(softened.ask(local, softened.prompts(rows), words),
                               prompts.ask(local, prompts.prompts(rows)), atol=1e-5)


def test_label_prompts_render_up_to_the_label_slot():
    prompts = LabelPrompts.build("Review: {text}\nSentiment: {label}", {"positive": "great, good", "negative": "bad"},
                                 ["negative", "positive"])
    assert prompts.prompts(pd.DataFrame({"text": ["fine"]})) == ["Review: fine\nSentiment:"]
    assert prompts.continuations == [" bad", " great", " good"] and prompts.owners.tolist() == [0, 1, 1]
    label = prompts.label_logprobs(np.log(np.array([[0.2, 0.3, 0.1]])))
    np.testing.assert_allclose(np.exp(label), [[0.2 / 0.6, 0.4 / 0.6]])
    with pytest.raises(TunelabError, match="the label slot must end the template"):
        LabelPrompts.build("{label}: {text}", None, ["a", "b"])


def test_a_bbt_run_is_written_whole_and_refuses_to_overwrite(tiny_lm, tiny_llama_lm: Path, sentiment_csv: Path,
                                                             tmp_path: Path):
    config = build_config({"model": str(tiny_llama_lm), "task": "classification", "strategy": {"name": "zero-shot"},
                           "data": {"source": str(sentiment_csv), "shots": 2}, "output": str(tmp_path / "bbt")})
    endpoint = InProcess(*tiny_lm)
    path, metrics = run_blackbox(config, endpoint, SETTINGS, budget=12)
    assert {file.name for file in path.iterdir()} == {"blackbox.yaml", "metrics.json", "resources.json",
                                                      "soft_prompt.safetensors", "search_curve.png", "manifest.json"}
    resources = json.loads((path / "resources.json").read_text())
    assert resources["search"]["calls"] == metrics["curve"][-1]["calls"] == 12  # words, template, 2 generations
    found = FoundPrompt(path)  # read back: the soft prompt in blocks where the template's words were
    assert [len(block) for block in found.soft_prompt] == found.record["soft_lengths"]
    assert api.evaluate(path)["accuracy"] == pytest.approx(metrics["test"]["accuracy"])  # as the search asked
    assert resources["evaluation"]["calls"] == 2 * 1  # 12 test rows, 32 per call: test and zero-shot
    assert 0 <= metrics["test"]["accuracy"] <= 1 and metrics["test_examples"] == 12
    assert metrics["learned"] == (metrics["test"]["accuracy"] > metrics["zero_shot"]["accuracy"])
    assert not (tmp_path / ".bbt.search").exists()
    with pytest.raises(TunelabError, match="already exists"):
        run_blackbox(config, InProcess(*tiny_lm), SETTINGS, budget=12)


def test_a_bbt_run_through_tunelab_serve_searches_as_in_this_process(tiny_lm, tiny_llama_lm: Path,
                                                                      sentiment_csv: Path, tmp_path: Path):
    models = ServedModels("fp32")
    models.load_base(str(tiny_llama_lm))
    runs = {}
    with TestClient(create_app(models)) as client:
        for name, endpoint in (("local", InProcess(*tiny_lm)),
                               ("served", TunelabServer("http://testserver", str(tiny_llama_lm), None, client=client))):
            config = build_config({"model": str(tiny_llama_lm), "task": "classification",
                                   "strategy": {"name": "zero-shot"}, "data": {"source": str(sentiment_csv),
                                                                               "shots": 2},
                                   "output": str(tmp_path / name)})
            runs[name] = run_blackbox(config, endpoint, SETTINGS, budget=12)
    (local, local_metrics), (served, served_metrics) = runs["local"], runs["served"]
    assert json.loads((served / "resources.json").read_text())["search"]["calls"] == 12
    assert served_metrics["curve"][-1]["train_loss"] == pytest.approx(local_metrics["curve"][-1]["train_loss"],
                                                                       abs=1e-4)
    assert FoundPrompt(served).record["soft_lengths"] == FoundPrompt(local).record["soft_lengths"]


def test_a_bbt_run_that_kept_the_template_reads_back_as_the_template_alone(sentiment_csv: Path, tmp_path: Path):
    config = build_config({"model": "smollm2", "task": "classification", "strategy": {"name": "zero-shot"},
                           "data": {"source": str(sentiment_csv), "shots": 2}, "output": str(tmp_path / "bbt")})
    path, metrics = run_blackbox(config, Counting(Budget()), SETTINGS, budget=23)  # the template alone is perfect
    assert "soft_prompt.safetensors" not in {file.name for file in path.iterdir()}
    assert metrics["test"]["accuracy"] == metrics["zero_shot"]["accuracy"] and not metrics["learned"]
    assert metrics["zero_shot"]["validation_accuracy"] == metrics["validation_accuracy"] == 1.0
    found = FoundPrompt(path)
    assert found.soft_prompt is None and found.record["embedding_std"] == Counting.embedding_std
    asked = Counting(Budget())
    assert [row["label"] for row in found.predict(["x", "y"], asked)] == ["negative", "positive"]
    assert asked.usage.calls == 1


def test_bad_blackbox_input_is_one_line(sentiment_csv: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture):
    from tiny import run_main

    base = ["blackbox", "--data", str(sentiment_csv), "--output", str(tmp_path / "out")]
    code, _, err = run_main([*base, "--method", "grips"], monkeypatch, capsys)
    assert code == 2 and err.startswith("error: unknown --method 'grips'; choose bbt"), err
    monkeypatch.delenv("NO_SUCH_KEY", raising=False)
    code, _, err = run_main([*base, "--endpoint", "http://127.0.0.1:9", "--api-key-env", "NO_SUCH_KEY"],
                            monkeypatch, capsys)
    assert code == 2 and "NO_SUCH_KEY: that environment variable is not set" in err, err
    code, _, err = run_main([*base, "--template", "{label} {text}"], monkeypatch, capsys)
    assert code == 2 and err.count("\n") == 1, err
    code, _, err = run_main([*base, "--patience", "5"], monkeypatch, capsys)
    assert code == 2 and err == "error: --patience is for search and mezo: bbt runs --generations and keeps the " \
        "average of its last means\n", err
    assert not (tmp_path / "out").exists()
    (tmp_path / "out").mkdir()
    code, _, err = run_main(base, monkeypatch, capsys)
    assert code == 2 and "already exists: choose another --output or pass --overwrite" in err, err


def test_a_run_that_found_nothing_better_than_its_template_says_so_and_what_to_try(
        tiny_llama_lm: Path, sentiment_csv: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture):
    from tiny import run_main

    found = {"method": "bbt", "shots": 2, "test_examples": 12, "generations": 1, "validation_accuracy": 0.75,
             "test": {"accuracy": 0.4}, "zero_shot": {"accuracy": 0.5, "validation_accuracy": 0.625}, "learned": False,
             "curve": [{"calls": 5}]}  # the search's calls (the evaluation's are counted apart)
    monkeypatch.setattr("tunelab.blackbox.run.run_blackbox", lambda *args, **kwargs: (tmp_path / "bbt", found))
    code, out, _ = run_main(["blackbox", "--model", str(tiny_llama_lm), "--data", str(sentiment_csv), "--shots", "2",
                             "--budget", "8", "--output", str(tmp_path / "bbt")], monkeypatch, capsys)
    assert code == 0 and "0.625" in out  # the template's validation accuracy, beside what was found
    assert ("warning: what was found scores 0.400 on the test split, no better than the template alone (0.500), "
            "after 5 of 8 calls: try more --generations, more --shots, or another --method"
            in " ".join(out.split()))


def test_a_search_in_a_log_prints_a_line_a_generation(tiny_llama_lm: Path, sentiment_csv: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture):
    """Captured output is not a terminal, as under nohup: a progress bar would draw nothing there for hours."""
    from tiny import run_main

    code, out, _ = run_main(["blackbox", "--model", str(tiny_llama_lm), "--data", str(sentiment_csv), "--shots", "2",
                             "--budget", "12", "--intrinsic-dim", "6", "--population", "4",
                             "--output", str(tmp_path / "bbt")], monkeypatch, capsys)
    lines = [line for line in out.splitlines() if line.startswith("generation ")]
    assert code == 0 and len(lines) == 2  # budget 12: the words, the template, then two generations of 4 + 1
    assert lines[0].startswith("generation 1: 7/12 calls, validation accuracy 0.") and \
        lines[1].startswith("generation 2: 12/12 calls, validation accuracy 0.")
    code, out, _ = run_main(["blackbox", "--model", str(tiny_llama_lm), "--data", str(sentiment_csv), "--shots", "2",
                             "--budget", "12", "--intrinsic-dim", "6", "--population", "4", "--generations", "1",
                             "--output", str(tmp_path / "one")], monkeypatch, capsys)
    assert code == 0 and [line[:22] for line in out.splitlines() if line.startswith("generation ")] == \
        ["generation 1: 7/12 cal"]  # --generations ends the search before the budget


SHOTS = pd.DataFrame({"text": ["good fine", "bad awful", "great nice", "poor nasty", "lovely superb", "ugly bad"],
                      "label": ["positive", "negative"] * 3})


def test_search_edits_keep_the_placeholders_and_never_score_a_shot_it_shows():
    search = PromptSearch(Counting(Budget()), LabelPrompts.build("Review: {text} Overall, it was {label}", None,
                                                                 ["negative", "positive"]), SearchSettings())
    search.train = SHOTS
    rng = random.Random(0)
    candidate = Candidate("", "Review: {text} Overall, it was {label}", ())
    for _ in range(60):
        candidate = search.edit(candidate, rng)
        template = checked_template(candidate.template)  # still a template a black-box method can ask
        assert template.fields == ["text"] and len(candidate.demonstrations) <= 4
        assert len(set(candidate.demonstrations)) == len(candidate.demonstrations)
    shown = Candidate("Answer with one word: negative, positive.", "{text} It was {label}", (1, 0))
    assert search.render(shown, SHOTS.iloc[[2]]) == [
        "Answer with one word: negative, positive.\n\nbad awful It was negative\n\ngood fine It was positive\n\n"
        "great nice It was"]
    asked: list[list[str]] = []
    search.endpoint._score = lambda prompts, words, soft, lengths: (asked.append(prompts) or
                                                                    np.zeros((len(prompts), 2)), 0, 0)
    search.on_training(shown)
    assert len(asked[0]) == 4 and not any(prompt.endswith(("good fine It was", "bad awful It was"))
                                          for prompt in asked[0])


class Instructed(Counting):
    """A fake model that answers right only under the instruction "Say the magic word." (which it proposes when
    asked to write instructions), and 50/50 otherwise: the prompt search can find it only through a proposal."""

    def _score(self, prompts, continuations, soft_prompt, soft_lengths=None):
        self.made += 1
        right = [0 if any(word in prompt.split("\n")[-1] for word in ("bad", "poor")) else 1 for prompt in prompts]
        scores = [[0.0 if index == label else -5.0 for index in range(len(continuations))]
                  if prompt.startswith("Say the magic word.") else [-1.0] * len(continuations)
                  for prompt, label in zip(prompts, right, strict=True)]
        return np.array(scores), 10 * len(prompts), 0

    def _generate(self, prompt, samples, max_tokens, temperature, seed):
        self.made += 1
        self.generated = getattr(self, "generated", 0) + 1
        assert prompt.endswith("The instruction was to") and "Input: " in prompt and "Output: " in prompt
        return ["say the magic word\nand more", ""][:samples], 10, 6


def test_proposed_instructions_are_tried_and_every_call_counted(tmp_path: Path):
    endpoint = Instructed(Budget(calls=30))
    settings = SearchSettings(demonstrations=0, candidates=1, patience=0, proposals=2)
    search = PromptSearch(endpoint, LabelPrompts.build("{text} It was {label}", None, ["negative", "positive"]),
                          settings)
    state = search.search(SHOTS, SHOTS, tmp_path / "state.pkl")
    assert state.best.instruction == "Say the magic word." and state.best_validation == 1.0
    assert endpoint.usage.calls == endpoint.made <= 30  # generation calls counted with the scoring ones
    assert endpoint.usage.calls > 30 - settings.calls_per_round  # stopped for want of room, not before
    assert endpoint.generated == state.generation and endpoint.usage.tokens_out == 6 * endpoint.generated


def test_a_search_run_finds_a_prompt_within_its_budget(tiny_lm, tiny_llama_lm: Path, sentiment_csv: Path,
                                                       tmp_path: Path):
    config = build_config({"model": str(tiny_llama_lm), "task": "classification", "strategy": {"name": "zero-shot"},
                           "data": {"source": str(sentiment_csv), "shots": 3},
                           "prompt": {"template": "{text} Overall, it was {label}"}, "output": str(tmp_path / "s")})
    endpoint = InProcess(*tiny_lm)
    path, metrics = run_blackbox(config, endpoint, SearchSettings(candidates=3, patience=0), budget=14)
    resources = json.loads((path / "resources.json").read_text())
    assert resources["search"]["calls"] <= 14 and metrics["method"] == "search"
    assert metrics["curve"][-1]["calls"] == resources["search"]["calls"] - 0  # every call of the search on the curve
    assert "{text}" in (path / "prompt.txt").read_text() and (path / "search_curve.png").exists()
    assert metrics["validation_accuracy"] >= 0 and 0 <= metrics["test"]["accuracy"] <= 1


def test_a_black_box_run_predicts_and_evaluates_as_its_search_found(tiny_lm, tiny_llama_lm: Path,
                                                                      sentiment_csv: Path, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch,
                                                                      capsys: pytest.CaptureFixture):
    from tiny import run_main

    mezo = MeZOSettings(virtual_tokens=2, eval_every=2, patience=0)
    for method, settings in (("bbt", SETTINGS), ("search", SearchSettings(candidates=2, patience=0)), ("mezo", mezo)):
        config = build_config({"model": str(tiny_llama_lm), "task": "classification",
                               "strategy": {"name": "zero-shot"}, "data": {"source": str(sentiment_csv), "shots": 2},
                               "output": str(tmp_path / method)})
        path, metrics = run_blackbox(config, InProcess(*tiny_lm), settings, budget=8)
        assert api.evaluate(path)["accuracy"] == pytest.approx(metrics["test"]["accuracy"])  # the same test split
        records = api.predict(path, ["good great fine nice"])
        assert records[0]["label"] in ("negative", "positive") and sum(records[0]["probabilities"].values()) == \
            pytest.approx(1.0)
        code, out, _ = run_main(["predict", str(path), "good great", "--json"], monkeypatch, capsys)
        assert code == 0 and json.loads(out.splitlines()[0])["label"] in ("negative", "positive")
    code, out, _ = run_main(["summary", str(tmp_path / "bbt"), str(tmp_path / "search")], monkeypatch, capsys)
    assert code == 0 and "black-box runs" in out and "search" in out and "bbt" in out
    models = ServedModels("fp32")  # served, each answers as `predict` does in this process
    models.load([f"{method}={tmp_path / method}" for method in ("bbt", "search", "mezo")])
    with TestClient(create_app(models)) as client:
        for method in ("bbt", "search", "mezo"):
            answer = client.post("/v1/predict", json={"model": method, "inputs": ["good great", "awful bad"]})
            assert answer.status_code == 200, answer.text
            served, local = answer.json()["data"], api.predict(tmp_path / method, ["good great", "awful bad"])
            assert [row["label"] for row in served] == [row["label"] for row in local]
            for row, expected in zip(served, local, strict=True):
                assert row["probabilities"] == pytest.approx(expected["probabilities"], abs=1e-5)
        assert client.get("/v1/models/search").json()["strategy"] == "blackbox search"

