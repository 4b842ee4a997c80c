"""AdaLoRA really reallocates: the Trainer alone never calls PEFT's allocator, so without tunelab's callback the
ranks would stay at init_r (a plain LoRA). Here they end cut to the budget, unevenly, and the run reloads at them."""

import json
from pathlib import Path

import numpy as np
from safetensors.torch import load_file
from tiny import tiny_config, train_recording

from tunelab.predict import Predictor
from tunelab.recipes.runs import load_run

INIT_R, TARGET_R = 6, 2


def test_adalora_reallocates_ranks_and_reloads_at_them(tiny_bert: Path, sentiment_csv: Path, tmp_path: Path):
    run = train_recording(tiny_config(tiny_bert, sentiment_csv, tmp_path / "run", "adalora",
                                      {"init_r": INIT_R, "target_r": TARGET_R}, epochs=8, learning_rate=2e-2))
    adapter = run.path / "adapter"
    pattern = json.loads((adapter / "adapter_config.json").read_text())["rank_pattern"]
    ranks = {name: sum(mask) for name, mask in pattern.items()}
    assert len(ranks) == 4  # query and value of the two blocks, e.g. {2, 4, 0, 2}
    assert sum(ranks.values()) == TARGET_R * len(ranks)  # the budget: target_r on average
    assert len(set(ranks.values())) > 1  # spread by importance, not cut evenly from init_r
    weights = load_file(str(adapter / "adapter_model.safetensors"))
    for name, rank in ranks.items():  # saved cut to each layer's own rank
        assert weights[f"base_model.model.{name}"].shape == (rank, 1)
    loaded = load_run(run.path)
    reloaded = Predictor(loaded.model, loaded.tokenizer, loaded.targets, loaded.config.training.max_length)
    probe = ["good great film", "awful terrible", "nice"]
    np.testing.assert_allclose(reloaded.logits(probe), run.predictor.logits(probe), rtol=0, atol=1e-6)
