"""DPO with TRL's DPOTrainer on a tiny random Llama started from an SFT run: the held-out DPO loss falls below its
starting value log 2, the implicit reward ranks the chosen answers first, and the run is a policy run that
`load_policy` rebuilds, whose disabled adapter is the SFT model."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
import torch
from tiny import sentiment_frame

from tunelab.config import build_config
from tunelab.errors import TunelabError
from tunelab.recipes.runs import load_run
from tunelab.rlhf.dpo import DPOSettings, train_dpo, with_explicit_prompt
from tunelab.rlhf.policy import POLICY_FILE, load_policy, read_policy_settings
from tunelab.rlhf.sft import train_sft

PAIRS = pd.DataFrame({"chosen": ["a good and great film", "great acting, good story"] * 8,
                      "rejected": ["a bad and awful film", "awful acting, bad story"] * 8})


@pytest.fixture
def sft_run(tiny_llama_lm: Path, tmp_path: Path) -> Path:
    text = pd.DataFrame({"text": sentiment_frame(24)["text"]})
    config = build_config({"model": str(tiny_llama_lm), "task": "generation", "strategy": {"name": "lora"},
                           "output": str(tmp_path / "sft"), "training": {"max_length": 16, "epochs": 1}})
    train_sft(config, text, text.iloc[:4], progress=False)
    return tmp_path / "sft"


def test_dpo_lowers_the_held_out_loss_and_writes_a_policy_run(sft_run: Path, tmp_path: Path,
                                                               capfd: pytest.CaptureFixture):
    settings = DPOSettings(epochs=4, learning_rate=5e-3, batch_size=4, max_length=16)
    capfd.readouterr()

    metrics = train_dpo(settings, sft_run, PAIRS, PAIRS.iloc[:4], tmp_path / "dpo", progress=False)

    assert "Computing reference log probs" not in capfd.readouterr().err  # no bar when progress is off
    assert metrics["test"]["loss"] < math.log(2) - 0.1  # log 2: the loss of a policy equal to its reference
    assert metrics["test"]["preference_accuracy"] == 1.0 and metrics["test"]["pairs"] == 4
    assert {path.name for path in (tmp_path / "dpo").iterdir()} == {"adapter", POLICY_FILE, "metrics.json",
                                                                    "resources.json", "manifest.json"}
    assert read_policy_settings(tmp_path / "dpo")["sft_run"] == str(sft_run.resolve())
    policy = load_policy(tmp_path / "dpo")
    sft = load_run(sft_run).model
    ids = policy.tokenizer(["a good film"], return_tensors="pt", return_token_type_ids=False)
    with torch.no_grad(), policy.lm.disable_adapter():
        torch.testing.assert_close(policy.lm(**ids).logits, sft(**ids).logits, rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        assert not torch.allclose(policy.lm(**ids).logits, sft(**ids).logits, atol=1e-3)


def test_an_implicit_prompt_becomes_the_beginning_of_text_token(tiny_llama_lm: Path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_lm)
    explicit = with_explicit_prompt(PAIRS.iloc[:2], tokenizer)
    assert list(explicit.columns) == ["prompt", "chosen", "rejected"]
    assert set(explicit["prompt"]) == {tokenizer.bos_token or tokenizer.eos_token}
    given = with_explicit_prompt(PAIRS.iloc[:2].assign(prompt="Q: "), tokenizer)
    assert set(given["prompt"]) == {"Q: "}


def test_dpo_refuses_a_run_that_is_not_a_causal_lm(tmp_path: Path):
    with pytest.raises(TunelabError, match="not found"):
        train_dpo(DPOSettings(), tmp_path / "missing", PAIRS, PAIRS, tmp_path / "dpo", progress=False)
