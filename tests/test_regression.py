"""Regression (`--task regression`): numeric targets, standardised for training and mapped back, MSE, Pearson /
Spearman / MAE / RMSE; every strategy the task table allows; the CLI's output and errors."""

import json
import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import pearsonr, spearmanr
from tiny import WORDS, run_main, tiny_config, train_recording, write_table

from tunelab.api import evaluate, load_predictor
from tunelab.errors import TunelabError
from tunelab.strategies.catalog import STANDALONE, strategies_for
from tunelab.tasks.regression import TARGETS_FILE, TargetScale, numeric_targets, regression_metrics


def rated_frame(n: int = 200, seed: int = 0) -> pd.DataFrame:
    """Four words each from the positive, negative and neutral lists; the target is #positive - #negative,
    shifted and scaled (units far from a standard normal, which the run must map back)."""
    rng = random.Random(seed)
    kinds = [[rng.choice(["positive", "negative", "neutral"]) for _ in range(4)] for _ in range(n)]
    texts = [" ".join(rng.choice(WORDS[kind]) for kind in row) for row in kinds]
    scores = [10 + 5 * (row.count("positive") - row.count("negative")) for row in kinds]
    return pd.DataFrame({"text": texts, "label": scores})


@pytest.fixture(scope="module")
def ratings_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_table(rated_frame(), tmp_path_factory.mktemp("ratings") / "ratings.csv")


@pytest.fixture(scope="module")
def regression_run(tiny_bert: Path, ratings_csv: Path, tmp_path_factory: pytest.TempPathFactory):
    config = tiny_config(tiny_bert, ratings_csv, tmp_path_factory.mktemp("runs") / "full", "full", epochs=8)
    return train_recording(config.model_copy(update={"task": "regression"}))


def test_metrics_equal_scipy_and_hand_computed_errors():
    predictions, targets = np.array([1.0, 2.0, 4.0, 3.0]), np.array([1.5, 2.0, 3.0, 5.0])
    metrics = regression_metrics(predictions, targets)
    assert metrics["pearson"] == pytest.approx(pearsonr(predictions, targets).statistic)
    assert metrics["spearman"] == pytest.approx(spearmanr(predictions, targets).statistic)  # ranks 1,2,4,3 vs 1,2,3,4
    assert metrics["spearman"] == pytest.approx(0.8)
    assert metrics["mae"] == pytest.approx((0.5 + 0 + 1 + 2) / 4)
    assert metrics["rmse"] == pytest.approx(np.sqrt((0.25 + 0 + 1 + 4) / 4))
    assert regression_metrics(np.array([2.0, 2.0]), np.array([1.0, 3.0]))["pearson"] == 0.0  # constant: no nan


def test_targets_are_standardised_and_mapped_back():
    scale = TargetScale.fit([10.0, 20.0, 30.0])
    assert (scale.mean, scale.std) == pytest.approx((20.0, np.std([10, 20, 30])))
    encoded = scale.encode([10.0, 30.0], "x")
    assert encoded == pytest.approx([-1.2247, 1.2247], abs=1e-4)
    np.testing.assert_allclose(scale.decode(np.array(encoded)[:, None]), [10.0, 30.0])
    with pytest.raises(TunelabError, match="targets that vary; every training target is 3"):
        TargetScale.fit([3.0, 3.0])


def test_a_target_that_is_not_a_number_names_its_row():
    frame = pd.DataFrame({"text": ["a", "b", "c"], "label": ["1.5", "-2", "high"]})
    assert numeric_targets(frame.iloc[:2], "f.csv")["label"].tolist() == [1.5, -2.0]
    with pytest.raises(TunelabError, match=r"^f.csv: row 3 has target 'high', not a number; regression needs"):
        numeric_targets(frame, "f.csv")


def test_training_learns_the_target_in_its_own_units(regression_run):
    test = regression_run.metrics["test"]
    assert test["pearson"] > 0.8 and test["spearman"] > 0.7
    assert json.loads((regression_run.path / TARGETS_FILE).read_text())["mean"] == pytest.approx(10, abs=2.5)
    values = load_predictor(regression_run.path).predict_values(["good great fine nice", "bad awful poor ugly"])
    assert values[0] > 15 > 5 > values[1]  # the data's units: 10 + 5 x (positives - negatives)
    assert evaluate(regression_run.path) == pytest.approx(test)


@pytest.mark.parametrize("strategy", [name for name in strategies_for("regression")
                                      if name != "full" and name in STANDALONE])  # fusion: test_fusion.py
def test_every_strategy_the_table_allows_trains_a_regressor(strategy: str, tiny_bert: Path, ratings_csv: Path,
                                                            tmp_path: Path):
    config = tiny_config(tiny_bert, ratings_csv, tmp_path / strategy, strategy)
    run = train_recording(config.model_copy(update={"task": "regression"}))
    assert run.metrics["test"]["pearson"] > 0.3
    probe = ["good great", "awful"]
    np.testing.assert_allclose(load_predictor(run.path).predict_values(probe), run.predictor.predict_values(probe),
                               atol=1e-4)


def test_cli_predicts_and_evaluates_values(regression_run, monkeypatch, capsys):
    code, out, _ = run_main(["predict", str(regression_run.path), "good great", "--json"], monkeypatch, capsys)
    assert code == 0 and json.loads(out)["value"] > 10
    code, out, _ = run_main(["eval", str(regression_run.path)], monkeypatch, capsys)
    assert code == 0 and "Pearson" in out and "MAE" in out


@pytest.mark.parametrize(("extra", "message"), [
    (["--strategy", "pet"], "strategy pet does not apply to regression: it scores label words"),
    (["--shots", "4"], "--shots draws K examples per label, and regression has no labels"),
])
def test_cli_errors(extra, message, tiny_bert: Path, ratings_csv: Path, tmp_path: Path, monkeypatch, capsys):
    args = ["train", "--task", "regression", "--model", str(tiny_bert), "--data", str(ratings_csv),
            "--output", str(tmp_path / "run"), "--strategy", "full", *extra]
    code, _, err = run_main(args, monkeypatch, capsys)
    assert code == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_classification_data_is_refused_with_the_row(tiny_bert: Path, sentiment_csv: Path, tmp_path: Path,
                                                     monkeypatch, capsys):
    args = ["train", "--task", "regression", "--model", str(tiny_bert), "--data", str(sentiment_csv),
            "--output", str(tmp_path / "run")]
    code, _, err = run_main(args, monkeypatch, capsys)
    assert code == 2 and "row 1 has target 'negative', not a number" in err
