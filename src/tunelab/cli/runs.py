"""Commands on one run: train, prompt, eval, predict, generate, chat, export, summary."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from tunelab.cli.app import app, console
from tunelab.cli.options import (
    PRECISION_HELP,
    TEMPLATE_HELP,
    VERBALIZER_HELP,
    quiet_libraries,
    run_config,
)
from tunelab.errors import TunelabError


def _searched_trial(folder: Path | None, trial: int | None, config_file: Path | None,
                    output: Path | None) -> dict | None:
    """The config of `--from-search FOLDER --trial N` (flags and --set still apply on top); None without them."""
    if folder is None:
        if trial is not None:
            raise TunelabError("--trial names a trial of a search: give --from-search FOLDER too")
        return None
    if trial is None or config_file is not None:
        raise TunelabError("--from-search takes --trial N (a trial's number) and no config file")
    from tunelab.cli.search import from_search_config

    return from_search_config(folder, trial, output).model_dump(mode="json")


def _launch(config: Any, overwrite: bool, mode: str, nproc: int, nnodes: int, node_rank: int,
            master_addr: str | None, master_port: int) -> None:
    """This very command under torchrun, once what can be refused before training is refused here."""
    from tunelab.cli.launch import relaunch
    from tunelab.recipes.runs import configure_run
    from tunelab.runs import StagedRun

    configure_run(config, nproc * nnodes)
    StagedRun(Path(config.output), overwrite)  # an existing output is refused now, not by every process
    relaunch(config.training.batch_size, nproc, nnodes, node_rank, master_addr, master_port,
             restart=Path(config.output) if mode == "restart" else None)


def _resume_mode(resume: bool, restart: bool, config: Any) -> str:
    if resume and restart:
        raise TunelabError("--resume and --restart contradict each other: pass one")
    if (resume or restart) and not config.training.checkpoint_every:
        raise TunelabError("--resume and --restart act on the checkpoints of --checkpoint-every N: pass it too")
    return "require" if resume else "restart" if restart else "auto"


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
    batch_size: Annotated[str | None, typer.Option(help="examples per optimizer step [default: 32]; auto keeps the "
                                                        "batch and computes it in the largest micro-batches that fit "
                                                        "in memory (gradient accumulation)")] = None,
    micro_batch_size: Annotated[str | None, typer.Option(help="examples per forward and backward (a divisor of the "
                                                              "batch; the gradients accumulate), or auto "
                                                              "[default: the whole batch]")] = None,
    eval_batch_size: Annotated[int | None, typer.Option(min=1, help="examples per forward when evaluating "
                                                                    "[default: 64]")] = None,
    max_length: Annotated[int | None, typer.Option(help="tokens per example; longer texts are truncated")] = None,
    seed: Annotated[int | None, typer.Option(help="seed for initialisation, dropout and data order")] = None,
    min_steps: Annotated[int | None, typer.Option(help="with the default epochs, at least this many optimizer steps "
                                                       "(small data gets more epochs) [default: 100]")] = None,
    class_weights: Annotated[str | None, typer.Option(help="classification: none (default) or balanced, loss "
                                                           "weights from the training split for rare classes")] = None,
    select_on: Annotated[str | None, typer.Option(help="the validation metric that keeps an epoch: auto (default: "
                                                       "macro-f1 on imbalanced classes, else accuracy), accuracy, "
                                                       "macro-f1, loss")] = None,
    shots: Annotated[int | None, typer.Option(help="few-shot: K training (and K validation) examples per label")]
    = None,
    tune: Annotated[str | None, typer.Option(help="pet: what trains, full (default), lora, ia3 or adapter")] = None,
    template: Annotated[str | None, typer.Option(help=TEMPLATE_HELP)] = None,
    verbalizer: Annotated[list[str] | None, typer.Option(help=VERBALIZER_HELP)] = None,
    calibrate: Annotated[bool | None, typer.Option("--calibrate/--no-calibrate", help="prompt-based: contextual "
                                                   "calibration of the label probabilities")] = None,
    precision: Annotated[str | None, typer.Option(help=f"{PRECISION_HELP} [default: auto]")] = None,
    group_by_length: Annotated[str | None, typer.Option(help="training batches of similar length (shuffled "
                                                             "buckets): auto (full fine-tuning, when random batches "
                                                             "would be 20% padding or more), on, off "
                                                             "[default: auto]")] = None,
    option: Annotated[list[str] | None, typer.Option(help="strategy option KEY=VALUE (repeatable)")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="any config key, e.g. training.epochs=2")] = None,
    from_search: Annotated[Path | None, typer.Option(help="a `tunelab search` folder: train one of its trials "
                                                          "(--trial) on the full rows")] = None,
    trial: Annotated[int | None, typer.Option(help="with --from-search: the trial's number (t0017 is 17)")] = None,
    overwrite: Annotated[bool, typer.Option(help="replace an existing run directory")] = False,
    checkpoint_every: Annotated[int | None, typer.Option(min=1, help="a resumable checkpoint every N optimizer steps: "
                                                                     "a killed run resumes when the same command "
                                                                     "runs again")] = None,
    resume: Annotated[bool, typer.Option(help="resume an interrupted run, or fail when there is none (without it, "
                                              "one is resumed when found)")] = False,
    restart: Annotated[bool, typer.Option(help="discard an interrupted run's checkpoints and start over")] = False,
    quiet: Annotated[bool, typer.Option(help="no progress bars")] = False,
    nproc: Annotated[int, typer.Option(min=1, help="training processes on this machine (torchrun; gloo on CPU, "
                                                   "nccl on GPUs); --batch-size stays the global batch")] = 1,
    distributed: Annotated[str | None, typer.Option(help="how the processes share the model: ddp, fsdp, "
                                                         "deepspeed-zero2 or deepspeed-zero3 [default: ddp]")] = None,
    nnodes: Annotated[int, typer.Option(min=1, help="machines, each running this command with its --node-rank")]
    = 1,
    node_rank: Annotated[int, typer.Option(min=0, help="this machine's number, 0 to --nnodes - 1")] = 0,
    master_addr: Annotated[str | None, typer.Option(help="address of the machine with --node-rank 0")] = None,
    master_port: Annotated[int, typer.Option(help="port for the processes to meet at --master-addr")] = 29500,
) -> None:
    """Fine-tune a model on a dataset with one strategy and write a run directory."""
    from tunelab import api
    from tunelab.ranks import is_main
    from tunelab.recipes.generation import generation_scores
    from tunelab.report import runs_table

    config = run_config(config_file, locals(), set_, option, template, verbalizer,
                        _searched_trial(from_search, trial, config_file, output))
    mode = _resume_mode(resume, restart, config)
    if nproc * nnodes > 1:
        _launch(config, overwrite, mode, nproc, nnodes, node_rank, master_addr, master_port)
    quiet_libraries()
    if not is_main():  # under torchrun: rank 0 prints and writes, the others train
        api.train(config, overwrite=overwrite, progress=False, resume=mode)
        return
    try:
        result = api.train(config, overwrite=overwrite, progress=not quiet, announce=console.print, resume=mode)
    except KeyboardInterrupt:
        from tunelab.runs import staging_folder
        from tunelab.training.resume import interrupted

        raise TunelabError(interrupted(staging_folder(Path(config.output)))) from None
    console.print(runs_table([result.path], title=f"{config.strategy.name} on {config.data.source}"))
    baseline = result.metrics.get("baseline")
    if baseline is not None:
        scores = " · ".join(f"{name.replace('_', '-')} {value:.3f}" for name, value in baseline.items()
                            if name != "predicts")
        console.print(f"baseline that learns nothing (always {escape(str(baseline['predicts']))}): {scores}")
    if config.task == "generation":
        console.print(f"held-out, untrained -> trained: "
                      f"{generation_scores(result.metrics['test'], result.metrics['base_test'])}")
    _print_micro_batch(result.metrics["training"], config.training.batch_size)
    console.print(f"run saved to [bold]{escape(str(result.path))}[/bold]")


def _print_micro_batch(training: dict[str, Any], batch_size: int) -> None:
    """How the batch was computed, when in parts: the micro-batch `auto` found is what repeats the run exactly."""
    steps = training.get("gradient_accumulation_steps", 1)
    if steps > 1 or training.get("micro_batch_found"):
        found = " (the largest that fits: --micro-batch-size {0} repeats it)" if training["micro_batch_found"] else ""
        console.print(f"trained in micro-batches of {training['micro_batch_size']}, {steps} per optimizer step of "
                      f"{batch_size}{found.format(training['micro_batch_size'])}")


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
    from tunelab.report import runs_table
    from tunelab.task_catalog import recipe_for

    config = run_config(config_file, {**locals(), "strategy": "zero-shot"}, set_, None, template, verbalizer)
    quiet_libraries()
    if output is None:
        metrics = api.zero_shot(config)
        console.print(recipe_for("classification").evaluation_view(
            metrics, f"zero-shot {config.model} on {config.data.source} (test split)"))
        return
    result = api.train(config, overwrite=overwrite)
    console.print(runs_table([result.path], title=f"zero-shot on {config.data.source}"))
    console.print(f"run saved to [bold]{escape(str(result.path))}[/bold]")


TASK_HELP = "a bundle's task to use (see `tunelab compose bundle`)"


@app.command("eval")
def evaluate(
    run: Annotated[Path, typer.Argument(help="run directory from `tunelab train`, or a bundle")],
    data: Annotated[str | None, typer.Option(help="dataset to score (default: the run's own test split)")] = None,
    text_column: Annotated[str, typer.Option(help="column with the input text")] = "text",
    label_column: Annotated[str, typer.Option(help="column with the label")] = "label",
    limit: Annotated[int | None, typer.Option(min=1, help="score at most N examples")] = None,
    batch_size: Annotated[int | None, typer.Option(min=1, help="examples per forward [default: the run's "
                                                               "evaluation batch]")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print metrics as JSON")] = False,
    precision: Annotated[str, typer.Option(help=PRECISION_HELP)] = "auto",
    task: Annotated[str | None, typer.Option(help=TASK_HELP + "; default for a bundle: every task on its own test "
                                                  "split, against its run")] = None,
) -> None:
    """Score a trained run on labelled data with its task's metrics (accuracy and per-class report, Pearson, entity
    F1, exact match and F1, or perplexity and ROUGE-L); a bundle: every task beside its run, or one with --task."""
    from tunelab import api
    from tunelab.compose.bundle import is_bundle, task_run
    from tunelab.task_catalog import recipe_for

    quiet_libraries()
    if is_bundle(run) and task is None and data is None:
        _evaluate_bundle(run, limit, precision, as_json)
        return
    run = task_run(run, task)
    metrics = api.evaluate(run, data, text_column, label_column, limit, precision, batch_size)
    if as_json:
        print(json.dumps(metrics, indent=2))
    else:
        console.print(recipe_for(api.run_task(run)).evaluation_view(metrics, f"{run} on {data or 'its test split'}"))


def _evaluate_bundle(path: Path, limit: int | None, precision: str, as_json: bool) -> None:
    """Every task of a bundle on its own test split, beside the scores its run recorded when it was trained."""
    from tunelab import api
    from tunelab.compose.bundle import read_bundle
    from tunelab.report import named_scores
    from tunelab.runs import METRICS_FILE, read_json

    bundle = read_bundle(path)
    scores = {name: api.evaluate(bundle.run(name), None, limit=limit, precision=precision) for name in bundle.tasks}
    if as_json:
        print(json.dumps(scores, indent=2))
        return
    table = Table(title=f"{path}: every task on its test split",
                  caption=None if limit is None else f"the bundle's scores on the first {limit} test examples, its "
                                                     f"runs' on their whole test splits")
    for column in ("task", "predicts", "in the bundle", "its run"):
        table.add_column(column)
    for name, kind in bundle.tasks.items():
        recorded = read_json(bundle.run(name) / METRICS_FILE)  # a merged task's own run: its single-task score
        table.add_row(name, kind, named_scores(kind, {"test": scores[name]}),
                      named_scores(kind, {"test": recorded.get("single_task", recorded["test"])}))
    console.print(table)


@app.command()
def predict(
    run: Annotated[Path, typer.Argument(help="run directory from `tunelab train`, a merged export, or a bundle")],
    texts: Annotated[list[str], typer.Argument(help="one or more texts (questions, prompts) to predict for")],
    as_json: Annotated[bool, typer.Option("--json", help="print predictions as JSON lines")] = False,
    context: Annotated[str | None, typer.Option(help="question-answering runs: the passage the questions (the "
                                                     "texts) are about")] = None,
    precision: Annotated[str, typer.Option(help=PRECISION_HELP)] = "auto",
    batch_size: Annotated[int | None, typer.Option(min=1, help="examples per forward [default: the run's "
                                                               "evaluation batch]")] = None,
    task: Annotated[str | None, typer.Option(help=TASK_HELP)] = None,
) -> None:
    """Predict with a trained run: the label and every label's probability, the value of a regression run, the
    entities a token-classification run finds (with character spans), a question-answering run's answers to
    questions about the `--context` passage, or a generation run's greedy answers. A bundle answers texts written
    TASK=TEXT, each for its own task, in mixed batches on one base model (or all for `--task`)."""
    from tunelab import api
    from tunelab.compose.bundle import is_bundle, task_run
    from tunelab.task_catalog import recipe_for

    quiet_libraries()
    if is_bundle(run) and task is None:
        _predict_mixed(run, texts, as_json, precision)
        return
    run = task_run(run, task)
    records = api.predict(run, texts, context, precision, batch_size)
    if as_json:
        for record in records:
            print(json.dumps(record))
    else:
        console.print(recipe_for(api.run_task(run)).predictions_view(records, str(run)))


def _predict_mixed(path: Path, items: list[str], as_json: bool, precision: str) -> None:
    """TASK=TEXT items of a bundle's sentence tasks, answered in mixed batches."""
    from tunelab.compose.bundle import read_bundle
    from tunelab.compose.mixed import MixedPredictor, task_texts

    texts, tasks = task_texts(items, list(read_bundle(path).tasks))
    records = MixedPredictor(path, precision).predict(texts, tasks)
    if as_json:
        for record in records:
            print(json.dumps(record))
        return
    table = Table(title=escape(f"{path}: each text for its task"))
    for column in ("task", "text", "answer"):
        table.add_column(column)
    for record in records:
        answer = (f"{record['label']} ({record['probabilities'][record['label']]:.2f})" if "label" in record
                  else f"{record['value']:+.3f}")
        table.add_row(escape(record["task"]), escape(record["text"]), f"[bold]{escape(answer)}[/bold]")
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

    quiet_libraries()
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

    quiet_libraries()
    # Ctrl-C is how a user stops an answer, even where the shell started this process with SIGINT ignored (a
    # background job of a script), in which case Python installs no handler of its own
    signal.signal(signal.SIGINT, signal.default_int_handler)
    model, tokenizer = api.load_generator(run, purpose="chat")
    converse(model, tokenizer, system, max_new_tokens, temperature, seed)


@app.command()
def export(
    run: Annotated[Path, typer.Argument(help="run directory from `tunelab train`")],
    output: Annotated[Path, typer.Option(help="folder to write the merged model to")],
    merge: Annotated[bool, typer.Option("--merge", help="fold the delta into the base weights (lora, ia3, full)")]
    = False,
    onnx: Annotated[bool, typer.Option("--onnx", help="also write the classifier as model.onnx (checked in "
                                                      "onnxruntime; implies --merge)")] = False,
    overwrite: Annotated[bool, typer.Option(help="replace an existing export at --output")] = False,
) -> None:
    """Write a run as one plain transformers model folder plus its head (and as ONNX), checked against the run."""
    from tunelab.export import export_merged

    if not (merge or onnx):
        raise TunelabError("export writes merged models: pass --merge (the run directory is the unmerged form) or "
                           "--onnx")
    quiet_libraries()
    report = export_merged(run, output, overwrite, onnx)
    latency = report["latency_ms_per_example"]
    table = Table(title=f"merged {report['strategy']} run -> {escape(str(output))}")
    columns = {"max |logit difference|": f"{report['max_logit_difference']:.1e}",
               "base ms/example": f"{latency['base']:.2f}", "merged ms/example": f"{latency['merged']:.2f}",
               "unmerged ms/example": f"{latency['unmerged']:.2f}"}
    if onnx:
        columns |= {"ONNX |logit difference|": f"{report['onnx_max_logit_difference']:.1e}",
                    "ONNX ms/example": f"{latency['onnx']:.2f}"}
    for column in columns:
        table.add_column(column, justify="right")
    table.add_row(*columns.values())
    console.print(table)
    console.print(f"load it with `tunelab predict {escape(str(output))} TEXT`, or as a plain transformers "
                  f"AutoModel plus {escape(str(output / 'head.safetensors'))}")


@app.command()
def summary(runs: Annotated[list[Path], typer.Argument(help="run directories (or bundles) to compare")]) -> None:
    """Compare finished runs side by side: accuracy against what each one cost; a bundle shows each of its tasks,
    black-box runs their calls."""
    from tunelab.blackbox.found import is_blackbox_run
    from tunelab.compose.bundle import is_bundle, read_bundle
    from tunelab.report import blackbox_table, runs_table

    expanded = [task for run in runs for task in (read_bundle(run).runs() if is_bundle(run) else [run])]
    queried = [run for run in expanded if is_blackbox_run(run)]
    trained = [run for run in expanded if run not in queried]
    if trained:
        console.print(runs_table(trained, title="runs side by side"))
    if queried:
        console.print(blackbox_table(queried))

