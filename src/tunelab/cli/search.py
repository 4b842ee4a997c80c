"""`tunelab search`: the configuration search (AutoPEFT-style), its report, and training one of its trials."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from tunelab.cli.app import app, console
from tunelab.cli.options import (
    AddressFlag,
    CpusFlag,
    ExecutorFlag,
    GpusFlag,
    MemoryFlag,
    comma_list,
    executor_choice,
    run_config,
)
from tunelab.errors import TunelabError


def print_search_report(folder: Path) -> None:
    """The searched trials' front and the re-evaluation in the terminal, and report.html beside the runs."""
    from tunelab.report import search_table
    from tunelab.search.page import read_result, verdict, write_search_page

    result = read_result(folder)
    console.print(search_table(result, title=f"{folder}: Pareto set re-evaluated beside the hand defaults"))
    for default, winners in result["dominates"].items():
        console.print(f"{escape(default)}: {escape(verdict(winners))}")
    console.print(f"report: [bold]{escape(str(write_search_page(folder, result)))}[/bold]")


@app.command()
def search(
    output: Annotated[Path, typer.Option(help="search folder: created, or resumed when it holds this search")],
    config_file: Annotated[Path | None, typer.Argument(help="YAML run config shared by every trial")] = None,
    model: Annotated[str | None, typer.Option(help="embedded name (minilm, smollm2), HF folder or hub id")] = None,
    data: Annotated[str | None, typer.Option(help="embedded dataset, CSV/TSV/JSONL/Parquet file, or HF id")] = None,
    task: Annotated[str | None, typer.Option(help="classification, regression, token-classification, ...")] = None,
    text_column: Annotated[str | None, typer.Option(help="column with the input text")] = None,
    label_column: Annotated[str | None, typer.Option(help="column with the label")] = None,
    limit_train: Annotated[int | None, typer.Option(help="training rows of a full trial (default: all)")] = None,
    trials: Annotated[int, typer.Option(min=1, help="trials to finish (pruned ones count)")] = 40,
    objectives: Annotated[str, typer.Option(help="one validation metric (accuracy, macro-f1, f1, pearson, ...) and "
                                                 "costs: trainable-params, delta-bytes, latency, peak-memory, "
                                                 "train-time")] = "accuracy,trainable-params",
    space: Annotated[Path | None, typer.Option(help="YAML file narrowing or extending the default space")] = None,
    eta: Annotated[int, typer.Option(min=1, help="successive halving: a trial first trains on 1/eta of the rows and "
                                                 "finishes only if among the best; 1 trains every trial fully")] = 3,
    workers: Annotated[int, typer.Option(min=1, help="trials training at once on this machine")] = 1,
    storage: Annotated[str | None, typer.Option(help="postgresql://user@host/db to share the study between "
                                                     "machines [default: a journal file in the folder]")] = None,
    seeds: Annotated[str, typer.Option(help="re-evaluation seeds of the Pareto set and the hand defaults")] = "1,2,3",
    defaults: Annotated[str, typer.Option(help="hand defaults to compare with (strategies at their own settings)")]
    = "lora,ia3,adapter,prefix",
    seed: Annotated[int, typer.Option(help="the sampler's seed, and the training seed of every trial")] = 42,
    batch_size: Annotated[int | None, typer.Option(help="examples per training step")] = None,
    max_length: Annotated[int | None, typer.Option(help="tokens per example")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="any config key, e.g. training.warmup_ratio=0.1")]
    = None,
    quiet: Annotated[bool, typer.Option(help="no progress display")] = False,
    executor: ExecutorFlag = "local",
    address: AddressFlag = None,
    cpus_per_run: CpusFlag = None,
    gpus_per_run: GpusFlag = None,
    memory_per_run: MemoryFlag = None,
) -> None:
    """Search strategy families and their structure for the Pareto front of quality and cost; resumable."""
    from tunelab.search.run import run_search
    from tunelab.search.space import read_space
    from tunelab.search.study import SearchSpec

    where = executor_choice(executor, address, cpus_per_run, gpus_per_run, memory_per_run)
    flags: dict[str, Any] = {key: value for key, value in locals().items()
                             if key in ("model", "data", "task", "text_column", "label_column", "limit_train",
                                        "seed", "batch_size", "max_length")}
    base = run_config(config_file, flags, set_, None, None, None)
    spec = SearchSpec(base=base.model_dump(mode="json", exclude={"strategy", "output"}, exclude_defaults=True),
                      space=read_space(space), objectives=objectives, trials=trials, eta=eta, seed=seed,
                      reevaluate_seeds=comma_list(seeds, "seeds", int), hand_defaults=comma_list(defaults, "defaults"))
    run_search(output, spec, console, workers, storage, progress=not quiet, executor=where)
    print_search_report(output)


def from_search_config(folder: Path, trial: int, output: Path | None) -> Any:
    """The run config of a search's trial at the full rows and the search's seed (for `train --from-search`)."""
    from tunelab.search.trials import trial_config

    if output is None:
        raise TunelabError("no output directory: pass --output DIR")
    return trial_config(folder, trial, output)
