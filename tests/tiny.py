"""Helpers shared by the tests: made-up sentiment data, tiny run configs, training that keeps the model.

Imported by conftest.py after it has put the hub clients offline.
"""

from __future__ import annotations

import json
import random
import struct
import subprocess
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from tunelab import api, build_config, cli
from tunelab.config import RunConfig
from tunelab.predict import Predictor
from tunelab.strategies.registry import configure
from tunelab.task_catalog import recipe_for

HIDDEN = 32
WORDS = {
    "positive": ["good", "great", "excellent", "wonderful", "lovely", "superb", "fine", "nice"],
    "negative": ["bad", "awful", "terrible", "horrible", "poor", "dreadful", "nasty", "ugly"],
    "neutral": ["table", "window", "paper", "river", "chair", "street", "garden", "cloud"],
}
TWO_LABELS = ("negative", "positive")


def sentiment_frame(n: int = 80, labels: tuple[str, ...] = TWO_LABELS, seed: int = 0) -> pd.DataFrame:
    """`n` short texts of four words drawn from their label's word list, labels in turn (balanced)."""
    rng = random.Random(seed)
    rows = [labels[index % len(labels)] for index in range(n)]
    return pd.DataFrame({"text": [" ".join(rng.choice(WORDS[label]) for _ in range(4)) for label in rows],
                         "label": rows})


def write_table(frame: pd.DataFrame, path: Path) -> Path:
    """Write `frame` in the format its suffix names: .csv, .tsv, .jsonl or .parquet."""
    suffix = path.suffix
    if suffix == ".csv":
        frame.to_csv(path, index=False)
    elif suffix == ".tsv":
        frame.to_csv(path, sep="\t", index=False)
    elif suffix == ".jsonl":
        frame.to_json(path, orient="records", lines=True)
    elif suffix == ".parquet":
        frame.to_parquet(path, index=False)
    else:
        raise ValueError(f"no writer for {suffix}")
    return path


# Settings under which the tiny models learn the made-up task in a second or two.
STRATEGY_TRAINING = {
    "full": {"epochs": 4, "learning_rate": 3e-3},
    "linear-probe": {"epochs": 10, "learning_rate": 0.1},
    "lora": {"epochs": 6, "learning_rate": 2e-2},
    "ia3": {"epochs": 8, "learning_rate": 5e-2},
    "adapter": {"epochs": 8, "learning_rate": 1e-2},
    "prefix": {"epochs": 8, "learning_rate": 3e-2},
    "prompt-tuning": {"epochs": 6, "learning_rate": 3e-2},
    "p-tuning": {"epochs": 6, "learning_rate": 3e-2},
}

TINY_TRAINING = {"epochs": 8, "learning_rate": 1e-2}  # a strategy with no row of its own above

# In a random 2-layer model many virtual input tokens drown a four-word text; two are enough to learn with.
STRATEGY_OPTIONS = {"prompt-tuning": {"virtual_tokens": 2}, "p-tuning": {"virtual_tokens": 2},
                    "prefix": {"virtual_tokens": 4}}


def tiny_config(model: Path, data: Path, output: Path | None, strategy: str = "full", options: dict | None = None,
                **training) -> RunConfig:
    """A RunConfig for the tiny models: short inputs, small batches, the strategy's tuned epochs and lr."""
    settings = {"max_length": 16, "batch_size": 8, "eval_batch_size": 16,
                **STRATEGY_TRAINING.get(strategy, TINY_TRAINING), **training}
    return build_config({
        "model": str(model), "data": {"source": str(data)},
        "strategy": {"name": strategy, "options": STRATEGY_OPTIONS.get(strategy, {}) if options is None else options},
        "training": settings, "output": str(output) if output else None,
    })


def generation_config(model: Path, data: Path, output: Path, strategy: str = "lora", **training) -> RunConfig:
    """A generation RunConfig for the tiny causal LM: settings under which lora learns the made-up answers."""
    settings = {"max_length": 24, "batch_size": 8, "epochs": 4, "learning_rate": 2e-2, **training}
    return build_config({"model": str(model), "task": "generation", "data": {"source": str(data)},
                         "strategy": {"name": strategy}, "training": settings, "output": str(output)})


@dataclass
class TrainedRun:
    """A finished run, its config, and the predictor `train` built around the in-memory trained model."""

    path: Path
    config: RunConfig
    metrics: dict
    resources: dict
    predictor: Predictor


def train_recording(config: RunConfig) -> TrainedRun:
    """tunelab.api.train, keeping hold of the in-memory trained model through the result's predictor."""
    result = api.train(config, progress=False)
    return TrainedRun(result.path, config, result.metrics, result.resources, result.predictor)


def fsdp_on_cpu(processes: int = 2) -> list[str]:
    """`python -m tunelab` as `processes` torchrun processes that take accelerate's FSDP path on CPUs, as it runs on
    GPUs (`fsdp_on_cpu.py`)."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes),
            str(Path(__file__).with_name("fsdp_on_cpu.py")), "-m", "tunelab"]


def train_cli(model: Path, data: Path, output: Path, strategy: str, *extra: str, python: str = sys.executable,
              launch: list[str] | None = None) -> subprocess.CompletedProcess:
    """`tunelab train` in a subprocess (so that it may launch torchrun; `launch`: the command that runs tunelab,
    default `python -m tunelab`), deterministic and in fp32: on the 60 training rows of `sentiment_csv` at a global
    batch of 4, every step a full batch (DDP pads a last, partial one)."""
    return subprocess.run([*(launch or [python, "-m", "tunelab"]), "train", "--model", str(model), "--data", str(data),
                           "--strategy", strategy, "--batch-size", "4", "--epochs", "2", "--lr", "1e-2",
                           "--set", "training.max_length=16", "--set", "training.logging_steps=1",
                           "--set", "training.precision=fp32", "--output", str(output), "--quiet", *extra],
                          capture_output=True, text=True, timeout=600)


def assert_trained_alike(one: Path, many: Path, many_stdout: str) -> None:
    """A multi-process run (`many`, its printed output) trained as the single-process run `one` did: rank 0 alone
    printed, the same loss curve and scores within 1e-4, and saved runs that compute the same."""
    import numpy as np

    from tunelab.recipes.runs import load_run
    from tunelab.runs import METRICS_FILE

    assert many_stdout.count("run saved to") == 1  # rank 0 alone prints
    metrics = [json.loads((run / METRICS_FILE).read_text()) for run in (one, many)]
    curves = [np.array(run["loss_curve"]) for run in metrics]
    assert curves[0].shape == curves[1].shape == (30, 2)  # 15 steps an epoch in both
    np.testing.assert_allclose(curves[1], curves[0], rtol=0, atol=1e-4)
    assert metrics[1]["test"] == metrics[0]["test"] and metrics[1]["validation"] == pytest.approx(
        metrics[0]["validation"], abs=1e-4)
    # the saved runs compute the same (not every weight is equal: an attention key bias has no gradient in exact
    # arithmetic, so AdamW turns two processes' different rounding noise into different steps of lr size)
    probe = ["good great film", "awful terrible", "nice"]
    logits = [Predictor(run.model, run.tokenizer, run.targets, 16).logits(probe) for run in map(load_run, (one, many))]
    np.testing.assert_allclose(logits[1], logits[0], rtol=0, atol=1e-4)


def run_main(args: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    """`tunelab ARGS...` through `tunelab.cli.main`, as the console script calls it; (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["tunelab", *args])
    with pytest.raises(SystemExit) as exited:
        cli.main()
    captured = capsys.readouterr()
    return exited.value.code or 0, captured.out, captured.err


def png_colours(path: Path) -> int:
    """How many distinct pixel rows a PNG has: a blank page has one."""
    data = path.read_bytes()
    chunks, offset = [], 8
    while offset < len(data):
        length, kind = struct.unpack(">I4s", data[offset:offset + 8])
        chunks.append((kind, data[offset + 8:offset + 8 + length]))
        offset += 12 + length
    width, height = struct.unpack(">II", dict(chunks)[b"IHDR"][:8])
    raw = zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT"))
    row = len(raw) // height
    return len({raw[index * row + 1:(index + 1) * row] for index in range(height)})


def open_in_chromium(page: Path, scratch: Path) -> tuple[str, list[str], int]:
    """A page as headless Chromium renders it: (its DOM, the console messages, png_colours of a screenshot)."""
    browser = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0",
               f"--user-data-dir={scratch / 'profile'}"]
    uri = page.resolve().as_uri()
    dom = subprocess.run([*browser, "--dump-dom", uri], capture_output=True, text=True, timeout=120)
    shot = subprocess.run([*browser, f"--screenshot={scratch / 'page.png'}", "--window-size=1200,3000", uri],
                          capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0 and shot.returncode == 0, dom.stderr[-2000:] + shot.stderr[-2000:]
    console = [line for line in dom.stderr.splitlines() + shot.stderr.splitlines() if "CONSOLE" in line]
    return dom.stdout, console, png_colours(scratch / "page.png")


def load_splits(config: RunConfig) -> tuple[Any, Any]:
    """A config's splits and targets (labels, a regression scale, tags), as its task's recipe prepares them."""
    prepared = recipe_for(config.task).prepare(config)
    return prepared.splits, prepared.targets


def build_model(config: RunConfig, targets: Any) -> Any:
    """A fresh, untrained model of the config's task with its strategy applied."""
    return recipe_for(config.task).build(config, configure(config.strategy, config.training), targets)[0]
