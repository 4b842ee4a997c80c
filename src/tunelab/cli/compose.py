"""Several tasks on one base model: `tunelab compose bundle`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from tunelab.cli.app import app, console
from tunelab.cli.options import PRECISION_HELP, TEMPLATE_HELP, VERBALIZER_HELP

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
    from tunelab.report import named_scores

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


@compose_app.command("hub")
def hub(
    runs: Annotated[list[str], typer.Argument(help="lora runs of other tasks on one base model (NAME=PATH or PATH)")],
    data: Annotated[str, typer.Option(help="the new task's data: a file or an embedded dataset")],
    output: Annotated[Path, typer.Option(help="the new run's folder")],
    shots: Annotated[int, typer.Option(help="labelled examples per label, for training and again for validation")] = 16,
    budget: Annotated[int, typer.Option(help="weight settings to try (each: a forward of the shots and a head "
                                             "fit)")] = 80,
    l1: Annotated[float, typer.Option(help="the penalty on the sum of the weights' magnitudes")] = 0.05,
    text_column: Annotated[str, typer.Option(help="the data's text column")] = "text",
    label_column: Annotated[str, typer.Option(help="the data's label column")] = "label",
    seed: Annotated[int, typer.Option(help="draws the shots and seeds the search")] = 42,
    template: Annotated[str | None, typer.Option(help=f"pet sources: {TEMPLATE_HELP}")] = None,
    verbalizer: Annotated[list[str] | None, typer.Option(help=f"pet sources: {VERBALIZER_HELP}")] = None,
    overwrite: Annotated[bool, typer.Option(help="replace an existing run at --output")] = False,
) -> None:
    """A new classification task from a few labelled examples and other tasks' LoRA runs (LoraHub): one weight per
    run found without gradients, and a head fitted on the examples (none for pet runs tuned with lora, which answer
    through a template). Writes an ordinary run and scores it on the data's test split beside the base model and
    each source run alone."""
    from rich.progress import Progress

    from tunelab.cli.options import prompt_settings, quiet_libraries
    from tunelab.compose.hub import HubSearch, compose_hub

    quiet_libraries()
    prompt = prompt_settings(template, verbalizer)
    with Progress(console=console, transient=True) as bar:
        searching = bar.add_task("searching the weights", total=budget)
        path, metrics = compose_hub(runs, {"source": data, "text_column": text_column, "label_column": label_column},
                                    output, shots, HubSearch(budget, l1), seed, overwrite, prompt=prompt,
                                    progress=lambda done, best: bar.update(searching, completed=done))
    console.print(hub_table(path, metrics))
    console.print(f"run saved to [bold]{escape(str(path))}[/bold]; predict with `tunelab predict {escape(str(path))} "
                  f"TEXT`")


def hub_table(path: Path, metrics: dict) -> Table:
    """The composed run on the test split beside the base model and each source alone, with the weights found."""
    found = metrics["hub"]
    table = Table(title=f"{path}: {metrics['train_examples']} training and {metrics['validation_examples']} "
                        f"validation shots", caption=f"{found['curve'][-1]['evaluation']} weight settings tried; "
                                                     f"any head fitted on the shots")
    for column in ("model", "weights", "test accuracy", "test macro-F1"):
        table.add_column(column)
    rows = [("composed", ", ".join(f"{name} {weight:+.2f}" for name, weight in found["weights"].items()),
             metrics["test"])]
    rows += [("base model" if name == "base_and_head" else f"{name} alone", "-", test)
             for name, test in found["alone"].items()]
    for name, weights, test in rows:
        table.add_row(escape(name), escape(weights), f"{test['accuracy']:.3f}", f"{test['macro_f1']:.3f}")
    return table
