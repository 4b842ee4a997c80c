"""Commands over many runs: compare a grid, its report, the recommendation, the strategy list."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from tunelab.cli.app import app, console
from tunelab.cli.options import (
    MEMORY_UNITS_GB,
    PARAMETER_UNITS,
    PRECISION_HELP,
    AddressFlag,
    CpusFlag,
    ExecutorFlag,
    GpusFlag,
    MemoryFlag,
    comma_list,
    executor_choice,
    run_config,
    size_amount,
)
from tunelab.errors import TunelabError


def _grid_summary(folder: Path) -> tuple[Any, Any]:
    """The grid's results and their summary over seeds; a grid with no finished run is an error."""
    from tunelab.compare.results import load_grid, summarise

    results = load_grid(folder)
    if results.cells.empty:
        raise TunelabError(f"{folder} has no finished runs yet; run `tunelab compare` with --output {folder}")
    return results, summarise(results.cells)


def _print_grid_report(folder: Path) -> None:
    """The grid's summary and claims in the terminal, and its HTML page written beside the runs."""
    from tunelab.compare.claims import check_claims, noise_note
    from tunelab.compare.page import write_page
    from tunelab.compare.results import failures_by_reason
    from tunelab.config import build_config
    from tunelab.report import claims_table, grid_table

    results, summary = _grid_summary(folder)
    claims = check_claims(summary)
    console.print(grid_table(summary, title=f"{len(results.cells)} of {results.planned} runs in {folder}"))
    base = build_config(results.spec.base)
    console.print(claims_table(claims, noise_note(len(results.spec.seeds), base.data.limit_eval)))
    for reason, cells in failures_by_reason(results.failures).items():
        console.print(f"[red]failed[/red] {escape(', '.join(cells))}: {escape(reason)}")
    console.print(f"report: [bold]{escape(str(write_page(results, summary, claims)))}[/bold]")


@app.command()
def compare(
    output: Annotated[Path, typer.Option(help="grid folder: created, or resumed when it holds this grid")],
    config_file: Annotated[Path | None, typer.Argument(help="YAML run config shared by every run")] = None,
    model: Annotated[str | None, typer.Option(help="embedded name (minilm, smollm2), HF folder or hub id")] = None,
    prompt_model: Annotated[str | None, typer.Option(help="the model of the prompt-based strategies (zero-shot, "
                                                          "pet, soft-template), e.g. smollm2 beside --model minilm, "
                                                          "which has no LM head [default: --model]")] = None,
    data: Annotated[str | None, typer.Option(help="embedded dataset, CSV/TSV/JSONL/Parquet file, or HF id")] = None,
    text_column: Annotated[str | None, typer.Option(help="column with the input text")] = None,
    label_column: Annotated[str | None, typer.Option(help="column with the label")] = None,
    strategies: Annotated[str, typer.Option(help="comma-separated, or 'all' (those the model refuses are "
                                                 "reported as failed); blackbox:bbt, blackbox:search and "
                                                 "blackbox:mezo run `tunelab blackbox` on the prompt model")]
    = "all",
    train_sizes: Annotated[str, typer.Option(help="comma-separated training-set sizes")] = "64,512,2000",
    seeds: Annotated[int, typer.Option(min=1, help="seeds per cell: --seed, --seed + 1, ...")] = 3,
    seed: Annotated[int, typer.Option(help="the first seed")] = 42,
    epochs: Annotated[float | None, typer.Option(help="every run's epochs (default: each strategy's own)")] = None,
    min_steps: Annotated[int, typer.Option(min=0, help="at least this many optimizer steps per run: small training "
                                                       "sets get more epochs")] = 50,
    batch_size: Annotated[int | None, typer.Option(help="examples per training step")] = None,
    max_length: Annotated[int | None, typer.Option(help="tokens per example")] = None,
    blackbox_budget: Annotated[int | None, typer.Option(min=1, help="calls each black-box cell may make [default: "
                                                                   "`tunelab blackbox --budget`'s]")] = None,
    limit_eval: Annotated[int | None, typer.Option(help="evaluate on at most N examples (quick looks)")] = None,
    precision: Annotated[str | None, typer.Option(help=f"every run's: {PRECISION_HELP} [default: auto]")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="any config key, e.g. training.warmup_ratio=0.1")]
    = None,
    quiet: Annotated[bool, typer.Option(help="no progress display")] = False,
    executor: ExecutorFlag = "local",
    address: AddressFlag = None,
    cpus_per_run: CpusFlag = None,
    gpus_per_run: GpusFlag = None,
    memory_per_run: MemoryFlag = None,
) -> None:
    """Train a grid of strategies x training-set sizes x seeds, each an ordinary run; resumable."""
    from tunelab.compare.grid import GridSpec, run_grid
    from tunelab.strategies.catalog import STANDALONE

    where = executor_choice(executor, address, cpus_per_run, gpus_per_run, memory_per_run)
    base = run_config(config_file, locals(), set_, None, None, None)
    names = list(STANDALONE) if strategies == "all" else comma_list(strategies, "strategies")
    spec = GridSpec(base=base.model_dump(mode="json", exclude={"strategy", "output"}, exclude_defaults=True),
                    strategies=names, train_sizes=comma_list(train_sizes, "train-sizes", int),
                    seeds=list(range(seed, seed + seeds)), epochs=epochs, min_steps=min_steps,
                    prompt_model=prompt_model, blackbox_budget=blackbox_budget)
    outcome = run_grid(output, spec, console, progress=not quiet, executor=where)
    console.print(f"{len(outcome.trained)} runs trained, {len(outcome.skipped)} already finished, "
                  f"{len(outcome.failed)} failed")
    _print_grid_report(output)


@app.command()
def report(folder: Annotated[Path, typer.Argument(help="grid folder from `tunelab compare`, or search folder from "
                                                     "`tunelab search`")]) -> None:
    """Summarise a compare grid or a configuration search: a table here, and report.html with plots beside them."""
    from tunelab.search.study import SEARCH_FILE

    if (folder / SEARCH_FILE).exists():
        from tunelab.cli.search import print_search_report

        print_search_report(folder)
    else:
        _print_grid_report(folder)



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
    memory: Annotated[str, typer.Option(help="memory for training, e.g. 8GB (GPU memory on a GPU, per GPU)")] = "8GB",
    gpu: Annotated[bool, typer.Option("--gpu/--cpu", help="training on a GPU or on a CPU")] = False,
    gpus: Annotated[int, typer.Option(min=1, help="GPUs to train on together (the advice names the engine that "
                                                  "shards the model over them where one does not hold it)")] = 1,
    tasks_to_serve: Annotated[int, typer.Option(min=1, help="tasks to deploy on one base model")] = 1,
    latency: Annotated[str, typer.Option(help="strict (no added inference latency) or normal")] = "normal",
    grid: Annotated[Path | None, typer.Option("--from", help="a `tunelab compare` grid: rank by what it measured")]
    = None,
    data: Annotated[str | None, typer.Option(help="your labelled file (read for its rows, classes, balance and "
                                                  "lengths), or the dataset the commands train on (default: the "
                                                  "grid's, or movie-snippets)")] = None,
    text_column: Annotated[str, typer.Option(help="--data file: column with the text")] = "text",
    label_column: Annotated[str, typer.Option(help="--data file: column with the label")] = "label",
    top: Annotated[int, typer.Option(min=1, help="how many choices to explain")] = 3,
) -> None:
    """Which strategy to use: ranked choices, each with its reasons, expected trade-off and the command to run."""
    from tunelab.assets.models import EMBEDDED
    from tunelab.compare.advisor import Situation
    from tunelab.compare.advisor import recommend as advise
    from tunelab.config import build_config

    measured, own_data, prompt_model = None, data, None
    if grid is not None:
        results, measured = _grid_summary(grid)
        samples = samples or int(measured["train_size"].max())
        base = build_config(results.spec.base)
        prompt_model = None if model else results.spec.prompt_model  # the grid's second model, unless you name one
        model, data = model or base.model, data or base.data.source
    train_data: str | list[str] = data or "movie-snippets"
    if own_data is not None and task == "classification":  # the data you name is read (a missing file is an error)
        from tunelab.data.checks import profile_file

        profile = profile_file(own_data, text_column, label_column)
        console.print(escape(profile.summary()))
        samples, train_data = samples or profile.training_rows, profile.train_options()
    if samples is None:
        raise TunelabError("how many labelled examples? pass --samples N, --data FILE, or --from a compare grid")
    embedded = EMBEDDED.get(model or "")
    parameters, known_causal, known_head = ((embedded.parameters, embedded.causal, embedded.has_lm_head) if embedded
                                            else (110e6, False, False))  # unnamed: a BERT-base-sized encoder
    if model_size is not None:
        parameters = size_amount(model_size, PARAMETER_UNITS, "--model-size", "350M or 7B")
    situation = Situation(
        samples=samples, task=task, model=model, prompt_model=prompt_model, model_parameters=parameters,
        causal=known_causal if causal is None else causal, has_lm_head=known_head or lm_head,
        memory_gb=size_amount(memory, MEMORY_UNITS_GB, "--memory", "8GB"), gpu=gpu, gpus=gpus,
        tasks_to_serve=tasks_to_serve, latency=latency)
    ranked = advise(situation, measured, train_data)
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
    from tunelab.strategies.catalog import CATALOG
    from tunelab.task_catalog import TASKS

    table = Table(title="strategies")
    for column in ("name", "what it does", "default lr", "default epochs", "options", "tasks"):
        table.add_column(column)
    for name, row in CATALOG.items():
        strategy = row.load()
        fields = strategy.Options.model_fields
        required = [key for key, field in fields.items() if field.is_required()]
        defaults = None if required else strategy.Options()
        options = ", ".join([f"{key} (required)" for key in required] +
                            [f"{key}={value}" for key, value in (defaults.model_dump() if defaults else {}).items()])
        learning_rate, epochs = strategy.training_defaults(defaults) if defaults else (row.learning_rate, row.epochs)
        tasks = ", ".join(task for task in TASKS if row.serves(task))
        table.add_row(name, row.summary, f"{learning_rate:g}" if epochs else "-", f"{epochs:g}" if epochs else "-",
                      options or "-", tasks)
    console.print(table)

