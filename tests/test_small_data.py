"""A user's own data: the training budget on small sets, the data checks and their warnings, class weights, the
epoch chosen on macro-F1 when classes are imbalanced, and a run that did not learn saying so."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from rich.console import Console
from tiny import run_main, sentiment_frame, tiny_config, write_table

from tunelab import api
from tunelab.config import StrategyConfig
from tunelab.data.checks import check_sentences, is_imbalanced, profile_file
from tunelab.data.splits import Splits
from tunelab.errors import TunelabError
from tunelab.precision import resolve_precision
from tunelab.recipes.classification import RECIPE
from tunelab.strategies.registry import configure
from tunelab.tasks.classification import FeatureClassifier, LabelMap, classification_metrics


@pytest.mark.parametrize(("examples", "batch", "min_steps", "expected"), [
    (450, 32, 100, 7.0),  # 15 steps an epoch: 3 default epochs make 45, 7 make 105
    (2000, 32, 100, 3.0),  # 63 steps an epoch: the default stands
    (64, 32, 0, 3.0),
])
def test_default_epochs_are_raised_to_the_minimum_steps(examples: int, batch: int, min_steps: int, expected: float):
    assert configure(StrategyConfig(name="full")).budgeted(examples, batch, min_steps).epochs == expected
    assert configure(StrategyConfig(name="zero-shot")).budgeted(examples, batch, min_steps).epochs == 0.0


def _small(config):
    config.data.limit_train = 16  # batch 8: 2 steps an epoch
    return config


def test_train_raises_default_epochs_and_keeps_explicit_ones(tiny_bert: Path, sentiment_csv: Path, tmp_path: Path):
    probe = _small(tiny_config(tiny_bert, sentiment_csv, tmp_path / "probe", "linear-probe", epochs=None,
                               min_steps=40))
    assert api.train(probe, progress=False).metrics["training"]["epochs"] == 30.0  # its own 30 make 60 steps
    lora = _small(tiny_config(tiny_bert, sentiment_csv, tmp_path / "lora", "lora", epochs=None, min_steps=40))
    assert api.train(lora, progress=False).metrics["training"] == {
        "epochs": 20.0, "optimizer_steps": 40, "learning_rate": lora.training.learning_rate,
        "selected_on": "accuracy", "precision": resolve_precision("auto"), "micro_batch_size": 8,
        "gradient_accumulation_steps": 1, "micro_batch_found": False}
    short = _small(tiny_config(tiny_bert, sentiment_csv, tmp_path / "short", "lora", epochs=1, min_steps=40))
    assert api.train(short, progress=False).metrics["training"]["optimizer_steps"] == 2


def test_balanced_weights_and_the_weighted_loss_by_hand():
    labels = LabelMap(["a", "b"])
    weights = labels.balanced_weights(["a", "a", "a", "b"])
    torch.testing.assert_close(weights, torch.tensor([4 / 6, 2.0]))
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    targets = torch.tensor([0, 1, 1])
    losses = -torch.log_softmax(logits, dim=-1)[torch.arange(3), targets]  # per example
    by_hand = (losses * weights[targets]).sum() / weights[targets].sum()
    model = FeatureClassifier(torch.nn.Identity(), weights)  # the head passes the logits through
    torch.testing.assert_close(model(features=logits, labels=targets).loss, by_hand)
    torch.testing.assert_close(FeatureClassifier(torch.nn.Identity())(features=logits, labels=targets).loss,
                               losses.mean())


def _splits(labels: list[str]) -> Splits:
    frame = pd.DataFrame({"text": [f"text {n}" for n in range(len(labels))], "label": labels})
    return Splits(frame, frame.iloc[:2], frame.iloc[:2])


def test_imbalanced_classes_select_on_macro_f1_unless_told():
    config = tiny_config(Path("m"), Path("d.csv"), None)
    balanced, skewed = _splits(["a", "b"] * 10), _splits(["a"] * 18 + ["b"] * 2)
    assert not is_imbalanced(balanced.train["label"]) and is_imbalanced(skewed.train["label"])
    assert RECIPE.selected_on(config, balanced) == "accuracy"
    assert RECIPE.selected_on(config, skewed) == "macro_f1"
    config.training.select_on = "accuracy"
    assert RECIPE.selected_on(config, skewed) == "accuracy"


def test_the_other_tasks_refuse_class_weights_and_select_on(tiny_bert: Path, sentiment_csv: Path, tmp_path: Path):
    config = tiny_config(tiny_bert, sentiment_csv, tmp_path / "run", class_weights="balanced")
    with pytest.raises(TunelabError, match="^regression keeps the epoch with the best validation Pearson"):
        api.train(config.model_copy(update={"task": "regression"}), progress=False)
    assert not (tmp_path / "run").exists()


def test_truncation_and_rare_class_warnings_name_the_fix():
    splits = _splits(["a"] * 19 + ["b"])
    checks = check_sentences(splits, [10] * 14 + [200] * 6, max_length=128, labelled=True)
    assert checks.truncated_share == pytest.approx(0.3) and checks.token_lengths == {"median": 10, "p95": 200,
                                                                                    "max": 200}
    assert checks.warnings == [
        "30% of the training texts are longer than --max-length 128 tokens and are cut; --max-length 200 keeps 95% "
        "of them whole, at about 1.6x the memory and time per example (more where attention dominates)",
        "class 'b' is 5% of the training rows: pass --class-weights balanced so that its errors weigh as much as a "
        "common class's, and consider --select-on macro-f1"]
    quiet = check_sentences(_splits(["a", "b"] * 10), [10] * 20, max_length=128, labelled=True)
    assert quiet.warnings == [] and quiet.class_shares == {"a": 0.5, "b": 0.5}
    console = Console(record=True, width=120)
    console.print(checks.table("data"))
    text = console.export_text()
    assert "a 95%, b 5%" in text and "30% over 128" in text


def _scores(predicted: list[int], truth: list[int]) -> dict:
    return classification_metrics(np.eye(2)[predicted], np.array(truth), LabelMap(["a", "b"]))


def test_the_collapse_detector_fires_on_a_constant_predictor_only():
    truth = [0] * 14 + [1] * 6
    baseline = {"predicts": "a", "accuracy": 0.7, "macro_f1": 2 * 0.7 / 1.7 / 2}
    constant = RECIPE.did_not_learn(_scores([0] * 20, truth), baseline)
    assert constant.startswith("the run did not learn: it predicts 'a' for 100% of the test split, where 70% carry "
                               "it. Try more optimizer steps")
    good = [0] * 13 + [1] + [1] * 5 + [0]
    assert RECIPE.did_not_learn(_scores(good, truth), baseline) is None
    weak = [0] * 14 + [0] * 4 + [1] * 2  # two right minority answers: 90% 'a', macro-F1 0.69 > 0.41
    assert RECIPE.did_not_learn(_scores(weak, truth), baseline) is None


def test_majority_baseline_by_hand(tiny_bert: Path, tmp_path: Path):
    data = write_table(sentiment_frame(60).assign(label=["negative"] * 45 + ["positive"] * 15), tmp_path / "d.csv")
    prepared = RECIPE.prepare(tiny_config(tiny_bert, data, None))
    share = float((prepared.splits.test["label"] == "negative").mean())
    assert RECIPE.baseline(prepared) == {"predicts": "negative", "accuracy": share,
                                         "macro_f1": pytest.approx(share / (1 + share))}


def test_a_starved_run_says_it_did_not_learn(tiny_bert: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture):
    frame = sentiment_frame(80)
    data = write_table(frame.assign(label=np.where(np.arange(80) % 5 == 0, "positive", "negative")), tmp_path / "d.csv")
    code, stdout, stderr = run_main(["train", "--model", str(tiny_bert), "--data", str(data), "--strategy", "lora",
                                     "--epochs", "0.2", "--max-length", "16", "--output", str(tmp_path / "run"),
                                     "--quiet"], monkeypatch, capsys)
    assert code == 0, stderr
    text = " ".join(stdout.split())
    assert "warning: the run did not learn" in text and "baseline that learns nothing (always negative)" in text
    recorded = json.loads((tmp_path / "run" / "metrics.json").read_text())  # the run's own record says so too
    assert recorded["learned"] is False and recorded["training"]["selected_on"] == "macro_f1"
    assert (tmp_path / "run" / "data_checks.json").exists()
    code, stdout, _ = run_main(["summary", str(tmp_path / "run")], monkeypatch, capsys)
    assert code == 0 and "! " in stdout and "did not learn" in stdout and "macro-F1" in stdout


def test_recommend_reads_the_users_file_and_names_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture):
    long_text = " ".join(["word"] * 150)
    frame = pd.DataFrame({"review": [long_text] * 100, "stars": ["good"] * 64 + ["bad"] * 28 + ["mixed"] * 8})
    data = write_table(frame, tmp_path / "reviews.csv")
    profile = profile_file(str(data), "review", "stars")
    assert (profile.rows, profile.training_rows, profile.words_p95) == (100, 75, 150)
    assert profile.train_options() == ["--data", str(data), "--text-column", "review", "--label-column", "stars",
                                       "--class-weights", "balanced", "--max-length", "210"]
    code, stdout, stderr = run_main(["recommend", "--data", str(data), "--text-column", "review", "--label-column",
                                     "stars", "--top", "1"], monkeypatch, capsys)
    assert code == 0, stderr
    text = " ".join(stdout.split())
    assert "100 rows (75 to train on), 3 classes (good 64%, bad 28%, mixed 8%)" in text
    assert f"--data {data} --text-column review --label-column stars --class-weights balanced" in text
    assert "movie-snippets" not in text


def test_recommend_on_a_missing_file_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture):
    code, _, stderr = run_main(["recommend", "--data", str(tmp_path / "nope.csv")], monkeypatch, capsys)
    assert code == 2 and stderr == f"error: data file {tmp_path / 'nope.csv'} does not exist\n"
