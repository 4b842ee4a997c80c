"""The virtual-token strategies (prefix, prompt-tuning, p-tuning): closed-form parameter counts, pooling over
the text's own positions, reparameterised prompts that load back exactly, and architectures they cannot adapt."""

from pathlib import Path

import pytest
import torch
from tiny import HIDDEN, tiny_config, train_recording
from transformers import AutoTokenizer, ModernBertConfig, ModernBertModel

from tunelab.assets.models import resolve_model
from tunelab.errors import TunelabError
from tunelab.modeling import load_backbone, pool
from tunelab.predict import Predictor
from tunelab.recipes.runs import load_run
from tunelab.strategies.registry import get_strategy, parse_options
from tunelab.tasks.classification import SequenceClassifier

LAYERS, LABELS, VIRTUAL = 2, 2, 3
HEAD = HIDDEN * LABELS + LABELS


def _apply(backbone: torch.nn.Module, strategy_name: str, options: dict) -> SequenceClassifier:
    model = SequenceClassifier(backbone, LABELS, "mean")
    strategy = get_strategy(strategy_name)
    strategy.apply(model, parse_options(strategy, {"virtual_tokens": VIRTUAL, **options}))
    return model


def _trainable(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _lstm(input_size: int, hidden: int) -> int:
    """One bidirectional LSTM layer: per direction 4 gates of (input + hidden) weights and two biases."""
    return 2 * 4 * (hidden * (input_size + hidden) + 2 * hidden)


@pytest.mark.parametrize(("strategy", "options", "expected"), [
    ("prefix", {}, VIRTUAL * LAYERS * 2 * HIDDEN),  # a key and a value vector per layer and virtual token
    ("prefix", {"projection": True, "projection_size": 16},  # embeddings, then the MLP d -> 16 -> layers*2*d
     VIRTUAL * HIDDEN + (HIDDEN * 16 + 16) + (16 * LAYERS * 2 * HIDDEN + LAYERS * 2 * HIDDEN)),
    ("prompt-tuning", {}, VIRTUAL * HIDDEN),
    ("p-tuning", {"encoder": "mlp", "encoder_size": 8},  # embeddings, then d -> 8 -> 8 -> d
     VIRTUAL * HIDDEN + (HIDDEN * 8 + 8) + (8 * 8 + 8) + (8 * HIDDEN + HIDDEN)),
    ("p-tuning", {"encoder": "lstm", "encoder_size": 8},  # embeddings, a 2-layer BiLSTM, then 2h -> 2h -> d
     VIRTUAL * HIDDEN + _lstm(HIDDEN, 8) + _lstm(16, 8) + (16 * 16 + 16) + (16 * HIDDEN + HIDDEN)),
])
def test_trainable_parameters_match_the_closed_form(tiny_bert: Path, strategy: str, options: dict, expected: int):
    model = _apply(load_backbone(resolve_model(str(tiny_bert))), strategy, options)
    assert _trainable(model) == expected + HEAD


@pytest.mark.parametrize("strategy", ["prompt-tuning", "p-tuning"])
def test_pooling_reads_only_the_text_positions(tiny_bert: Path, strategy: str):
    model = _apply(load_backbone(resolve_model(str(tiny_bert))), strategy, {}).eval()
    batch = AutoTokenizer.from_pretrained(tiny_bert)(["good film", "awful awful film"], padding=True,
                                                     return_tensors="pt")
    with torch.no_grad():
        hidden = model.backbone(**batch).last_hidden_state
        assert hidden.shape[1] == VIRTUAL + batch["input_ids"].shape[1]
        expected = pool(hidden[:, VIRTUAL:], batch["attention_mask"], "mean")
        torch.testing.assert_close(model.embed(batch["input_ids"], batch["attention_mask"]), expected)


@pytest.mark.parametrize(("strategy", "options"), [("prefix", {"projection": True, "projection_size": 16}),
                                                   ("p-tuning", {"encoder": "mlp", "encoder_size": 16})])
def test_reparameterised_prompts_load_back_exactly(tiny_bert: Path, sentiment_csv: Path, tmp_path: Path,
                                                   strategy: str, options: dict):
    """PEFT saves the prompts the MLP produces, not the MLP: the loaded run must still predict the same."""
    trained = train_recording(tiny_config(tiny_bert, sentiment_csv, tmp_path / "run", strategy, options, epochs=1))
    run = load_run(trained.path)
    texts = ["good great film", "awful terrible", "nice"]
    loaded = Predictor(run.model, run.tokenizer, run.targets, run.config.training.max_length)
    torch.testing.assert_close(torch.from_numpy(loaded.logits(texts)),
                               torch.from_numpy(trained.predictor.logits(texts)))


def test_prefix_on_attention_without_a_cache_is_refused():
    """ModernBERT's attention takes no past keys/values: PEFT's prefix would be silently ignored."""
    config = ModernBertConfig(hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=2,
                              intermediate_size=64, vocab_size=100, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                              cls_token_id=1, sep_token_id=2)
    with pytest.raises(TunelabError, match=r"^prefix cannot adapt model type 'modernbert' \(its attention ignores "
                                           r"the virtual tokens\); choose another strategy, e\.g\. lora$"):
        _apply(ModernBertModel(config), "prefix", {})
    assert _apply(ModernBertModel(config), "prompt-tuning", {})  # input-side prompts do reach it


def test_prompt_text_init_needs_its_text():
    with pytest.raises(TunelabError, match="^strategy prompt-tuning: options: init_text goes with init=text"):
        parse_options(get_strategy("prompt-tuning"), {"init": "text"})


def test_prompt_initialised_from_text(tiny_bert: Path):
    """init=text starts the prompt at the embeddings of the text's tokens, special tokens included (PEFT's rule)."""
    text = "is this review good or bad"
    model = _apply(load_backbone(resolve_model(str(tiny_bert))), "prompt-tuning",
                   {"init": "text", "init_text": text, "virtual_tokens": 6})
    ids = AutoTokenizer.from_pretrained(tiny_bert)(text)["input_ids"][:6]
    embeddings = model.backbone.get_base_model().embeddings.word_embeddings.weight[ids]
    torch.testing.assert_close(model.backbone.prompt_encoder["default"].embedding.weight, embeddings)
