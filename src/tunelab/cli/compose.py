"""Several tasks on one base model: `tunelab compose bundle`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from tunelab.cli.app import app, console

compose_app = typer.Typer(help="Put several tasks' runs on one base model.", no_args_is_help=True)
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
