"""Base models: name resolution, pooling against hand computations, the label map, metrics, cached features."""

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from tiny import HIDDEN

from tunelab.assets.models import model_kind, resolve_model
from tunelab.errors import TunelabError
from tunelab.modeling import load_backbone, load_tokenizer, pool
from tunelab.tasks.classification import LabelMap, SequenceClassifier, classification_metrics
from tunelab.tasks.inputs import TextEncoder
from tunelab.training.features import extract_features
from tunelab.training.trainer import encode_examples

# --- model resolution -----------------------------------------------------------------------------------------


def test_tiny_bert_is_an_encoder_with_cls_pooling(tiny_bert: Path):
    spec = resolve_model(str(tiny_bert))
    assert (spec.name, spec.path, spec.kind, spec.pooling) == (str(tiny_bert), str(tiny_bert), "encoder", "cls")


def test_tiny_llama_is_causal_with_last_token_pooling(tiny_llama: Path):
    spec = resolve_model(str(tiny_llama))
    assert (spec.kind, spec.pooling) == ("causal", "last")


@pytest.mark.parametrize(("flags", "pooling"), [
    ({"pooling_mode_mean_tokens": True, "pooling_mode_cls_token": False}, "mean"),
    ({"pooling_mode_mean_tokens": False, "pooling_mode_cls_token": True}, "cls"),
    ({"pooling_mode_lasttoken": True}, "last"),
    ({"pooling_mode_max_tokens": True}, "cls"),  # not one tunelab knows: the kind's default
])
def test_sentence_transformers_pooling_config_wins(tiny_bert: Path, tmp_path: Path, flags: dict, pooling: str):
    folder = tmp_path / "st-model"
    (folder / "1_Pooling").mkdir(parents=True)
    shutil.copyfile(tiny_bert / "config.json", folder / "config.json")
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": HIDDEN, **flags}))
    spec = resolve_model(str(folder))
    assert (spec.kind, spec.pooling) == ("encoder", pooling)


@pytest.mark.parametrize("name", ["./nope", "nope", "/definitely/not/here", "~/not-a-model-folder", "a/b/c"])
def test_unknown_model_names(name: str):
    with pytest.raises(TunelabError, match=f"unknown model '{name}'"):
        resolve_model(name)


def test_unknown_hub_id_offline():
    with pytest.raises(TunelabError, match="model 'no-such-owner/no-such-model' is not embedded"):
        resolve_model("no-such-owner/no-such-model")


def test_folder_without_config(tmp_path: Path):
    with pytest.raises(TunelabError, match="has no config.json"):
        resolve_model(str(tmp_path))


@pytest.mark.parametrize(("model_type", "kind"), [("bert", "encoder"), ("roberta", "encoder"),
                                                  ("llama", "causal"), ("gpt2", "causal")])
def test_model_kind(model_type: str, kind: str):
    assert model_kind(model_type) == kind


def test_tokenizer_pads_on_the_right_for_last_token_pooling(tiny_llama: Path):
    tokenizer = load_tokenizer(resolve_model(str(tiny_llama)))
    assert tokenizer.padding_side == "right"
    batch = tokenizer(["good", "a much longer text"], padding=True)
    assert batch["attention_mask"][0][:3] == [1, 1, 1] and batch["attention_mask"][0][-1] == 0


# --- pooling --------------------------------------------------------------------------------------------------

HIDDEN_STATES = torch.tensor([
    [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [100.0, 100.0]],
    [[-1.0, 0.0], [7.0, 1.0], [-50.0, 50.0], [-50.0, 50.0]],
])  # (B=2, T=4, H=2)
MASK = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])  # right padding: lengths 3 and 2


def test_mean_pooling_ignores_padding():
    expected = torch.tensor([[(1 + 3 + 5) / 3, (2 + 4 + 6) / 3], [(-1 + 7) / 2, (0 + 1) / 2]])
    torch.testing.assert_close(pool(HIDDEN_STATES, MASK, "mean"), expected)


def test_cls_pooling_takes_the_first_token():
    torch.testing.assert_close(pool(HIDDEN_STATES, MASK, "cls"), torch.tensor([[1.0, 2.0], [-1.0, 0.0]]))


def test_last_pooling_takes_the_last_real_token():
    torch.testing.assert_close(pool(HIDDEN_STATES, MASK, "last"), torch.tensor([[5.0, 6.0], [7.0, 1.0]]))


def test_pooling_full_rows_and_shapes():
    hidden = torch.randn(3, 5, 4)
    mask = torch.ones(3, 5, dtype=torch.long)
    torch.testing.assert_close(pool(hidden, mask, "mean"), hidden.mean(dim=1))
    torch.testing.assert_close(pool(hidden, mask, "last"), hidden[:, -1])
    assert pool(hidden, mask, "cls").shape == (3, 4)


def test_classifier_embed_equals_pooled_backbone_output(tiny_bert: Path):
    spec = resolve_model(str(tiny_bert))
    tokenizer = load_tokenizer(spec)
    torch.manual_seed(0)
    model = SequenceClassifier(load_backbone(spec), 3, "mean").eval()
    batch = tokenizer(["good film", "a rather long and awful film indeed"], padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model.backbone(**batch).last_hidden_state
        vectors = model.embed(batch["input_ids"], batch["attention_mask"])
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    lengths = batch["attention_mask"].sum(dim=1).tolist()
    expected = torch.stack([hidden[row, :length].mean(dim=0) for row, length in enumerate(lengths)])
    torch.testing.assert_close(vectors, expected)
    linear = model.head[1]
    torch.testing.assert_close(logits, vectors @ linear.weight.T + linear.bias)
    assert logits.shape == (2, 3)


# --- label map and metrics ------------------------------------------------------------------------------------


def test_label_map_preferred_order_first_then_sorted():
    label_map = LabelMap.from_values(["b", "positive", "a", "negative", "b"], preferred=("negative", "x", "positive"))
    assert label_map.labels == ["negative", "positive", "a", "b"]
    assert label_map.encode(["a", "negative", "b"], "data") == [2, 0, 3]


def test_label_map_without_preference_is_sorted():
    assert LabelMap.from_values(["pos", "neg", "neu", "pos"]).labels == ["neg", "neu", "pos"]


def test_encode_unknown_label_names_it_and_the_known_ones():
    label_map = LabelMap(["negative", "positive"])
    with pytest.raises(TunelabError) as error:
        label_map.encode(["positive", "neutral", "mixed"], "eval.csv")
    message = str(error.value)
    assert message.startswith("eval.csv has label(s) 'mixed', 'neutral'")
    assert message.endswith("it knows negative, positive")


@pytest.mark.parametrize("values", [[], ["positive"], ["positive", "positive"]])
def test_fewer_than_two_labels(values: list[str]):
    with pytest.raises(TunelabError, match=f"at least 2 labels, the data has {len(set(values))}"):
        LabelMap.from_values(values)


def test_classification_metrics_by_hand():
    label_map = LabelMap(["negative", "neutral", "positive"])
    truth = np.array([0, 0, 1, 1, 2, 2])
    predicted = np.array([0, 1, 1, 1, 2, 0])
    logits = np.eye(3)[predicted]
    metrics = classification_metrics(logits, truth, label_map)
    assert metrics["accuracy"] == pytest.approx(4 / 6)
    # per class (precision, recall, F1): negative (1/2, 1/2, 1/2), neutral (2/3, 1, 4/5), positive (1, 1/2, 2/3)
    assert metrics["per_class"]["neutral"]["precision"] == pytest.approx(2 / 3)
    assert metrics["per_class"]["positive"]["recall"] == pytest.approx(1 / 2)
    assert metrics["per_class"]["positive"]["f1-score"] == pytest.approx(2 / 3)
    assert metrics["per_class"]["negative"]["support"] == 2
    assert metrics["macro_f1"] == pytest.approx((1 / 2 + 4 / 5 + 2 / 3) / 3)
    assert metrics["examples"] == 6


def test_classification_metrics_absent_class_scores_zero():
    label_map = LabelMap(["a", "b", "c"])
    metrics = classification_metrics(np.eye(3)[[0, 1]], np.array([0, 1]), label_map)
    assert metrics["accuracy"] == 1.0
    assert metrics["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "f1-score": 0.0, "support": 0.0}
    assert metrics["macro_f1"] == pytest.approx(2 / 3)


# --- cached features ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model_fixture", ["tiny_bert", "tiny_llama"])
def test_extracted_features_keep_the_input_order(model_fixture: str, request: pytest.FixtureRequest):
    spec = resolve_model(str(request.getfixturevalue(model_fixture)))
    tokenizer = load_tokenizer(spec)
    model = SequenceClassifier(load_backbone(spec), 2, spec.pooling)
    model.train()
    texts = ["a rather long text about a good film", "bad", "a medium length text", "ok", "the end of it all"]
    encoded = encode_examples(TextEncoder(tokenizer, 16), pd.DataFrame({"text": texts}), [0, 1, 0, 1, 0])
    features = extract_features(model, encoded, tokenizer, batch_size=2, description="test", progress=False)
    assert model.training  # restored
    assert features.shape == (5, HIDDEN)
    with torch.no_grad():
        model.eval()
        singles = [tokenizer([text], return_tensors="pt") for text in texts]
        one_by_one = torch.cat([model.embed(one["input_ids"], one["attention_mask"]) for one in singles])
    torch.testing.assert_close(features, one_by_one, atol=1e-5, rtol=1e-4)
