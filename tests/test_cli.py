"""The `tunelab` command, run as a user runs it: a subprocess of the installed console script.

Each call pays about five seconds of imports, so the commands of a group run concurrently in one fixture
and the tests then read their results. Further error cases and the table outputs go through the same
entry point, `tunelab.cli.main`, in-process.
"""

import json
import logging
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml
from tiny import STRATEGY_TRAINING, TrainedRun, run_main, sentiment_frame, write_table

from tunelab.api import evaluate
from tunelab.cli.options import quiet_libraries

TUNELAB = Path(sys.executable).parent / "tunelab"


def run_all(commands: dict[str, list[str]], home: Path) -> dict[str, subprocess.CompletedProcess]:
    """Run `tunelab ARGS...` for each entry, a few at a time, offline and with a private TUNELAB_HOME."""
    env = {**os.environ, "TUNELAB_HOME": str(home), "HF_HOME": str(home / "hf"), "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "COLUMNS": "200"}

    def call(args: list[str]) -> subprocess.CompletedProcess:
        return subprocess.run([str(TUNELAB), *args], capture_output=True, text=True, env=env, timeout=300)

    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(zip(commands, pool.map(call, commands.values()), strict=True))


def test_console_script_is_installed():
    assert TUNELAB.exists(), f"{TUNELAB} missing: install tunelab into the environment that runs the tests"


# --- errors: exit code 2 and one line on stderr ----------------------------------------------------------------


@pytest.fixture(scope="session")
def errors_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cli-errors")


@pytest.fixture(scope="session")
def cli_errors(errors_dir: Path, tiny_bert: Path, sentiment_csv: Path,
               bert_probe: TrainedRun) -> dict[str, subprocess.CompletedProcess]:
    folder = errors_dir
    header_only = folder / "empty.csv"
    header_only.write_text("text,label\n", encoding="utf-8")
    latin = folder / "latin.csv"
    latin.write_bytes(b"text,label\ncaf\xe9 au lait,positive\nbad,negative\n")
    three_labels = write_table(sentiment_frame(12, ("negative", "neutral", "positive")), folder / "three.csv")
    train = ["train", "--model", str(tiny_bert), "--data", str(sentiment_csv), "--quiet"]

    def output(name: str) -> list[str]:
        return ["--output", str(folder / "runs" / name)]

    return run_all({
        "missing data file": [*train[:3], "--data", str(folder / "nope.csv"), "--quiet", *output("a")],
        "unknown column": [*train, "--text-column", "review", *output("b")],
        "empty dataset": [*train[:3], "--data", str(header_only), "--quiet", *output("c")],
        "unseen label in eval data": ["eval", str(bert_probe.path), "--data", str(three_labels)],
        "non-UTF-8 file": [*train[:3], "--data", str(latin), "--quiet", *output("d")],
        "unknown model": ["train", "--model", "./nope", "--data", str(sentiment_csv), "--quiet", *output("e")],
        "unknown strategy": [*train, "--strategy", "lora-typo", *output("f")],
        "unknown dataset name": [*train[:3], "--data", "no-such-dataset", "--quiet", *output("g")],
        "output exists": [*train, "--output", str(bert_probe.path)],
    }, folder / "home")


ERRORS = {
    "missing data file": "nope.csv does not exist",
    "unknown column": "no text column 'review'; its columns are text, label",
    "empty dataset": "empty.csv holds no examples",
    "unseen label in eval data": "has label(s) 'neutral' that the model never saw in training; it knows negative, "
                                 "positive",
    "non-UTF-8 file": "latin.csv is not UTF-8",
    "unknown model": "unknown model './nope'",
    "unknown strategy": "unknown strategy 'lora-typo'; choose one of full, linear-probe",
    "unknown dataset name": "unknown dataset 'no-such-dataset'",
    "output exists": "already exists: choose another --output or pass --overwrite",
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_user_error_is_one_line_and_exit_code_2(cli_errors: dict, case: str):
    result = cli_errors[case]
    assert "Traceback" not in result.stdout + result.stderr
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert ERRORS[case] in lines[0]


def test_failed_trainings_left_no_run_folders(cli_errors: dict, errors_dir: Path, bert_probe: TrainedRun):
    runs = errors_dir / "runs"
    assert not runs.exists() or list(runs.iterdir()) == []  # not even a hidden .NAME.partial
    assert [path.name for path in bert_probe.path.parent.iterdir() if path.name.startswith(".")] == []


# --- a successful session: train from YAML + --set, then predict, eval, summary -------------------------------


@pytest.fixture(scope="session")
def cli_session(tmp_path_factory: pytest.TempPathFactory, tiny_bert: Path, sentiment_csv: Path):
    folder = tmp_path_factory.mktemp("cli")
    config_file = folder / "run.yaml"
    config_file.write_text(yaml.safe_dump({
        "model": str(tiny_bert),
        "data": {"source": str(sentiment_csv)},
        "strategy": {"name": "full"},
        "training": {**STRATEGY_TRAINING["full"], "max_length": 16, "batch_size": 8, "seed": 3},
    }), encoding="utf-8")
    run = folder / "cli-run"
    first = run_all({
        "train": ["train", str(config_file), "--set", "training.epochs=1", "--output", str(run), "--quiet"],
        "strategies": ["strategies"],
    }, folder / "home")
    texts = ["good great nice fine", "awful bad ugly poor"]
    then = run_all({
        "predict": ["predict", str(run), *texts],
        "predict --json": ["predict", str(run), *texts, "--json"],
        "eval --json": ["eval", str(run), "--json"],
        "summary": ["summary", str(run)],
        "export": ["export", str(run), "--merge", "--output", str(folder / "exported")],
    }, folder / "home") if first["train"].returncode == 0 else {}
    return {**first, **then, "run": run, "texts": texts, "exported": folder / "exported"}


def _ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stdout + result.stderr
    return result.stdout


def test_train_writes_a_run_with_yaml_and_set(cli_session: dict):
    stdout = _ok(cli_session["train"])
    run: Path = cli_session["run"]
    assert f"run saved to {run}" in stdout.replace("\n", "")
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["training"]["epochs"] == 1  # --set beats the file
    assert saved["training"]["seed"] == 3  # the file beats the defaults
    assert saved["strategy"]["name"] == "full"
    assert saved["output"] == str(run)
    assert {"metrics.json", "resources.json", "labels.json", "delta.safetensors"} <= {p.name for p in run.iterdir()}


def test_predict_prints_a_label_per_text(cli_session: dict):
    stdout = _ok(cli_session["predict"])
    for text in cli_session["texts"]:
        assert text in stdout
    assert "positive" in stdout and "negative" in stdout


def test_export_prints_the_check_and_writes_a_model_folder(cli_session: dict):
    stdout = " ".join(_ok(cli_session["export"]).split())
    assert "max |logit difference|" in stdout and "unmerged ms/example" in stdout
    exported: Path = cli_session["exported"]
    assert {"config.json", "model.safetensors", "head.safetensors", "tunelab_export.json"} <= {
        path.name for path in exported.iterdir()}


def test_predict_json(cli_session: dict):
    lines = [json.loads(line) for line in _ok(cli_session["predict --json"]).splitlines()]
    assert [line["text"] for line in lines] == cli_session["texts"]
    for line in lines:
        assert set(line["probabilities"]) == {"negative", "positive"}
        assert sum(line["probabilities"].values()) == pytest.approx(1.0, abs=1e-6)
        assert line["label"] == max(line["probabilities"], key=line["probabilities"].get)


def test_eval_json_matches_the_library_and_the_run(cli_session: dict):
    printed = json.loads(_ok(cli_session["eval --json"]))
    run: Path = cli_session["run"]
    saved = json.loads((run / "metrics.json").read_text())["test"]
    assert printed["examples"] == saved["examples"] == 12
    assert printed["accuracy"] == saved["accuracy"]
    assert printed["macro_f1"] == pytest.approx(saved["macro_f1"])
    library = evaluate(run)
    assert printed["per_class"].keys() == library["per_class"].keys()
    for label, row in library["per_class"].items():
        assert printed["per_class"][label] == pytest.approx(row)


def test_summary(cli_session: dict):
    stdout = _ok(cli_session["summary"])
    metrics = json.loads((cli_session["run"] / "metrics.json").read_text())
    assert "cli-run" in stdout and "full" in stdout
    assert f"{metrics['test']['accuracy']:.3f}" in stdout
    assert str(metrics["train_examples"]) in stdout


def test_strategies(cli_session: dict):
    stdout = _ok(cli_session["strategies"])
    assert "full" in stdout and "linear-probe" in stdout
    assert "cache_features=True" in stdout


# --- the same entry point in-process: cheap enough for every remaining error and the table outputs -------------


@pytest.fixture
def error_inputs(tmp_path: Path, tiny_bert: Path, sentiment_csv: Path, bert_probe: TrainedRun) -> dict[str, list]:
    train = ["train", "--model", str(tiny_bert), "--data", str(sentiment_csv), "--output", str(tmp_path / "run"),
             "--quiet"]
    prompts_csv, pairs_csv = tmp_path / "prompts.csv", tmp_path / "pairs.csv"
    prompts_csv.write_text("prompt\nThe film\nA story\n")
    pairs_csv.write_text("chosen,rejected\n" + "great film,awful film\n" * 20)
    return {
        "unknown label column": ([*train, "--label-column", "sentiment"],
                                 "no label column 'sentiment'; its columns are text, label"),
        "unknown hub model": ([*train, "--model", "no-such-owner/no-such-model"],
                              "model 'no-such-owner/no-such-model' is not embedded"),
        "unknown hub dataset": ([*train, "--data", "no-such-owner/no-such-dataset"],
                                "could not be loaded from the Hugging Face hub"),
        "bad --set": ([*train, "--set", "training.epochs"], "override 'training.epochs' is not key=value"),
        "bad --set value": ([*train, "--set", "training.report_to=[tensorboard"],
                            "override 'training.report_to=[tensorboard': the value is not valid YAML"),
        "unknown --set key": ([*train, "--set", "training.epochz=2"], "unknown setting 'training.epochz'"),
        "invalid --set value": ([*train, "--set", "training.batch_size=0"], "config: training.batch_size: "),
        "bad strategy option": ([*train, "--strategy", "linear-probe", "--option", "cache_features=maybe"],
                                "strategy linear-probe: option 'cache_features'"),
        "missing config file": (["train", str(tmp_path / "missing.yaml")], "missing.yaml does not exist"),
        "predict with a non-run": (["predict", str(tmp_path), "some text"], "is not a tunelab run directory"),
        "summary of a non-run": (["summary", str(bert_probe.path), str(tmp_path)], "is not a tunelab run directory"),
        "bracketed path": ([*train, "--data", str(tmp_path / "x[bold].csv")], "x[bold].csv does not exist"),
        "export without --merge": (["export", str(bert_probe.path), "--output", str(tmp_path / "run")],
                                   "export writes merged models: pass --merge"),
        "export of a non-run": (["export", str(tmp_path), "--merge", "--output", str(tmp_path / "run")],
                                "is not a tunelab run directory"),
        "verbalizer without =": ([*train, "--strategy", "pet", "--verbalizer", "positive"],
                                 "--verbalizer 'positive' is not LABEL=WORDS"),
        "--tune with a head strategy": ([*train, "--tune", "lora"], "strategy full has no option 'tune'"),
        "template with a head strategy": ([*train, "--template", "{text} It was {label}"],
                                          "template and label-word settings apply to the prompt-based strategies"),
        "prompt without an LM head": (["prompt", "--model", str(tiny_bert), "--data", str(sentiment_csv)],
                                      "has no trained masked-LM head"),
        "too many shots": ([*train, "--shots", "40"], "--shots 40: the training split has only 30 examples"),
        "compare without --output": (["compare", "--strategies", "full"],
                                     "tunelab compare: Missing option '--output' (see `tunelab compare --help`)"),
        "compare with bad sizes": (["compare", "--train-sizes", "64,lots", "--output", str(tmp_path / "run")],
                                   "--train-sizes '64,lots' is not a comma-separated list"),
        "compare with an unknown strategy": (["compare", "--strategies", "full,lora-typo", "--output",
                                              str(tmp_path / "run")], "unknown strategy 'lora-typo'"),
        "report of a non-grid": (["report", str(tmp_path)], "is not a tunelab compare grid (no compare.yaml)"),
        "recommend without samples": (["recommend"], "how many labelled examples? pass --samples N"),
        "recommend with a bad memory": (["recommend", "--samples", "50", "--memory", "lots"],
                                        "--memory 'lots' is not a size; write it like 8GB"),
        "recommend with a bad latency": (["recommend", "--samples", "50", "--latency", "fast"],
                                         "latency 'fast' is unknown; use one of strict, normal"),
        "reward model on classification data": (["rlhf", "reward", "--model", str(tiny_bert), "--data",
                                                 str(sentiment_csv), "--output", str(tmp_path / "run")],
                                                "holds language-modelling data (columns text); rlhf reward needs "
                                                "preference"),
        "reward model without --output": (["rlhf", "reward"],
                                          "tunelab rlhf reward: Missing option '--output'"),
        "a number option given a word": ([*train, "--epochs", "abc"], "tunelab train: Invalid value for '--epochs'"),
        "a misspelt option": ([*train, "--epoch", "2"], "No such option: --epoch"),
        "a misspelt command": (["trian"], "tunelab: No such command 'trian'. Did you mean 'train'?"),
        "ppo from a non-run": (["rlhf", "ppo", "--policy", str(tmp_path), "--reward", str(bert_probe.path),
                                "--output", str(tmp_path / "run")], "is not a tunelab run directory"),
        "ppo with a classifier as the reward": (["rlhf", "ppo", "--policy", str(bert_probe.path), "--reward",
                                                 str(bert_probe.path), "--output", str(tmp_path / "run")],
                                                "is not a reward model run (no reward.yaml)"),
        "dpo from a non-run": (["rlhf", "dpo", "--policy", str(tmp_path), "--output", str(tmp_path / "run")],
                               "is not a tunelab run directory"),
        "dpo on prompt-only data": (["rlhf", "dpo", "--policy", str(bert_probe.path), "--data", str(prompts_csv),
                                     "--output", str(tmp_path / "run")],
                                    "holds prompt-only data (columns prompt); rlhf dpo needs preference"),
        "dpo from a classifier run": (["rlhf", "dpo", "--policy", str(bert_probe.path), "--data", str(pairs_csv),
                                       "--output", str(tmp_path / "run")],
                                      "is a classification run; the policy starts from a causal LM"),
        "judge a non-policy run": (["rlhf", "judge", str(bert_probe.path), "--reward", str(bert_probe.path)],
                                   "is not a PPO or DPO run (no policy.yaml)"),
        "pipeline with an unknown preset": (["rlhf", "pipeline", "--preset", "imdb", "--output",
                                             str(tmp_path / "run")], "unknown preset 'imdb'; presets: "
                                                                     "movie-sentiment"),
        "generate from a classifier": (["generate", str(bert_probe.path), "The film"],
                                       "is a classification run; generate needs one trained with --task generation"),
    }


@pytest.mark.parametrize("case", [
    "unknown label column", "unknown hub model", "unknown hub dataset", "bad --set", "bad --set value",
    "unknown --set key", "invalid --set value", "bad strategy option", "missing config file",
    "predict with a non-run", "summary of a non-run", "bracketed path", "export without --merge",
    "export of a non-run", "verbalizer without =", "--tune with a head strategy", "template with a head strategy",
    "prompt without an LM head", "too many shots", "compare without --output", "compare with bad sizes",
    "compare with an unknown strategy", "report of a non-grid", "recommend without samples",
    "recommend with a bad memory", "recommend with a bad latency", "reward model on classification data",
    "reward model without --output", "ppo from a non-run", "ppo with a classifier as the reward",
    "dpo from a non-run", "dpo on prompt-only data", "dpo from a classifier run", "judge a non-policy run",
    "pipeline with an unknown preset", "generate from a classifier", "a number option given a word",
    "a misspelt option", "a misspelt command",
])
def test_more_user_errors_in_process(case: str, error_inputs: dict, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture):
    args, expected = error_inputs[case]
    code, stdout, stderr = run_main(args, monkeypatch, capsys)
    assert code == 2, stderr
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: ")
    assert expected in lines[0]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("args", "first"), [
    (["--samples", "50"], "pet"),
    (["--samples", "50000", "--gpu", "--memory", "80GB", "--model-size", "110M"], "full"),
    (["--samples", "2000", "--tasks-to-serve", "20"], "adapter"),
    (["--samples", "5000", "--model-size", "7B", "--causal", "--gpu", "--memory", "16GB"], "lora"),
])
def test_recommend_explains_its_first_choice_with_a_command(args: list[str], first: str,
                                                            monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture):
    code, stdout, _ = run_main(["recommend", *args], monkeypatch, capsys)
    assert code == 0
    flat = " ".join(stdout.split())
    assert flat.startswith(f"1. {first} (score")
    assert f"--strategy {first}" in flat.split("2. ")[0]  # the command to run is part of the first choice
    assert "every strategy, ranked" in flat


def test_recommend_says_why_a_strategy_cannot_run(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture):
    code, stdout, _ = run_main(["recommend", "--samples", "5000", "--model-size", "7B", "--causal", "--gpu",
                                "--memory", "16GB"], monkeypatch, capsys)
    assert code == 0
    assert "no: full needs ~134.4 GB on one device, you have 16 GB" in " ".join(stdout.split())
    assert "QLoRA" in stdout


def test_eval_table(bert_probe: TrainedRun, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture):
    code, stdout, _ = run_main(["eval", str(bert_probe.path)], monkeypatch, capsys)
    assert code == 0
    test = bert_probe.metrics["test"]
    assert f"accuracy {test['accuracy']:.3f} · macro-F1 {test['macro_f1']:.3f} · 12 examples" in " ".join(
        stdout.split())
    assert "negative" in stdout and "positive" in stdout


def test_data_show(sentiment_csv: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture):
    code, stdout, _ = run_main(["data", "show", str(sentiment_csv), "--examples", "2"], monkeypatch, capsys)
    assert code == 0
    flat = " ".join(stdout.split())
    assert "80 examples · splits train 60 / validation 8 / test 12" in flat
    assert "negative │ 40 │ 50.0%" in flat and "positive │ 40 │ 50.0%" in flat


def test_prompt_zero_shot_then_predict_and_few_shot_pet(tiny_llama_lm: Path, sentiment_csv: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture):
    ask = ["--model", str(tiny_llama_lm), "--data", str(sentiment_csv), "--template",
           "Review: {text}\\nSentiment: {label}", "--verbalizer", "positive= good, great", "--verbalizer",
           "negative=bad"]
    code, stdout, stderr = run_main(["prompt", *ask, "--calibrate"], monkeypatch, capsys)
    assert code == 0, stderr
    assert "zero-shot" in stdout and "12 examples" in " ".join(stdout.split())

    run = tmp_path / "zero"
    code, stdout, stderr = run_main(["prompt", *ask, "--output", str(run)], monkeypatch, capsys)
    assert code == 0, stderr
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["strategy"]["name"] == "zero-shot"
    assert saved["prompt"]["template"] == "Review: {text}\nSentiment: {label}"  # the flag's \\n is a newline
    assert saved["prompt"]["verbalizer"] == {"negative": ["bad"], "positive": [" good", " great"]}
    code, stdout, stderr = run_main(["predict", str(run), "good great film"], monkeypatch, capsys)
    assert code == 0 and "good great film" in stdout, stderr

    pet = tmp_path / "pet"
    code, stdout, stderr = run_main(["train", *ask, "--strategy", "pet", "--tune", "lora", "--shots", "4",
                                     "--epochs", "1", "--max-length", "24", "--quiet", "--output", str(pet)],
                                    monkeypatch, capsys)
    assert code == 0, stderr
    saved = yaml.safe_load((pet / "config.yaml").read_text())
    assert saved["data"]["shots"] == 4 and saved["strategy"]["options"]["tune"] == "lora"
    assert json.loads((pet / "metrics.json").read_text())["train_examples"] == 8
    assert (pet / "adapter" / "adapter_model.safetensors").exists()


def test_deepspeeds_cpu_notice_is_dropped_and_its_other_messages_kept():
    """DeepSpeed warns on import, on every machine without a GPU, that it uses the CPU: noise in every command."""
    quiet_libraries()
    deepspeed = logging.getLogger("DeepSpeed")
    record = lambda message: logging.makeLogRecord({"msg": message, "levelno": logging.WARNING})  # noqa: E731
    assert not deepspeed.filter(record("Setting accelerator to CPU. If you have GPU or other accelerator, we were "
                                       "unable to detect it."))
    assert deepspeed.filter(record("ZeRO-3 is slower than ZeRO-2"))
