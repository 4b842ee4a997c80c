"""LoRA on tiny random models: closed-form parameter count, zero-initialised update, frozen base weights,
a delta in PEFT's own format that plain `peft` loads, and save -> load round trips."""

from pathlib import Path

import pytest
import torch
import transformers
from peft import PeftModel
from tiny import HIDDEN, TrainedRun, tiny_config, train_recording
from transformers import AutoModel

from tunelab.api import load_splits
from tunelab.assets.models import resolve_model
from tunelab.errors import TunelabError
from tunelab.modeling import load_backbone
from tunelab.predict import Predictor
from tunelab.runs import build_classifier, load_run
from tunelab.strategies.registry import get_strategy, parse_options
from tunelab.tasks.classification import SequenceClassifier

INNER, LAYERS, LABELS = 64, 2, 2


@pytest.fixture(scope="module")
def bert_lora(tiny_bert: Path, sentiment_csv: Path, runs_dir: Path) -> TrainedRun:
    return train_recording(tiny_config(tiny_bert, sentiment_csv, runs_dir / "bert-lora", "lora"))


def _classifier(model_dir: Path, options: dict | None = None) -> SequenceClassifier:
    spec = resolve_model(str(model_dir))
    model = SequenceClassifier(load_backbone(spec), LABELS, spec.pooling)
    strategy = get_strategy("lora")
    strategy.apply(model, parse_options(strategy, options or {}))
    return model


def _batch(tokenizer) -> dict[str, torch.Tensor]:
    return dict(tokenizer(["good great film", "awful"], padding=True, return_tensors="pt"))


@pytest.mark.parametrize("rank", [1, 4])
def test_trainable_parameters_match_the_closed_form(tiny_bert: Path, rank: int):
    model = _classifier(tiny_bert, {"r": rank})
    # per block: query, key, value, attention output (d x d), intermediate (d -> 4d), output (4d -> d): r (d_in + d_out)
    per_block = rank * (4 * (HIDDEN + HIDDEN) + (HIDDEN + INNER) + (INNER + HIDDEN))
    head = HIDDEN * LABELS + LABELS
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == LAYERS * per_block + head


def test_the_pooler_and_embeddings_are_not_adapted(tiny_bert: Path):
    adapted = [name for name, _ in _classifier(tiny_bert).named_modules() if name.endswith(".lora_A")]
    assert len(adapted) == LAYERS * 6
    assert not [name for name in adapted if "pooler" in name or "embeddings" in name]


def test_target_modules_option(tiny_bert: Path):
    adapted = [name for name, _ in _classifier(tiny_bert, {"target_modules": ["query", "value"]}).named_modules()
               if name.endswith(".lora_A")]
    assert len(adapted) == LAYERS * 2


def test_unknown_target_modules_is_a_one_line_error(tiny_bert: Path):
    with pytest.raises(TunelabError, match=r"^lora: target module\(s\) no_such_layer match no layer of this model"):
        _classifier(tiny_bert, {"target_modules": ["no_such_layer"]})


def test_a_fresh_update_leaves_the_backbone_unchanged(tiny_bert: Path, tiny_llama: Path):
    """B starts at zero, so before training the adapted backbone computes exactly what the base does."""
    for model_dir in (tiny_bert, tiny_llama):
        tokenizer = resolve_model(str(model_dir))
        batch = _batch(transformers.AutoTokenizer.from_pretrained(tokenizer.path))
        base = AutoModel.from_pretrained(model_dir).eval()
        adapted = _classifier(model_dir).eval()
        with torch.no_grad():
            expected = base(**batch).last_hidden_state
            actual = adapted.backbone(**batch).last_hidden_state
        torch.testing.assert_close(actual, expected, rtol=0, atol=0)


def test_training_moves_only_the_update_and_the_head(bert_lora: TrainedRun, tiny_bert: Path):
    trained = bert_lora.predictor.model.state_dict()
    base = AutoModel.from_pretrained(tiny_bert).state_dict()
    prefix = "backbone.base_model.model."
    for name, tensor in base.items():
        key = prefix + name
        if key not in trained:  # an adapted layer keeps its pre-trained weights under base_layer
            key = key.replace(".weight", ".base_layer.weight").replace(".bias", ".base_layer.bias")
        assert torch.equal(trained[key], tensor), name
    _, label_map = load_splits(bert_lora.config)
    transformers.set_seed(bert_lora.config.training.seed)
    initial = build_classifier(bert_lora.config, label_map)[0].state_dict()
    moved = [name for name in trained if not torch.equal(trained[name], initial[name])]
    assert moved and all(".lora_B." in name or ".lora_A." in name or name.startswith("head.") for name in moved)
    assert any(".lora_B." in name for name in moved)
    assert bert_lora.metrics["test"]["accuracy"] >= 0.75


def test_the_delta_is_the_adapter_and_the_head(bert_lora: TrainedRun):
    files = sorted(str(path.relative_to(bert_lora.path)) for path in bert_lora.path.rglob("*") if path.is_file())
    assert files == ["adapter/README.md", "adapter/adapter_config.json", "adapter/adapter_model.safetensors",
                     "config.yaml", "delta.safetensors", "labels.json", "metrics.json", "resources.json"]
    delta = [bert_lora.path / "delta.safetensors", *sorted((bert_lora.path / "adapter").iterdir())]
    assert bert_lora.resources["delta_bytes"] == sum(path.stat().st_size for path in delta)


def test_save_then_load_predicts_the_same(bert_lora: TrainedRun):
    texts = ["good great film", "awful terrible", "nice"]
    run = load_run(bert_lora.path)
    loaded = Predictor(run.model, run.tokenizer, run.label_map, run.config.training.max_length)
    expected = bert_lora.predictor.logits(texts)
    torch.testing.assert_close(torch.from_numpy(loaded.logits(texts)), torch.from_numpy(expected))


def test_plain_peft_loads_the_adapter(bert_lora: TrainedRun, tiny_bert: Path):
    plain = PeftModel.from_pretrained(AutoModel.from_pretrained(tiny_bert), bert_lora.path / "adapter").eval()
    batch = _batch(bert_lora.predictor.tokenizer)
    ours = bert_lora.predictor.model.eval().backbone
    with torch.no_grad():
        torch.testing.assert_close(plain(**batch).last_hidden_state, ours(**batch).last_hidden_state)
