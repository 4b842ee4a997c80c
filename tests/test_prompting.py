"""Prompt-based classification: the template language, its encoding, label words, scores against a hand
computation, calibration, and the zero-shot, pet and soft-template strategies end to end on tiny LMs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from tiny import load_splits, sentiment_frame, write_table

from tunelab import api, build_config
from tunelab.assets.models import resolve_model
from tunelab.config import PromptConfig
from tunelab.data.splits import few_shot, split_examples
from tunelab.errors import TunelabError
from tunelab.modeling import load_tokenizer
from tunelab.predict import Predictor
from tunelab.prompting.encoding import TemplateEncoder
from tunelab.prompting.model import PromptClassifier, build_prompt_classifier, calibrated
from tunelab.prompting.template import Field, LabelSlot, Soft, Template, Text
from tunelab.prompting.verbalizer import Verbalizer
from tunelab.recipes.runs import load_run

LABELS = ["negative", "positive"]
TEXTS = ["good great film", "awful", "a long text about a terrible and dreadful film"]


def _classifier(model_dir: Path, template: str, verbalizer: dict | None = None, max_length: int = 32,
                **prompt) -> PromptClassifier:
    spec = resolve_model(str(model_dir))
    config = PromptConfig(template=template, verbalizer=verbalizer, **prompt)
    return build_prompt_classifier(spec, load_tokenizer(spec), config, LABELS, max_length).eval()


def _batch(model: PromptClassifier, texts: list[str]) -> dict[str, torch.Tensor]:
    return model.encoder.tokenizer.pad(model.encoder(pd.DataFrame({"text": texts})), return_tensors="pt")


# --- the template language ------------------------------------------------------------------------------------


def test_template_parses_fields_slot_soft_tokens_and_moves_whitespace_forward():
    template = Template.parse("Review: {text}\nSentiment: {label} {{ok}} {soft:2}{soft:It was}{soft}")
    assert template.segments == (
        Text("Review:"), Field("text", lead=" "), Text("\nSentiment:"), LabelSlot(lead=" "), Text(" {ok} "),
        Soft(count=2), Soft(init="It was"), Soft())
    assert template.fields == ["text"]


def test_template_without_a_slot_gets_one_at_the_end():
    template = Template.parse("{text} It was")
    assert template.segments == (Field("text"), Text(" It was"), LabelSlot())
    assert template.ends_with_label_slot()


def test_softened_template_keeps_inputs_slot_and_edge_whitespace():
    softened = Template.parse("Review: {text}\nSentiment: {label}").softened()
    assert softened.segments == (Soft(init="Review:"), Field("text", lead=" "), Text("\n"),
                                 Soft(init="Sentiment:"), LabelSlot(lead=" "))


@pytest.mark.parametrize(("source", "message"), [
    ("{text} {label} and {label}", "has 2 label slots; keep one {label}"),
    ("It was {label}", "reads no input: put {text} where the text goes"),
    ("{text} {bad-name}", "'{bad-name}' at character 7 is not a placeholder"),
    ("{text} {}", "'{}' at character 7 is not a placeholder"),
    ("{text} }", "unbalanced '}' at character 7; write }} for a literal brace"),
    ("{text} {soft:0}", "{soft:0} asks for no soft tokens"),
])
def test_template_errors_say_what_to_write(source: str, message: str):
    with pytest.raises(TunelabError, match="template") as error:
        Template.parse(source)
    assert message in str(error.value)


# --- encoding -------------------------------------------------------------------------------------------------


def test_masked_lm_slot_is_where_the_template_puts_it_and_soft_tokens_shift_it(tiny_bert_mlm: Path):
    tokenizer = load_tokenizer(resolve_model(str(tiny_bert_mlm)))
    plain = TemplateEncoder(Template.parse("{text} It was {label}."), tokenizer, 32, causal=False, soft_base=30522)
    ids = plain(pd.DataFrame({"text": ["good great film"]}))["input_ids"][0]
    pieces = tokenizer("good great film it was", add_special_tokens=False)["input_ids"]
    assert ids == [tokenizer.cls_token_id, *pieces, tokenizer.mask_token_id, *tokenizer(".")["input_ids"][1:]]
    assert ids.index(tokenizer.mask_token_id) == 1 + len(pieces)

    soft = TemplateEncoder(Template.parse("{soft:2}{text} {soft:It was} {label}."), tokenizer, 32, causal=False,
                           soft_base=30522)
    shifted = soft(pd.DataFrame({"text": ["good great film"]}))["input_ids"][0]
    assert shifted[1:3] == [30522, 30523]  # the two random soft tokens, then the text
    assert shifted[6:8] == [30524, 30525]  # "it was" as two soft tokens
    assert shifted.index(tokenizer.mask_token_id) == ids.index(tokenizer.mask_token_id) + 2
    assert soft.soft_init_ids == [None, None, *tokenizer("It was", add_special_tokens=False)["input_ids"]]


def test_causal_template_ends_at_the_slot_and_text_is_truncated_not_the_template(tiny_llama_lm: Path):
    tokenizer = load_tokenizer(resolve_model(str(tiny_llama_lm)))
    encoder = TemplateEncoder(Template.parse("Review: {text}\nSentiment: {label}"), tokenizer, 12, causal=True,
                              soft_base=30522)
    short, long = encoder(pd.DataFrame({"text": ["good", "good " * 50]}))["input_ids"]
    tail = tokenizer("\nSentiment:", add_special_tokens=False)["input_ids"]
    assert short[0] == tokenizer.cls_token_id and short[-len(tail):] == tail  # no [SEP] after the slot
    assert len(long) == 12 and long[-len(tail):] == tail


def test_a_review_that_says_mask_cannot_fake_a_slot(tiny_bert_mlm: Path):
    tokenizer = load_tokenizer(resolve_model(str(tiny_bert_mlm)))
    encoder = TemplateEncoder(Template.parse("{text} It was {label}."), tokenizer, 32, False, 30522)
    ids = encoder(pd.DataFrame({"text": ["a [MASK] film"]}))["input_ids"][0]
    assert ids.count(tokenizer.mask_token_id) == 1


def test_encoding_errors(tiny_bert_mlm: Path, tiny_llama_lm: Path):
    tokenizer = load_tokenizer(resolve_model(str(tiny_llama_lm)))
    with pytest.raises(TunelabError, match="a causal LM predicts the label word .* so \\{label\\} must end"):
        TemplateEncoder(Template.parse("{text} It was {label}."), tokenizer, 32, True, 30522)
    with pytest.raises(TunelabError, match="takes 7 of the 6 tokens allowed, leaving none for the input"):
        TemplateEncoder(Template.parse("{text} this template is much too long"), tokenizer, 6, True, 30522)
    encoder = TemplateEncoder(Template.parse("{text} and {other}"), tokenizer, 32, True, 30522)
    with pytest.raises(TunelabError, match="reads \\{other\\}, which these examples do not have"):
        encoder(pd.DataFrame({"text": ["x"]}))


# --- label words ----------------------------------------------------------------------------------------------


def test_verbalizer_words_keep_their_leading_space_and_default_to_the_label_names():
    given = Verbalizer.build({"positive": " great, good", "negative": ["bad"]}, LABELS)
    assert given.words == {"negative": ("bad",), "positive": (" great", " good")}  # in the labels' order
    assert Verbalizer.build(None, LABELS).words == {"negative": ("negative",), "positive": ("positive",)}


@pytest.mark.parametrize(("given", "message"), [
    ({"positive": "good"}, "verbalizer has no words for label 'negative'; add --verbalizer 'negative=word, word'"),
    ({"positive": "good", "negative": "bad", "neutral": "ok"}, "names label 'neutral', which the data does not"),
    ({"positive": "good,,great", "negative": "bad"}, "label 'positive' has an empty label word"),
])
def test_verbalizer_errors(given: dict, message: str):
    with pytest.raises(TunelabError) as error:
        Verbalizer.build(given, LABELS)
    assert message in str(error.value)


def test_a_word_that_tokenises_to_nothing_is_refused(tiny_bert_mlm: Path):
    tokenizer = load_tokenizer(resolve_model(str(tiny_bert_mlm)))
    with pytest.raises(TunelabError, match="label word '\\\\u200b' of 'positive' tokenises to nothing"):
        Verbalizer.build({"positive": ["\u200b"], "negative": ["bad"]}, LABELS).token_ids(tokenizer, " ")


# --- scores against a hand computation ------------------------------------------------------------------------


def test_causal_scores_equal_teacher_forced_log_probabilities(tiny_llama_lm: Path):
    model = _classifier(tiny_llama_lm, "Review: {text}\nSentiment: {label}",
                        {"negative": ["awful", "unwatchable"], "positive": ["great"]})
    tokenizer = model.encoder.tokenizer
    batch = _batch(model, TEXTS)  # rows of different lengths, padded on the right by the tokenizer
    scores = model.word_scores(batch["input_ids"], batch["attention_mask"])
    words = [tokenizer(w, add_special_tokens=False)["input_ids"] for w in (" awful", " unwatchable", " great")]
    assert [len(w) for w in words] == [1, 3, 1]
    with torch.no_grad():
        for row, ids in enumerate(model.encoder(pd.DataFrame({"text": TEXTS}))["input_ids"]):
            for column, word in enumerate(words):
                sequence = torch.tensor([ids + word[:-1]])
                log_probs = model.backbone(input_ids=sequence).logits[0].log_softmax(-1)
                expected = sum(log_probs[len(ids) - 1 + i, token] for i, token in enumerate(word))
                torch.testing.assert_close(scores[row, column], expected, atol=1e-4, rtol=1e-4)
    label_scores = model.label_scores(batch["input_ids"], batch["attention_mask"])
    torch.testing.assert_close(label_scores[:, 0], scores[:, :2].logsumexp(-1))
    torch.testing.assert_close(label_scores[:, 1], scores[:, 2])


def test_masked_lm_scores_read_one_mask_per_token(tiny_bert_mlm: Path):
    model = _classifier(tiny_bert_mlm, "{text} It was {label}.", {"negative": ["unwatchable"], "positive": ["great"]},
                        word_score="mean")
    tokenizer = model.encoder.tokenizer
    batch = _batch(model, TEXTS)
    scores = model.word_scores(batch["input_ids"], batch["attention_mask"])
    unwatchable = tokenizer("unwatchable", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        for row, ids in enumerate(model.encoder(pd.DataFrame({"text": TEXTS}))["input_ids"]):
            slot = ids.index(tokenizer.mask_token_id)
            three_masks = ids[:slot] + [tokenizer.mask_token_id] * 3 + ids[slot + 1:]
            log_probs = model.backbone(input_ids=torch.tensor([three_masks])).logits[0].log_softmax(-1)
            expected = torch.stack([log_probs[slot + i, token] for i, token in enumerate(unwatchable)]).mean()
            torch.testing.assert_close(scores[row, 0], expected, atol=1e-4, rtol=1e-4)
            one_mask = model.backbone(input_ids=torch.tensor([ids])).logits[0, slot].log_softmax(-1)
            torch.testing.assert_close(scores[row, 1], one_mask[tokenizer.convert_tokens_to_ids("great")],
                                       atol=1e-4, rtol=1e-4)


def test_calibration_divides_by_the_content_free_probabilities():
    raw = torch.log(torch.tensor([[0.6, 0.4], [0.9, 0.1]]))
    biased = torch.tensor([0.8, 0.2])  # the prompt leans to label 0 whatever the input
    decided = calibrated(raw, biased).softmax(-1)
    torch.testing.assert_close(decided[0], torch.tensor([0.75, 2.0]) / 2.75)  # 0.6/0.8 vs 0.4/0.2: flips to 1
    assert decided.argmax(-1).tolist() == [1, 0]  # 0.9/0.8 still beats 0.1/0.2: a clear case stays
    assert calibrated(raw, torch.tensor([0.5, 0.5])).argmax(-1).tolist() == [0, 0]  # no bias: no change


def test_calibrated_model_reads_its_content_free_inputs(tiny_llama_lm: Path):
    model = _classifier(tiny_llama_lm, "Review: {text}\nSentiment: {label}", calibrate=True)
    batch = _batch(model, TEXTS)
    content_free = _batch(model, ["N/A", "", "[MASK]"])
    expected_bias = model.label_scores(content_free["input_ids"], content_free["attention_mask"]).softmax(-1).mean(0)
    torch.testing.assert_close(model.content_free_probabilities(), expected_bias)
    raw = model.label_scores(batch["input_ids"], batch["attention_mask"])
    torch.testing.assert_close(model(**batch).logits, raw.log_softmax(-1) - expected_bias.log())


def test_the_content_free_bias_follows_the_weights_as_they_are(tiny_llama_lm: Path):
    model = _classifier(tiny_llama_lm, "Review: {text}\nSentiment: {label}", calibrate=True)
    first = model.content_free_probabilities()
    torch.testing.assert_close(model.content_free_probabilities(), first)
    with torch.no_grad():
        model.backbone.lm_head.weight.mul_(2.0)  # a change of the weights, with no train()/eval() in between
    assert not torch.allclose(model.content_free_probabilities(), first)


def test_an_untrained_soft_template_classifies_as_its_manual_template(tiny_llama_lm: Path):
    for encoder in ("none", "lstm", "mlp"):
        manual = _classifier(tiny_llama_lm, "Review: {text}\nSentiment: {label}")
        soft = _classifier(tiny_llama_lm, "Review: {text}\nSentiment: {label}")
        soft.soften_template(encoder, 8)
        assert soft.head.vectors.shape[0] > 0
        expected = manual(**_batch(manual, TEXTS)).logits
        torch.testing.assert_close(soft(**_batch(soft, TEXTS)).logits, expected, atol=1e-5, rtol=1e-5)


def test_a_model_without_a_masked_lm_head_is_refused(tiny_bert: Path):
    with pytest.raises(TunelabError, match="has no trained masked-LM head .* use --model smollm2"):
        _classifier(tiny_bert, "{text} It was {label}.")


# --- few-shot sampling ----------------------------------------------------------------------------------------


def test_few_shot_draws_k_per_label_for_training_and_validation_and_keeps_the_test_split():
    splits = split_examples(sentiment_frame(200), 0.2, 0.2, seed=0)
    sampled = few_shot(splits, 4, seed=1)
    assert sampled.train["label"].value_counts().to_dict() == {"negative": 4, "positive": 4}
    assert sampled.validation["label"].value_counts().to_dict() == {"negative": 4, "positive": 4}
    assert sampled.test.equals(splits.test)
    assert set(sampled.train["text"]) <= set(splits.train["text"])
    assert few_shot(splits, 4, seed=1).train.equals(sampled.train)
    assert not few_shot(splits, 4, seed=2).train.equals(sampled.train)
    with pytest.raises(TunelabError, match="--shots 100: the training split has only"):
        few_shot(splits, 100, seed=1)


# --- strategies end to end ------------------------------------------------------------------------------------


def _prompt_config(model_dir: Path, data: Path, output: Path | None, strategy: str, options: dict | None = None,
                   **training):
    settings = {"max_length": 24, "batch_size": 8, "eval_batch_size": 16, "epochs": 6, "learning_rate": 1e-2,
                **training}
    return build_config({"model": str(model_dir), "data": {"source": str(data)},
                         "strategy": {"name": strategy, "options": options or {}},
                         "prompt": {"template": "{text} It was {label}"}, "training": settings,
                         "output": str(output) if output else None})


def _training_loss(predictor: Predictor, frame: pd.DataFrame) -> float:
    targets = torch.tensor([LABELS.index(label) for label in frame["label"]])
    return torch.nn.functional.cross_entropy(torch.from_numpy(predictor.logits(frame)), targets).item()


@pytest.mark.parametrize(("strategy", "options", "training"), [
    ("pet", {}, {"learning_rate": 3e-3}),
    ("pet", {"tune": "lora", "tune_options": {"r": 4}}, {"learning_rate": 2e-2}),
    ("soft-template", {}, {"learning_rate": 3e-2}),
    ("soft-template", {"encoder": "lstm", "encoder_size": 16}, {"learning_rate": 1e-2}),
])
def test_prompt_strategies_train_save_and_reload(strategy: str, options: dict, training: dict, tiny_llama_lm: Path,
                                                 sentiment_csv: Path, tmp_path: Path):
    config = _prompt_config(tiny_llama_lm, sentiment_csv, tmp_path / "run", strategy, options, **training)
    zero = api.zero_shot(config)
    result = api.train(config, progress=False)
    train_frame = load_splits(config)[0].train
    untrained = Predictor(_classifier(tiny_llama_lm, "{text} It was {label}", max_length=24),
                          result.predictor.tokenizer, result.predictor.targets, 24)
    assert _training_loss(result.predictor, train_frame) < 0.9 * _training_loss(untrained, train_frame)
    assert result.metrics["test"]["examples"] == zero["examples"]
    loaded = load_run(result.path)
    assert loaded.config.prompt.template == "{text} It was {label}"
    assert loaded.config.prompt.verbalizer == {"negative": ["negative"], "positive": ["positive"]}
    reloaded = Predictor(loaded.model, loaded.tokenizer, loaded.targets, 24)
    np.testing.assert_allclose(reloaded.logits(TEXTS), result.predictor.logits(TEXTS), rtol=0, atol=1e-5)


def test_pet_on_a_masked_lm_learns(tiny_bert_mlm: Path, sentiment_csv: Path, tmp_path: Path):
    config = _prompt_config(tiny_bert_mlm, sentiment_csv, tmp_path / "run", "pet", learning_rate=3e-3)
    result = api.train(config, progress=False)
    assert result.metrics["test"]["accuracy"] >= 0.75
    assert result.resources["trainable_share"] == 1.0


def test_zero_shot_run_has_no_delta_and_predicts_like_the_base_model(tiny_llama_lm: Path, sentiment_csv: Path,
                                                                      tmp_path: Path):
    config = _prompt_config(tiny_llama_lm, sentiment_csv, tmp_path / "run", "zero-shot")
    result = api.train(config, progress=False)
    assert result.resources["trainable_parameters"] == 0 and result.resources["delta_bytes"] == 0
    assert result.metrics["test"] == api.zero_shot(config)
    predictor = api.load_predictor(result.path)
    base = Predictor(_classifier(tiny_llama_lm, "{text} It was {label}", max_length=24), predictor.tokenizer,
                     predictor.targets, 24)
    np.testing.assert_allclose(predictor.logits(TEXTS), base.logits(TEXTS), rtol=0, atol=1e-6)


def test_prompt_based_runs_are_not_exported(tiny_llama_lm: Path, sentiment_csv: Path, tmp_path: Path):
    from tunelab.export import export_merged

    result = api.train(_prompt_config(tiny_llama_lm, sentiment_csv, tmp_path / "run", "zero-shot"), progress=False)
    with pytest.raises(TunelabError, match="zero-shot runs classify through a template and label words"):
        export_merged(result.path, tmp_path / "export")
    assert not (tmp_path / "export").exists()


def test_templates_read_other_columns(tiny_llama_lm: Path, tmp_path: Path):
    frame = sentiment_frame(80).assign(title=lambda f: "title " + f["label"])
    data = write_table(frame, tmp_path / "titled.csv")
    config = _prompt_config(tiny_llama_lm, data, None, "zero-shot").model_copy(deep=True)
    config.prompt.template = "{title}: {text} It was {label}"
    assert api.zero_shot(config)["examples"] == 12
    config.prompt.template = "{headline}: {text} It was {label}"
    with pytest.raises(TunelabError, match="reads \\{headline\\}, but .* has no column 'headline'"):
        api.zero_shot(config)


@pytest.mark.parametrize(("strategy", "options", "prompt", "message"), [
    ("full", {}, {"template": "{text} It was {label}"},
     "template and label-word settings apply to the prompt-based strategies (zero-shot, pet, soft-template); "
     "full trains a new head instead"),
    ("zero-shot", {}, {"template": "{soft:2} {text} It was {label}"}, "zero-shot cannot use {soft} tokens"),
    ("pet", {"tune": "prefix"}, {}, "strategy pet: option 'tune': Input should be 'full', 'lora', 'ia3' or 'adapter'"),
    ("pet", {"tune": "lora", "tune_options": {"rank": 4}}, {}, "strategy lora has no option 'rank'"),
    ("soft-template", {}, {"template": "{text}{label}"}, "has no words to turn into soft tokens"),
])
def test_prompt_strategy_errors(strategy: str, options: dict, prompt: dict, message: str, tiny_llama_lm: Path,
                                sentiment_csv: Path, tmp_path: Path):
    config = build_config({"model": str(tiny_llama_lm), "data": {"source": str(sentiment_csv)},
                           "strategy": {"name": strategy, "options": options}, "prompt": prompt,
                           "output": str(tmp_path / "run")})
    with pytest.raises(TunelabError) as error:
        api.train(config, progress=False)
    assert message in str(error.value)
    assert not (tmp_path / "run").exists()
