"""The PEFT strategies (lora, ia3) on tiny random models: closed-form parameter counts, an update that starts
as the identity, frozen base weights, a delta in PEFT's own format that plain `peft` loads, save -> load."""

import re
from pathlib import Path

import pytest
import torch
import transformers
from peft import PeftModel
from tiny import HIDDEN, TrainedRun, build_model, load_splits, tiny_config, train_recording
from transformers import AutoModel

from tunelab.assets.models import resolve_model
from tunelab.errors import TunelabError
from tunelab.modeling import load_backbone
from tunelab.predict import Predictor
from tunelab.recipes.runs import load_run
from tunelab.strategies.registry import get_strategy, parse_options
from tunelab.tasks.classification import SequenceClassifier

INNER, LAYERS, LABELS = 64, 2, 2


WEIGHT_ADAPTERS = ["lora", "ia3"]
PROMPT_METHODS = ["prefix", "prompt-tuning", "p-tuning"]
PEFT_STRATEGIES = WEIGHT_ADAPTERS + PROMPT_METHODS


@pytest.fixture(scope="module", params=PEFT_STRATEGIES)
def bert_peft(request: pytest.FixtureRequest, tiny_bert: Path, sentiment_csv: Path, runs_dir: Path) -> TrainedRun:
    return train_recording(tiny_config(tiny_bert, sentiment_csv, runs_dir / f"bert-{request.param}", request.param))


def _classifier(model_dir: Path, options: dict | None = None, strategy_name: str = "lora") -> SequenceClassifier:
    spec = resolve_model(str(model_dir))
    model = SequenceClassifier(load_backbone(spec), LABELS, spec.pooling)
    strategy = get_strategy(strategy_name)
    strategy.apply(model, parse_options(strategy, options or {}))
    return model


def _batch(tokenizer) -> dict[str, torch.Tensor]:
    return dict(tokenizer(["good great film", "awful"], padding=True, return_tensors="pt"))


@pytest.mark.parametrize("rank", [1, 8])
def test_trainable_parameters_match_the_closed_form(tiny_bert: Path, rank: int):
    head = HIDDEN * LABELS + LABELS
    model = _classifier(tiny_bert, {"r": rank})  # default: query and value (d x d each): r (d_in + d_out)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == LAYERS * rank * 2 * 2 * HIDDEN + head
    model = _classifier(tiny_bert, {"r": rank, "target_modules": "all-linear"})
    # per block: query, key, value, attention output (d x d), intermediate (d -> 4d), output (4d -> d)
    per_block = rank * (4 * (HIDDEN + HIDDEN) + (HIDDEN + INNER) + (INNER + HIDDEN))
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == LAYERS * per_block + head


def test_ia3_parameters_match_the_closed_form(tiny_bert: Path):
    model = _classifier(tiny_bert, strategy_name="ia3")
    # per block: key and value outputs (d each); attention.output.dense and output.dense inputs (d and 4d), since
    # PEFT's BERT default `output.dense` matches both and marks them feed-forward
    per_block = HIDDEN + HIDDEN + HIDDEN + INNER
    head = HIDDEN * LABELS + LABELS
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == LAYERS * per_block + head


def _adapted(model: torch.nn.Module) -> list[str]:
    return [name.removesuffix(".lora_A") for name, _ in model.named_modules() if name.endswith(".lora_A")]


def test_all_linear_leaves_out_the_pooler_and_embeddings(tiny_bert: Path):
    adapted = _adapted(_classifier(tiny_bert, {"target_modules": "all-linear"}))
    assert len(adapted) == LAYERS * 6
    assert not [name for name in adapted if "pooler" in name or "embeddings" in name]


def test_default_and_chosen_targets(tiny_bert: Path, tiny_llama: Path):
    assert {name.rsplit(".", 1)[1] for name in _adapted(_classifier(tiny_bert))} == {"query", "value"}
    assert {name.rsplit(".", 1)[1] for name in _adapted(_classifier(tiny_llama))} == {"q_proj", "v_proj"}
    adapted = _adapted(_classifier(tiny_bert, {"target_modules": ["key", "attention.output.dense"]}))
    assert len(adapted) == LAYERS * 2 and all(name.endswith(("key", "attention.output.dense")) for name in adapted)


def test_unknown_target_modules_is_a_one_line_error(tiny_bert: Path):
    with pytest.raises(TunelabError, match=r"^lora: target module\(s\) no_such_layer match no layer of this model"):
        _classifier(tiny_bert, {"target_modules": ["no_such_layer"]})


def test_training_moves_only_the_update_and_the_head(bert_peft: TrainedRun, tiny_bert: Path):
    trained_base = bert_peft.predictor.model.backbone.get_base_model().state_dict()
    for name, tensor in AutoModel.from_pretrained(tiny_bert).state_dict().items():
        key = name
        if key not in trained_base:  # an adapted layer keeps its pre-trained weights under base_layer
            key = key.replace(".weight", ".base_layer.weight").replace(".bias", ".base_layer.bias")
        assert torch.equal(trained_base[key], tensor), name
    trained = bert_peft.predictor.model.state_dict()
    _, label_map = load_splits(bert_peft.config)
    transformers.set_seed(bert_peft.config.training.seed)
    initial = build_model(bert_peft.config, label_map).state_dict()
    moved = [name for name in trained if not torch.equal(trained[name], initial[name])]
    update = re.compile(r"\.(lora_A|lora_B|ia3_l|prompt_encoder)\.")
    assert moved and all(update.search(name) or name.startswith("head.") for name in moved)
    assert any(not name.startswith("head.") for name in moved)
    assert bert_peft.metrics["test"]["accuracy"] >= 0.75


def test_the_delta_is_the_adapter_and_the_head(bert_peft: TrainedRun):
    files = sorted(str(path.relative_to(bert_peft.path)) for path in bert_peft.path.rglob("*") if path.is_file())
    assert files == ["adapter/README.md", "adapter/adapter_config.json", "adapter/adapter_model.safetensors",
                     "config.yaml", "data_checks.json", "delta.safetensors", "labels.json", "manifest.json",
                     "metrics.json", "resources.json"]
    delta = [bert_peft.path / "delta.safetensors", *sorted((bert_peft.path / "adapter").iterdir())]
    assert bert_peft.resources["delta_bytes"] == sum(path.stat().st_size for path in delta)


def test_save_then_load_predicts_the_same(bert_peft: TrainedRun):
    texts = ["good great film", "awful terrible", "nice"]
    run = load_run(bert_peft.path)
    loaded = Predictor(run.model, run.tokenizer, run.targets, run.config.training.max_length)
    expected = bert_peft.predictor.logits(texts)
    torch.testing.assert_close(torch.from_numpy(loaded.logits(texts)), torch.from_numpy(expected))


def test_plain_peft_loads_the_adapter(bert_peft: TrainedRun, tiny_bert: Path):
    plain = PeftModel.from_pretrained(AutoModel.from_pretrained(tiny_bert), bert_peft.path / "adapter").eval()
    batch = _batch(bert_peft.predictor.tokenizer)
    ours = bert_peft.predictor.model.eval().backbone
    with torch.no_grad():
        torch.testing.assert_close(plain(**batch).last_hidden_state, ours(**batch).last_hidden_state)


def test_a_target_that_fits_neither_form_names_both():
    with pytest.raises(TunelabError) as error:
        parse_options(get_strategy("lora"), {"target_modules": "all-conv"})
    assert str(error.value) == ("strategy lora: option 'target_modules': Input should be a valid list or Input should "
                                "be 'all-linear'")
