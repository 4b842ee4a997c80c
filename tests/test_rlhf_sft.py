"""Supervised fine-tuning with TRL's SFTTrainer on a tiny random Llama: each data format trains, the held-out loss
falls, and the run is a generation run that `load_run` rebuilds."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from tiny import sentiment_frame

from tunelab.config import build_config
from tunelab.errors import TunelabError
from tunelab.recipes.runs import load_run
from tunelab.rlhf.data import stage_splits
from tunelab.rlhf.sft import train_sft


def _config(model: Path, output: Path, strategy: str = "lora", **training) -> object:
    return build_config({"model": str(model), "task": "generation", "data": {"source": "sft.jsonl"},
                         "strategy": {"name": strategy}, "output": str(output),
                         "training": {"max_length": 24, "batch_size": 8, "epochs": 3, "learning_rate": 2e-2,
                                      **training}})


TEXT = pd.DataFrame({"text": sentiment_frame(48)["text"]})
PAIRS = pd.DataFrame({"prompt": "say: ", "completion": sentiment_frame(48)["text"]})


@pytest.mark.parametrize(("data", "strategy"), [(TEXT, "lora"), (PAIRS, "lora"), (TEXT, "full")])
def test_sft_lowers_the_held_out_loss_and_writes_a_generation_run(tiny_llama_lm: Path, tmp_path: Path,
                                                                   data: pd.DataFrame, strategy: str):
    config = _config(tiny_llama_lm, tmp_path / "sft", strategy, learning_rate=2e-2 if strategy == "lora" else 3e-3)
    metrics = train_sft(config, data.iloc[:40], data.iloc[40:], progress=False)
    assert metrics["test"]["loss"] < metrics["base_test"]["loss"] - 0.5
    assert json.loads((tmp_path / "sft" / "metrics.json").read_text())["train_examples"] == 40
    assert not (tmp_path / "sft" / "checkpoints").exists()
    run = load_run(tmp_path / "sft")
    assert run.config.task == "generation" and run.config.strategy.name == strategy
    ids = torch.tensor([[101, 2204, 2307]])
    assert torch.isfinite(run.model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits).all()


def test_a_strategy_outside_the_lm_is_refused(tiny_llama_lm: Path, tmp_path: Path):
    with pytest.raises(TunelabError, match="rlhf sft trains with full, lora, ia3; strategy adapter"):
        train_sft(_config(tiny_llama_lm, tmp_path / "sft", "adapter"), TEXT, TEXT, progress=False)
    assert not (tmp_path / "sft").exists()


def test_a_file_is_split_and_the_wrong_format_refused(tmp_path: Path):
    path = tmp_path / "sft.jsonl"
    TEXT.to_json(path, orient="records", lines=True)
    train, test = stage_splits(str(path), "sft", test_share=0.25)
    assert (len(train), len(test)) == (36, 12)
    path.write_text(json.dumps({"prompt": "only a prompt"}) + "\n")
    with pytest.raises(TunelabError, match="holds prompt-only data"):
        stage_splits(str(path), "sft")


def test_the_cli_trains_and_generate_reads_the_run(tiny_llama_lm: Path, tmp_path: Path, monkeypatch, capsys):
    from tunelab import cli

    path = tmp_path / "sft.jsonl"
    PAIRS.to_json(path, orient="records", lines=True)
    output = tmp_path / "sft"
    for args in (["rlhf", "sft", "--model", str(tiny_llama_lm), "--data", str(path), "--output", str(output),
                  "--epochs", "1", "--max-length", "24", "--quiet"],
                 ["summary", str(output)],
                 ["generate", str(output), "say good", "--max-new-tokens", "3", "--continue"]):
        monkeypatch.setattr("sys.argv", ["tunelab", *args])
        with pytest.raises(SystemExit) as exited:
            cli.main()
        assert exited.value.code in (0, None), capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "sft lora on" in printed and "46 examples; held-out loss" in " ".join(printed.split())
    assert printed.splitlines()[-1].startswith("say good ")  # the prompt, continued as plain text
    assert "ppl" in printed and "sft" in printed  # `tunelab summary` reads an SFT run like any generation run
