"""The reward model on a tiny random encoder: the Bradley-Terry steps lower the loss and rank held-out pairs, and
the run directory gives back the same scores."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from tiny import WORDS

from tunelab.errors import TunelabError
from tunelab.rlhf.data import stage_splits
from tunelab.rlhf.reward import RewardSettings, load_reward_model, pair_texts, score_texts, train_reward_model


def _pairs(n: int, seed: int) -> pd.DataFrame:
    """Chosen: four positive words; rejected: four negative ones."""
    rng = np.random.default_rng(seed)
    sentence = lambda label: " ".join(rng.choice(WORDS[label], size=4))  # noqa: E731
    return pd.DataFrame({"chosen": [sentence("positive") for _ in range(n)],
                         "rejected": [sentence("negative") for _ in range(n)]})


@pytest.fixture(scope="module")
def reward_run(tmp_path_factory: pytest.TempPathFactory, tiny_bert: Path):
    settings = RewardSettings(model=str(tiny_bert), data="pairs.jsonl", epochs=6, learning_rate=3e-3, batch_size=8,
                              max_length=16, seed=0)
    output = tmp_path_factory.mktemp("rlhf") / "rm"
    metrics = train_reward_model(settings, _pairs(64, seed=0), _pairs(32, seed=1), output, progress=False)
    return output, metrics


def test_training_ranks_held_out_pairs(reward_run):
    _, metrics = reward_run
    assert metrics["test"]["pairwise_accuracy"] >= 0.9
    assert metrics["test"]["mean_margin"] > metrics["untrained_test"]["mean_margin"]
    assert metrics["train_pairs"] == 64


def test_the_held_out_loss_falls(reward_run):
    output, metrics = reward_run
    assert metrics["test"]["loss"] < metrics["untrained_test"]["loss"] - 0.3
    assert not (output / "checkpoints").exists()
    assert json.loads((output / "metrics.json").read_text())["test"]["pairs"] == 32


def test_the_run_gives_back_the_same_scores(reward_run):
    output, metrics = reward_run
    model, tokenizer, settings = load_reward_model(output)
    chosen, rejected = pair_texts(_pairs(32, seed=1))
    margin = score_texts(model, tokenizer, chosen, settings.max_length) - score_texts(model, tokenizer, rejected,
                                                                                        settings.max_length)
    assert float(margin.mean()) == pytest.approx(metrics["test"]["mean_margin"], rel=1e-5)


def test_scores_do_not_depend_on_the_batch(reward_run):
    model, tokenizer, _ = load_reward_model(reward_run[0])
    texts = pair_texts(_pairs(10, seed=2))[0] + ["good", "a much longer text that is good and fine and nice"]
    together = score_texts(model, tokenizer, texts, 16, batch_size=64)
    alone = np.array([score_texts(model, tokenizer, [text], 16)[0] for text in texts])
    np.testing.assert_allclose(together, alone, rtol=1e-4, atol=1e-5)


def test_an_explicit_prompt_goes_before_each_answer():
    chosen, rejected = pair_texts(pd.DataFrame({"prompt": ["Q: "], "chosen": ["yes"], "rejected": ["no"]}))
    assert (chosen, rejected) == (["Q: yes"], ["Q: no"])


def test_a_file_of_pairs_is_split_and_a_tiny_one_refused(tmp_path: Path):
    path = tmp_path / "prefs.jsonl"
    path.write_text("".join(json.dumps({"chosen": f"good {i}", "rejected": f"bad {i}"}) + "\n" for i in range(20)))
    train, test = stage_splits(str(path), "reward", test_share=0.1, seed=0)
    assert (len(train), len(test)) == (18, 2) and not set(train["chosen"]) & set(test["chosen"])
    path.write_text(json.dumps({"chosen": "good", "rejected": "bad"}) + "\n")
    with pytest.raises(TunelabError, match="too few to hold some out"):
        stage_splits(str(path), "reward")


def test_the_cli_trains_and_reports(tmp_path: Path, tiny_bert: Path, monkeypatch, capsys):
    from tunelab import cli

    path = tmp_path / "prefs.jsonl"
    _pairs(40, seed=3).to_json(path, orient="records", lines=True)
    output = tmp_path / "rm"
    monkeypatch.setattr("sys.argv", ["tunelab", "rlhf", "reward", "--model", str(tiny_bert), "--data", str(path),
                                     "--output", str(output), "--epochs", "1", "--max-length", "16", "--quiet"])
    with pytest.raises(SystemExit) as exited:
        cli.main()
    printed = " ".join(capsys.readouterr().out.split())
    assert exited.value.code == 0, printed
    assert "36 training pairs" in printed and "4 (trained)" in printed
    assert json.loads((output / "metrics.json").read_text())["test"]["pairs"] == 4

