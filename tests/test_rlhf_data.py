"""RLHF data: format detection and validation, preference pairs from ratings, and the movie-sentiment preset."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tunelab.errors import TunelabError
from tunelab.rlhf.data import detect_format, load_stage_data, movie_sentiment, preference_pairs, prompt_prefixes


@pytest.mark.parametrize(("columns", "expected"), [
    (["prompt", "chosen", "rejected"], ("preference", ("prompt", "chosen", "rejected"))),
    (["chosen", "rejected", "id"], ("preference", ("chosen", "rejected"))),
    (["prompt", "completion"], ("prompt-completion", ("prompt", "completion"))),
    (["text"], ("language-modelling", ("text",))),
    (["messages"], ("language-modelling", ("messages",))),
    (["prompt"], ("prompt-only", ("prompt",))),
])
def test_formats_are_told_by_their_columns(columns, expected):
    assert detect_format(columns) == expected


def test_unknown_columns_say_which_formats_exist():
    with pytest.raises(TunelabError, match="match no RLHF data format; give text"):
        detect_format(["review", "stars"])


def _jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return str(path)


def test_each_stage_reads_its_formats(tmp_path: Path):
    pairs = _jsonl(tmp_path / "prefs.jsonl", [{"prompt": "Q", "chosen": "good", "rejected": "bad"}])
    assert load_stage_data(pairs, "reward").to_dict("records") == [{"prompt": "Q", "chosen": "good",
                                                                     "rejected": "bad"}]
    with pytest.raises(TunelabError, match="holds preference data .* rlhf sft needs prompt-completion or "
                                           "language-modelling"):
        load_stage_data(pairs, "sft")
    chat = _jsonl(tmp_path / "chat.jsonl", [{"messages": [{"role": "user", "content": "hi"},
                                                          {"role": "assistant", "content": "hello"}]}])
    assert len(load_stage_data(chat, "sft")) == 1


@pytest.mark.parametrize(("rows", "message"), [
    ([{"messages": []}], "row 1: messages must be a non-empty list of {role, content}"),
    ([{"messages": [{"role": "user"}]}], "row 1: messages must be a non-empty list"),
    ([{"chosen": "a", "rejected": ""}], "row 1 has an empty rejected"),
])
def test_malformed_rows_are_named(tmp_path: Path, rows: list[dict], message: str):
    stage = "sft" if "messages" in rows[0] else "dpo"
    with pytest.raises(TunelabError, match=message.replace("{", r"\{").replace("}", r"\}")):
        load_stage_data(_jsonl(tmp_path / "data.jsonl", rows), stage)


def _rated(n: int, seed: int = 0) -> pd.DataFrame:
    ratings = np.random.default_rng(seed).uniform(-4, 4, size=n).round(2)
    return pd.DataFrame({"text": [f"snippet number {i} of the corpus" for i in range(n)], "rating": ratings})


def test_pairs_differ_by_the_gap_and_the_higher_rated_is_chosen():
    pairs = preference_pairs(_rated(200), count=150, gap=2.0, seed=3)
    assert len(pairs) == 150
    assert (pairs["chosen_rating"] - pairs["rejected_rating"] >= 2.0).all()
    assert len({frozenset(pair) for pair in zip(pairs["chosen"], pairs["rejected"], strict=True)}) == 150
    assert preference_pairs(_rated(200), count=150, gap=2.0, seed=3).equals(pairs)  # seeded


def test_a_gap_too_wide_for_the_data_is_a_clear_error():
    with pytest.raises(TunelabError, match="only 0 pairs of snippets differ by a rating gap of 9.0"):
        preference_pairs(_rated(50), count=10, gap=9.0, seed=0)


def test_prompts_are_prefixes_with_more_to_come():
    prompts = prompt_prefixes(pd.DataFrame({"text": ["a b c d e", "too short", "one two three four five six"]}), 4)
    assert prompts["prompt"].tolist() == ["a b c d", "one two three four"]


def test_training_and_test_sides_never_share_a_snippet():
    preset = movie_sentiment(_rated(400), train_pairs=200, test_pairs=40, gap=1.5, seed=1)
    train_texts = set(preset.sft["text"])
    test_texts = set(preset.pairs_test["chosen"]) | set(preset.pairs_test["rejected"])
    assert len(preset.sft) == 320 and not train_texts & test_texts
    assert set(preset.pairs_train["chosen"]) | set(preset.pairs_train["rejected"]) <= train_texts
    held_out = {" ".join(text.split()[:4]) for text in _rated(400)["text"] if text not in train_texts}
    assert set(preset.prompts_test["prompt"]) <= held_out
