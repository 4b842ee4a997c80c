"""Several tasks on one base model: `tunelab compose bundle`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from tunelab.cli.app import app, console
from tunelab.cli.options import PRECISION_HELP

compose_app = typer.Typer(help="Put several tasks' runs on one base model: bundle them, or merge their deltas.",
                          no_args_is_help=True)
app.add_typer(compose_app, name="compose")


@compose_app.command("bundle")
def bundle(
    runs: Annotated[list[str], typer.Argument(help="run directories (each task is named by its folder), or "
                                                   "NAME=PATH")],
    output: Annotated[Path, typer.Option(help="the bundle's folder")],
    overwrite: Annotated[bool, typer.Option(help="replace an existing bundle at --output")] = False,
) -> None:
    """One base model, several tasks: copy trained runs (any task, any strategy) into one bundle, after checking
    that they share the base model's weights. `predict`, `eval` and `summary` read it (`--task NAME`)."""
    from tunelab.compose.bundle import make_bundle
    from tunelab.report import runs_table

    made = make_bundle(runs, output, overwrite)
    console.print(runs_table(made.runs(), title=f"{len(made.tasks)} tasks on {made.model}"))
    console.print(f"bundle saved to [bold]{escape(str(made.path))}[/bold]; predict with `tunelab predict "
                  f"{escape(str(made.path))} --task {escape(next(iter(made.tasks)))} TEXT`")


@compose_app.command("merge")
def merge(
    runs: Annotated[list[str], typer.Argument(help="lora runs, or ia3 runs, on one base model (each task named by "
                                                   "its folder, or NAME=PATH)")],
    output: Annotated[Path, typer.Option(help="the merged bundle's folder")],
    method: Annotated[str, typer.Option(help="linear (weighted sum, exact), task-arithmetic, ties, dare-linear, "
                                             "dare-ties, or cat (LoRA factors side by side, exact)")] = "linear",
    weights: Annotated[str | None, typer.Option(help="one weight per run, comma-separated [default: 1/N for linear "
                                                     "and cat, else 1]")] = None,
    scale: Annotated[float | None, typer.Option(help="task-arithmetic, ties, dare: the merged vector's "
                                                     "multiplier [default: 0.3]")] = None,
    density: Annotated[float | None, typer.Option(help="ties, dare: the share of each task vector kept "
                                                       "[default: 0.2]")] = None,
    rank: Annotated[int | None, typer.Option(help="lora: the merged update's rank [default: the sum of the runs' "
                                                  "ranks, exact for linear]")] = None,
    seed: Annotated[int, typer.Option(help="dare: the random drops' seed")] = 0,
    limit: Annotated[int | None, typer.Option(help="score each task on its first N test examples only")] = None,
    precision: Annotated[str, typer.Option(help=PRECISION_HELP)] = "auto",
    overwrite: Annotated[bool, typer.Option(help="replace an existing bundle at --output")] = False,
) -> None:
    """Merge several tasks' LoRA (or IA3) deltas into one delta on their base model; each task keeps its head.
    Writes a bundle (`predict`/`eval --task NAME`) and scores every task merged, single-task and base+head."""
    from rich.progress import Progress

    from tunelab.cli.options import comma_list, quiet_libraries
    from tunelab.compose.merge import merge_runs
    from tunelab.compose.task_vectors import MergeMethod

    quiet_libraries()
    chosen = MergeMethod(method, None if weights is None else tuple(comma_list(weights, "weights", float)), scale,
                         density, seed)
    with Progress(console=console, transient=True) as bar:
        scoring = bar.add_task("writing and scoring each task", total=len(runs))
        made, report = merge_runs(runs, output, chosen, rank, overwrite, limit, precision,
                                  announce=lambda *_: bar.advance(scoring))
    console.print(merge_table(made.path, report))
    console.print(f"merged bundle saved to [bold]{escape(str(made.path))}[/bold]; predict with `tunelab predict "
                  f"{escape(str(made.path))} --task {escape(next(iter(made.tasks)))} TEXT`")


def merge_table(path: Path, report: dict) -> Table:
    """Each task's test scores merged, single-task and with the base model and its head alone."""
    from tunelab.cli.runs import named_scores

    merge = report["merge"]
    settings = ", ".join(f"{key} {value}" for key, value in merge.items()
                         if key not in ("weights", "strategy", "factorisation_error"))
    caption = [f"{merge['strategy']} {settings}; weights {', '.join(f'{w:g}' for w in merge['weights'])}"]
    if "factorisation_error" in merge:
        caption.append(f"the rank-{merge['rank']} factorisation misses {merge['factorisation_error']:.1%} of the "
                       f"merged update (relative Frobenius norm)")
    if report["mean_kept"] is not None:
        caption.append(f"merged keeps {report['mean_kept']:.1%} of the single-task score on average")
    if report["limit"] is not None:
        caption.append(f"merged and base+head on the first {report['limit']} test examples, single-task on the "
                       f"whole test split")
    table = Table(title=f"{path}: {len(report['tasks'])} tasks merged", caption="\n".join(caption))
    for column in ("task", "predicts", "merged", "single-task", "base+head", "kept"):
        table.add_column(column)
    for name, task in report["tasks"].items():
        kind = task["task"]
        table.add_row(name, kind, *(named_scores(kind, {"test": task[key]}) for key in ("merged", "single_task",
                                                                                          "base_and_head")),
                      "—" if task["kept"] is None else f"{task['kept']:.1%}")
    return table
