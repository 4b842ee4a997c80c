"""Few-shot composition (LoraHub): weights for other tasks' LoRA updates found on K examples of a new task, a head
fitted on them, written as an ordinary lora run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from sklearn.linear_model import LogisticRegression
from test_merge import lora_updates
from tiny import TrainedRun, png_colours, run_main, sentiment_frame, train_recording, write_table

from tunelab import api, build_config
from tunelab.compose.hub import HubSearch, compose_hub, set_head
from tunelab.errors import TunelabError
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
    assert png_colours(composed[0] / "search_curve.png") > 3  # the search as a picture, in colour


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
                           "runs, or of pet runs tuned with lora"),
    (["{lora}", "{three}", "--budget", "1"], "--budget is the number of weight settings tried: at least 2, not 1"),
    (["{lora}", "{three}", "--shots", "40"], "only"),
    (["{lora}", "{missing}"], "{missing} is not a tunelab run directory"),
    (["{lora}", "{pet}"], "the runs mix head-based lora and prompt-based pet runs: compose runs of one kind"),
])
def test_bad_hub_input_is_one_line_and_writes_nothing(
        arguments: list[str], message: str, bert_lora: TrainedRun, bert_lora_three: TrainedRun,
        bert_full: TrainedRun, pet_sources: list[TrainedRun], new_task: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture):
    names = {"lora": bert_lora.path, "three": bert_lora_three.path, "full": bert_full.path,
             "missing": tmp_path / "missing", "pet": pet_sources[0].path}
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


def pet_lora(model: Path, data: Path, output: Path) -> TrainedRun:
    config = build_config({"model": str(model), "data": {"source": str(data)}, "output": str(output),
                           "strategy": {"name": "pet", "options": {"tune": "lora", "tune_options": {"r": 4}}},
                           "prompt": {"template": "{text} It was {label}"},
                           "training": {"max_length": 24, "batch_size": 8, "epochs": 2, "learning_rate": 2e-2}})
    return train_recording(config)


@pytest.fixture(scope="module")
def pet_sources(tiny_llama_lm: Path, sentiment_csv: Path, three_labels_csv: Path,
                tmp_path_factory: pytest.TempPathFactory) -> list[TrainedRun]:
    folder = tmp_path_factory.mktemp("pet")
    return [pet_lora(tiny_llama_lm, sentiment_csv, folder / "two"), pet_lora(tiny_llama_lm, three_labels_csv,
                                                                             folder / "three")]


def test_prompt_based_sources_compose_without_a_head(pet_sources: list[TrainedRun], new_task: Path, tmp_path: Path):
    path, metrics = compose_hub([str(run.path) for run in pet_sources], {"source": str(new_task)}, tmp_path / "hub",
                                shots=8, search=HubSearch(budget=8), prompt={"template": "{text} It was {label}"})
    config = yaml.safe_load((path / "config.yaml").read_text())
    assert config["strategy"]["name"] == "pet" and config["strategy"]["options"]["tune"] == "lora"
    assert config["strategy"]["options"]["tune_options"]["r"] == 8  # two rank-4 sources side by side
    weights = list(metrics["hub"]["weights"].values())
    first, second = (lora_updates(run.path) for run in pet_sources)
    for module, update in lora_updates(path).items():
        torch.testing.assert_close(update, weights[0] * first[module] + weights[1] * second[module], atol=1e-5,
                                   rtol=0)
    assert api.evaluate(path, precision="fp32")["accuracy"] == pytest.approx(metrics["test"]["accuracy"], abs=1e-6)


def test_a_template_for_head_based_sources_is_refused(bert_lora: TrainedRun, bert_lora_three: TrainedRun,
                                                      new_task: Path, tmp_path: Path):
    with pytest.raises(TunelabError, match="--template and --verbalizer are for prompt-based sources"):
        compose_hub([str(bert_lora.path), str(bert_lora_three.path)], {"source": str(new_task)}, tmp_path / "hub",
                    prompt={"template": "{text} It was {label}"})
    assert not (tmp_path / "hub").exists()
