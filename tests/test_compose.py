"""Bundles: several tasks' runs on one base model, read by predict, eval and summary with --task."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from tiny import TrainedRun, run_main

from tunelab import api
from tunelab.compose.bundle import BUNDLE_FILE, base_fingerprint, make_bundle, read_bundle, task_run
from tunelab.errors import TunelabError


@pytest.fixture(scope="module")
def bundle(bert_full: TrainedRun, bert_lora: TrainedRun, bert_ratings: TrainedRun,
           tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp("bundles") / "three"
    made = make_bundle([f"sentiment={bert_full.path}", str(bert_lora.path), f"ratings={bert_ratings.path}"], output)
    return made.path


def test_a_bundle_holds_each_run_under_its_name_and_reads_back(bundle: Path, bert_full: TrainedRun,
                                                               tiny_bert: Path):
    read = read_bundle(bundle)
    assert read.tasks == {"sentiment": "classification", "lora": "classification", "ratings": "regression"}
    assert read.model == str(tiny_bert) and read.fingerprint == base_fingerprint(str(tiny_bert))
    assert not (read.run("sentiment") / "checkpoints").exists()
    assert sorted(path.name for path in read.run("sentiment").iterdir()) == sorted(
        path.name for path in bert_full.path.iterdir() if path.name != "checkpoints")
    assert task_run(bundle, "ratings") == bundle / "tasks" / "ratings"


@pytest.mark.parametrize("task", ["sentiment", "lora", "ratings"])
def test_a_bundles_task_predicts_what_its_run_does(bundle: Path, task: str, bert_full: TrainedRun,
                                                   bert_lora: TrainedRun, bert_ratings: TrainedRun,
                                                   monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture):
    source = {"sentiment": bert_full, "lora": bert_lora, "ratings": bert_ratings}[task].path
    texts = ["good great fine", "awful bad dull"]
    code, out, err = run_main(["predict", str(bundle), "--task", task, *texts, "--json"], monkeypatch, capsys)
    assert code == 0, err
    assert [json.loads(line) for line in out.splitlines()] == api.predict(source, texts)


def test_eval_of_a_bundle_scores_every_task_beside_its_run(bundle: Path, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture):
    code, out, err = run_main(["eval", str(bundle), "--json"], monkeypatch, capsys)
    assert code == 0, err
    scores = json.loads(out)
    assert set(scores) == {"sentiment", "lora", "ratings"}
    for name in scores:
        recorded = json.loads((bundle / "tasks" / name / "metrics.json").read_text())["test"]
        key = "pearson" if name == "ratings" else "accuracy"
        assert scores[name][key] == pytest.approx(recorded[key], abs=1e-6)  # the same base, delta and test split
    code, out, err = run_main(["eval", str(bundle)], monkeypatch, capsys)
    assert code == 0 and "every task on its test split" in out and "Pearson" in out, err
    code, out, err = run_main(["summary", str(bundle)], monkeypatch, capsys)
    assert code == 0 and all(name in out for name in ("sentiment", "lora", "ratings")), err


def test_the_fingerprint_is_the_weights_not_the_path(tiny_bert: Path, tmp_path: Path):
    copy = Path(shutil.copytree(tiny_bert, tmp_path / "copy"))
    assert base_fingerprint(str(copy)) == base_fingerprint(str(tiny_bert))
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    assert base_fingerprint(str(copy)) != base_fingerprint(str(tiny_bert))


def test_runs_of_two_base_models_are_refused_and_nothing_is_written(bert_full: TrainedRun, llama_full: TrainedRun,
                                                                    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                    capsys: pytest.CaptureFixture):
    output = tmp_path / "mixed"
    code, _, err = run_main(["compose", "bundle", str(bert_full.path), str(llama_full.path), "--output",
                             str(output)], monkeypatch, capsys)
    assert code == 2
    assert err.startswith(f"error: {llama_full.path} was trained on {llama_full.config.model} and {bert_full.path} "
                          f"on {bert_full.config.model}: a bundle holds runs of one base model")
    assert len(err.strip().splitlines()) == 1 and not output.exists()


@pytest.mark.parametrize(("arguments", "message"), [
    (["eval", "{bundle}", "--data", "{new}"], "{bundle} is a bundle of 3 tasks: pass --task with one of sentiment, "
                                              "lora, ratings"),
    (["predict", "{bundle}", "fine"], "'fine' names no task of the bundle: write each text as TASK=TEXT with a task "
                                      "of sentiment, lora, ratings, or pass --task for them all"),
    (["predict", "{bundle}", "--task", "tweets", "fine"], "{bundle} has no task 'tweets'; its tasks are sentiment, "
                                                          "lora, ratings"),
    (["predict", "{run}", "--task", "lora", "fine"], "--task picks a task of a bundle and {run} is a single run; "
                                                     "leave --task out"),
    (["compose", "bundle", "{run}", "{run}", "--output", "{new}"], "two runs would be named 'bert-full'; name them "
                                                                   "apart with NAME=PATH"),
    (["compose", "bundle", "a b={run}", "--output", "{new}"], "'a b' cannot name a task (letters, digits, '.', '_' "
                                                              "and '-'); pass NAME={run}"),
    (["compose", "bundle", "{new}", "--output", "{new}"], "{new} is not a tunelab run directory"),
    (["compose", "bundle", "{run}", "--output", "{bundle}"], "{bundle} already exists: choose another --output or "
                                                             "pass --overwrite"),
])
def test_bad_bundle_input_is_one_line(arguments: list[str], message: str, bundle: Path, bert_full: TrainedRun,
                                      tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture):
    names = {"bundle": str(bundle), "run": str(bert_full.path), "new": str(tmp_path / "new")}
    before = sorted(str(path) for path in bundle.rglob("*"))
    code, _, err = run_main([argument.format(**names) for argument in arguments], monkeypatch, capsys)
    assert code == 2 and err.startswith("error: " + message.format(**names)), err
    assert len(err.strip().splitlines()) == 1
    assert sorted(str(path) for path in bundle.rglob("*")) == before and (bundle / BUNDLE_FILE).exists()
    assert not (tmp_path / "new").exists()


def test_the_python_api_makes_and_reads_bundles(bert_lora: TrainedRun, tmp_path: Path):
    import tunelab

    made = tunelab.make_bundle([str(bert_lora.path)], tmp_path / "one")
    assert tunelab.read_bundle(made.path).tasks == {"lora": "classification"}
    with pytest.raises(TunelabError, match="a bundle needs at least one run"):
        tunelab.make_bundle([], tmp_path / "none")
