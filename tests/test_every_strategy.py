"""Every head-based strategy (test_prompting.py has the prompt-based ones), on the encoder and on the causal LM
(classification through a head): a short run lowers the training loss, and the saved run predicts exactly what
the trained model did."""

from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from tiny import build_model, load_splits, tiny_config, train_recording

from tunelab.predict import Predictor
from tunelab.recipes.runs import load_run
from tunelab.strategies.catalog import CATALOG

# The tiny Llama's residual stream is about a hundred times smaller than a trained model's (initializer range
# 0.02), so an adapter's bias or a prefix swamps it at the learning rates the tiny BERT needs.
LLAMA_TRAINING = {"adapter": {"learning_rate": 2e-3}, "prefix": {"learning_rate": 1e-2}}


@pytest.mark.parametrize("architecture", ["bert", "llama"])
@pytest.mark.parametrize("strategy", [name for name, row in CATALOG.items()
                                      if not row.prompt_based and not row.composes])  # fusion: test_fusion.py
def test_every_strategy_trains_and_reloads(strategy: str, architecture: str, tiny_bert: Path, tiny_llama: Path,
                                           sentiment_csv: Path, tmp_path: Path):
    model_dir = {"bert": tiny_bert, "llama": tiny_llama}[architecture]
    settings = LLAMA_TRAINING.get(strategy, {}) if architecture == "llama" else {}
    run = train_recording(tiny_config(model_dir, sentiment_csv, tmp_path / "run", strategy, **settings))
    splits, label_map = load_splits(run.config)
    texts = splits.train["text"].tolist()
    targets = torch.tensor(label_map.encode(splits.train["label"].tolist(), "train"))
    transformers.set_seed(run.config.training.seed)  # the classifier exactly as `train` built it before step one
    untrained = Predictor(build_model(run.config, label_map), run.predictor.tokenizer, label_map, 16)

    def loss(predictor: Predictor) -> float:
        return torch.nn.functional.cross_entropy(torch.from_numpy(predictor.logits(texts)), targets).item()

    assert loss(run.predictor) < 0.95 * loss(untrained)  # the best epoch is chosen on accuracy, not loss
    loaded = load_run(run.path)
    reloaded = Predictor(loaded.model, loaded.tokenizer, loaded.targets, loaded.config.training.max_length)
    probe = ["good great film", "awful terrible", "nice"]
    np.testing.assert_allclose(reloaded.logits(probe), run.predictor.logits(probe), rtol=0, atol=1e-6)
