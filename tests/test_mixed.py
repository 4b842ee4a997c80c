"""Mixed-task batches: rows naming different tasks of a bundle answered in one forward, each as its own run would."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
from tiny import TrainedRun, run_main, tiny_config, train_recording

from tunelab import api
from tunelab.compose.bundle import make_bundle
from tunelab.compose.mixed import MixedPredictor
from tunelab.errors import TunelabError

TEXTS = ["good great fine", "awful bad dull", "table window paper", "lovely nice river", "poor chair ugly",
         "superb excellent wonderful good", "bad", "cloud street garden nasty"]


@pytest.fixture(scope="module")
def bert_prompt_tuning(tiny_bert: Path, sentiment_csv: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainedRun:
    return train_recording(tiny_config(tiny_bert, sentiment_csv, tmp_path_factory.mktemp("runs") / "pt",
                                       "prompt-tuning", epochs=1))


@pytest.fixture(scope="module")
def runs(bert_lora: TrainedRun, bert_lora_three: TrainedRun, bert_ia3: TrainedRun, bert_ia3_three: TrainedRun,
         bert_adapter_three: TrainedRun, bert_probe: TrainedRun, bert_full: TrainedRun, bert_ratings: TrainedRun,
         bert_prompt_tuning: TrainedRun) -> dict[str, Path]:
    """Nine tasks: two LoRAs (ranks 8 and 4), two (IA)^3, a bottleneck adapter, a probe and a regression on the
    shared base; a full fine-tune and a prompt tuning in their own sub-batches; heads of 1, 2 and 3 outputs."""
    return {"lora": bert_lora.path, "lora3": bert_lora_three.path, "ia3": bert_ia3.path, "ia3-3": bert_ia3_three.path,
            "adapter3": bert_adapter_three.path, "probe": bert_probe.path, "full": bert_full.path,
            "ratings": bert_ratings.path, "prompt": bert_prompt_tuning.path}


@pytest.fixture(scope="module")
def bundle(runs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bundle([f"{name}={path}" for name, path in runs.items()], tmp_path_factory.mktemp("b") / "all").path


def single_logits(run: Path, texts: list[str]) -> np.ndarray:
    return api.load_predictor(run).logits(texts)


def test_every_row_of_a_mixed_batch_equals_its_single_task_forward(bundle: Path, runs: dict[str, Path]):
    mixed = MixedPredictor(bundle)
    assert set(mixed.shared.index) == {"lora", "lora3", "ia3", "ia3-3", "adapter3", "probe", "ratings"}
    assert set(mixed.separate) == {"full", "prompt"}
    names = list(runs)
    tasks = [names[row % len(names)] for row in range(3 * len(names))]  # every task, interleaved
    texts = [TEXTS[row % len(TEXTS)] for row in range(len(tasks))]
    answers = mixed.logits(texts, tasks, batch_size=8)
    for name, run in runs.items():
        rows = [row for row, task in enumerate(tasks) if task == name]
        expected = single_logits(run, [texts[row] for row in rows])
        np.testing.assert_allclose(np.stack([answers[row] for row in rows]), expected, atol=1e-5, rtol=0)
    assert {answers[row].shape for row in range(len(tasks))} == {(1,), (2,), (3,)}


def test_a_row_takes_its_own_tasks_delta_not_the_base(bundle: Path, runs: dict[str, Path]):
    """The same head without the task's delta answers otherwise: the routing changes what a row computes."""
    mixed = MixedPredictor(bundle)
    with_delta = mixed.logits(TEXTS, ["lora3"] * len(TEXTS))
    mixed.shared.lora_tasks.clear()  # routes every row to no LoRA
    without = mixed.logits(TEXTS, ["lora3"] * len(TEXTS))
    assert max(float(np.abs(a - b).max()) for a, b in zip(with_delta, without, strict=True)) > 1e-3


def test_concurrent_mixed_batches_keep_their_own_routes(bundle: Path, runs: dict[str, Path]):
    mixed = MixedPredictor(bundle)
    expected = {name: single_logits(runs[name], TEXTS) for name in ("adapter3", "ia3", "lora3")}
    results, errors = {}, []

    def answer(name: str) -> None:
        try:
            for _ in range(5):
                results[name] = np.stack(mixed.logits(TEXTS, [name] * len(TEXTS)))
        except Exception as error:  # noqa: BLE001 - reported by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=answer, args=(name,)) for name in expected]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    for name, logits in expected.items():
        np.testing.assert_allclose(results[name], logits, atol=1e-5, rtol=0)


def test_predict_answers_task_text_items_in_one_call(bundle: Path, runs: dict[str, Path],
                                                     monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture):
    code, out, err = run_main(["predict", str(bundle), "lora3=good great fine", "ratings=awful = bad", "full=bad",
                               "--json"], monkeypatch, capsys)
    assert code == 0, err
    records = [json.loads(line) for line in out.splitlines()]
    assert [record["task"] for record in records] == ["lora3", "ratings", "full"]
    assert records[1]["text"] == "awful = bad" and "value" in records[1]
    assert set(records[0]["probabilities"]) == {"negative", "neutral", "positive"}
    single = api.predict(runs["lora3"], ["good great fine"])[0]
    assert records[0]["label"] == single["label"]
    assert records[0]["probabilities"] == pytest.approx(single["probabilities"], abs=1e-5)
    code, out, err = run_main(["predict", str(bundle), "lora=good", "ia3=bad"], monkeypatch, capsys)
    assert code == 0 and "each text for its task" in " ".join(out.split()), err  # the title wraps with a long path


def test_bad_mixed_input_is_one_line(bundle: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture):
    code, _, err = run_main(["predict", str(bundle), "movies=great"], monkeypatch, capsys)
    assert code == 2 and err.startswith("error: 'movies=great' names no task of the bundle: write each text as "
                                        "TASK=TEXT with a task of lora, lora3, ia3"), err
    with pytest.raises(TunelabError, match="no task 'x' here"):
        MixedPredictor(bundle).logits(["a"], ["x"])


def test_a_bundle_with_a_token_task_is_refused_for_mixed_batches(bert_lora: TrainedRun, tiny_bert: Path,
                                                                 tmp_path: Path):
    from test_token_classification import ner_config, people, write_conll

    data = write_conll(people(40), tmp_path / "people.conll")
    tagger = api.train(ner_config(tiny_bert, data, tmp_path / "ner", "lora", limit_train=16), progress=False)
    made = make_bundle([str(bert_lora.path), f"people={tagger.path}"], tmp_path / "bundle")
    with pytest.raises(TunelabError, match="task 'people' is token-classification: mixed batches answer "
                                           "classification and regression tasks; predict it on its own with "
                                           "--task people"):
        MixedPredictor(made.path)
