"""Few-shot composition (LoraHub): weights for other tasks' LoRA updates found on K examples of a new task, a head
fitted on them, written as an ordinary lora run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from test_merge import lora_updates
from tiny import TrainedRun, run_main, sentiment_frame, write_table

from tunelab import api
from tunelab.compose.hub import HubSearch, compose_hub, set_head
from tunelab.tasks.classification import SequenceClassifier


@pytest.fixture(scope="module")
def new_task(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """200 rows of the two-label task, drawn with another seed: 150 train, 20 validation, 30 test."""
    return write_table(sentiment_frame(200, seed=7), tmp_path_factory.mktemp("new") / "new.csv")


@pytest.fixture(scope="module")
def composed(bert_lora: TrainedRun, bert_lora_three: TrainedRun, new_task: Path,
             tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    return compose_hub([f"two={bert_lora.path}", f"three={bert_lora_three.path}"], {"source": str(new_task)},
                       tmp_path_factory.mktemp("hub") / "hub", shots=8, search=HubSearch(budget=12))


def test_the_composed_run_is_the_weighted_sum_of_the_sources_and_reloads(composed: tuple, bert_lora: TrainedRun,
                                                                        bert_lora_three: TrainedRun):
    path, metrics = composed
    weights = metrics["hub"]["weights"]
    first, second = lora_updates(bert_lora.path), lora_updates(bert_lora_three.path)
    for module, update in lora_updates(path).items():
        torch.testing.assert_close(update, weights["two"] * first[module] + weights["three"] * second[module],
                                   atol=1e-5, rtol=0)
    assert metrics["train_examples"] == 16 and metrics["validation_examples"] == 16
    scores = api.evaluate(path, precision="fp32")
    assert scores["accuracy"] == pytest.approx(metrics["test"]["accuracy"], abs=1e-6)
    assert set(metrics["hub"]["alone"]) == {"base_and_head", "two", "three"}


def test_the_search_starts_at_zero_and_keeps_the_best_it_saw(composed: tuple):
    _, metrics = composed
    curve = metrics["hub"]["curve"]
    assert curve[0]["weights"] == [0.0, 0.0] and 12 <= len(curve) < 12 + 10  # whole CMA-ES generations
    bests = [point["best"] for point in curve]
    assert bests == sorted(bests, reverse=True) and bests[-1] == min(point["objective"] for point in curve)
    chosen = min(curve, key=lambda point: point["objective"])["weights"]
    assert list(metrics["hub"]["weights"].values()) == pytest.approx(chosen)
    assert all(abs(weight) <= 1.5 for point in curve for weight in point["weights"])


@pytest.mark.parametrize("labels", [2, 3])
def test_a_fitted_logistic_regression_becomes_the_linear_head(labels: int, tiny_bert: Path):
    from transformers import AutoModel

    rng = np.random.default_rng(0)
    features, targets = rng.normal(size=(30, 32)).astype(np.float32), np.arange(30) % labels
    regression = LogisticRegression(max_iter=2000).fit(features, targets)
    model = SequenceClassifier(AutoModel.from_pretrained(tiny_bert), labels, "mean").eval()
    set_head(model, regression, labels)
    logits = model(features=torch.from_numpy(features)).logits
    np.testing.assert_allclose(torch.softmax(logits, -1).detach().numpy(), regression.predict_proba(features),
                               atol=1e-5)


@pytest.mark.parametrize(("arguments", "message"), [
    (["{lora}"], "composition needs at least two source runs"),
    (["{lora}", "{full}"], "{full} is a full classification run: composition weighs the updates of head-based lora "
                           "runs"),
    (["{lora}", "{three}", "--budget", "1"], "--budget is the number of weight settings tried: at least 2, not 1"),
    (["{lora}", "{three}", "--shots", "40"], "only"),
    (["{lora}", "{missing}"], "{missing} is not a tunelab run directory"),
])
def test_bad_hub_input_is_one_line_and_writes_nothing(
        arguments: list[str], message: str, bert_lora: TrainedRun, bert_lora_three: TrainedRun,
        bert_full: TrainedRun, new_task: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture):
    names = {"lora": bert_lora.path, "three": bert_lora_three.path, "full": bert_full.path,
             "missing": tmp_path / "missing"}
    output = tmp_path / "hub"
    code, _, err = run_main(["compose", "hub", *(argument.format(**names) for argument in arguments), "--data",
                             str(new_task), "--output", str(output)], monkeypatch, capsys)
    assert code == 2 and message.format(**names) in err and err.startswith("error: "), err
    assert len(err.strip().splitlines()) == 1 and not output.exists()


def test_the_cli_prints_the_composed_run_beside_each_source(bert_lora: TrainedRun, bert_lora_three: TrainedRun,
                                                            new_task: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture):
    output = tmp_path / "hub"
    code, out, err = run_main(["compose", "hub", str(bert_lora.path), str(bert_lora_three.path), "--data",
                               str(new_task), "--shots", "4", "--budget", "4", "--output", str(output)],
                              monkeypatch, capsys)
    assert code == 0, err
    assert all(word in out for word in ("composed", "base model", "lora alone", "lora-three alone"))
    assert json.loads((output / "metrics.json").read_text())["hub"]["budget"] == 4
