"""The grid's trade-offs as pictures: SVG text that the HTML report embeds, so it opens without a network.

Each plot shows the mean over seeds with the standard deviation as an error bar (none for a single seed).
"""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")  # no display: the plots are files
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import NullFormatter  # noqa: E402

FAMILY_MARKERS = {"full": "s", "feature extraction": "v", "parameter-efficient": "o", "prompt-based": "D",
                  "black-box": "*"}
matplotlib.rcParams["svg.hashsalt"] = "tunelab"  # stable element ids: the same grid gives the same page


def _colours(strategies: list[str]) -> dict[str, tuple]:
    palette = plt.get_cmap("tab20" if len(strategies) > 10 else "tab10")
    return {name: palette(index) for index, name in enumerate(strategies)}


def svg_text(figure: Figure) -> str:
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg", bbox_inches="tight")
    plt.close(figure)
    text = buffer.getvalue()
    return text[text.index("<svg"):]  # drop the XML prolog and doctype: the SVG sits inside HTML


def _errors(frame: pd.DataFrame) -> np.ndarray:
    return frame["accuracy_std"].fillna(0.0).to_numpy()


def accuracy_vs_parameters(summary: pd.DataFrame, train_size: int) -> str:
    """Accuracy against trainable parameters on a log scale, at one training-set size (black-box cells, which
    train no weights of their own, are not on it)."""
    rows = summary[(summary["train_size"] == train_size) & summary["trainable_parameters"].notna()]
    colours = _colours(list(dict.fromkeys(summary["strategy"])))
    figure, axes = plt.subplots(figsize=(7, 4.2))
    for _, row in rows.iterrows():
        axes.errorbar(row["trainable_parameters"], row["accuracy_mean"], yerr=_errors(rows.loc[[row.name]]),
                      fmt=FAMILY_MARKERS.get(row["family"], "o"), color=colours[row["strategy"]], capsize=3,
                      markersize=8, label=row["strategy"])
        axes.annotate(row["strategy"], (row["trainable_parameters"], row["accuracy_mean"]),
                      textcoords="offset points", xytext=(6, 4), fontsize=8)
    axes.margins(x=0.12)  # room for the names of the points at either end
    axes.set(xscale="log", xlabel="trainable parameters (log scale)", ylabel="test accuracy",
             title=f"accuracy against trainable parameters, {train_size} training examples")
    axes.grid(alpha=0.3)
    return svg_text(figure)


def accuracy_vs_train_size(summary: pd.DataFrame) -> str:
    """One line per strategy across training-set sizes: which strategies hold up when labels are few."""
    colours = _colours(list(dict.fromkeys(summary["strategy"])))
    figure, axes = plt.subplots(figsize=(7, 4.2))
    for strategy, rows in summary.groupby("strategy", sort=False):
        rows = rows.sort_values("train_size")
        axes.errorbar(rows["train_size"], rows["accuracy_mean"], yerr=_errors(rows), color=colours[strategy],
                      marker=FAMILY_MARKERS.get(rows["family"].iloc[0], "o"), capsize=3, label=strategy)
    axes.set(xscale="log", xlabel="training examples (log scale)", ylabel="test accuracy",
             title="accuracy against training-set size")
    sizes = sorted(summary["train_size"].unique())
    axes.set_xticks(sizes, labels=[str(size) for size in sizes])
    axes.xaxis.set_minor_formatter(NullFormatter())
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return svg_text(figure)


def _grouped_bars(summary: pd.DataFrame, column: str, scale: float, ylabel: str, title: str, log: bool) -> str:
    """One group of bars per strategy, one bar per training-set size."""
    strategies = list(dict.fromkeys(summary["strategy"]))
    sizes = sorted(summary["train_size"].unique())
    width = 0.8 / len(sizes)
    figure, axes = plt.subplots(figsize=(7.5, 3.8))
    for index, size in enumerate(sizes):
        rows = summary[summary["train_size"] == size].set_index("strategy").reindex(strategies)
        axes.bar(np.arange(len(strategies)) + index * width, rows[column] / scale, width,
                 label=f"{size} examples")
    axes.set_xticks(np.arange(len(strategies)) + width * (len(sizes) - 1) / 2, labels=strategies, rotation=30,
                    ha="right")
    axes.set(ylabel=ylabel, title=title, yscale="log" if log else "linear")
    axes.grid(axis="y", alpha=0.3)
    axes.legend(fontsize=8)
    return svg_text(figure)


def training_time(summary: pd.DataFrame) -> str:
    return _grouped_bars(summary, "train_s_mean", 1.0, "seconds", "training time (mean over seeds)", log=False)


def peak_memory(summary: pd.DataFrame) -> str:
    return _grouped_bars(summary, "peak_memory_bytes", 2**30, "GiB", "peak memory while training", log=False)


def storage_per_task(summary: pd.DataFrame) -> str:
    """What each extra task costs on disk: the delta, against a full model copy per task (dashed); black-box cells
    are not measured."""
    rows = summary[summary["delta_bytes"].notna()].drop_duplicates("strategy", keep="last")
    figure, axes = plt.subplots(figsize=(7.5, 3.8))
    colours = _colours(list(rows["strategy"]))
    axes.bar(rows["strategy"], rows["delta_bytes"], color=[colours[name] for name in rows["strategy"]])
    axes.axhline(rows["full_copy_bytes"].max(), linestyle="--", color="grey", label="a full model copy")
    axes.set(yscale="log", ylabel="bytes on disk per task (log scale)", title="storage per task")
    axes.tick_params(axis="x", rotation=30)
    axes.grid(axis="y", alpha=0.3)
    axes.legend(fontsize=8)
    return svg_text(figure)


def blackbox_searches(summary: pd.DataFrame, searches: pd.DataFrame, train_size: int) -> str:
    """What the calls bought, next to gradients: each black-box search's validation accuracy (its K shots) against
    the calls it had made, a thin line per seed; its test accuracy (mean over seeds) where it ended; the trained
    strategies' test accuracy at the same training-set size as dashed lines."""
    colours = _colours(list(dict.fromkeys(summary["strategy"])))
    figure, axes = plt.subplots(figsize=(7, 4.2))
    for (strategy, _), points in searches[searches["train_size"] == train_size].groupby(["strategy", "seed"],
                                                                                        sort=False):
        axes.step(points["calls"], points["validation_accuracy"], where="post", color=colours[strategy], alpha=0.5,
                  linewidth=1)
    for _, row in summary[summary["train_size"] == train_size].iterrows():
        if row["strategy"] in set(searches["strategy"]):
            axes.plot(row["calls_mean"], row["accuracy_mean"], marker="*", markersize=13, linestyle="none",
                      color=colours[row["strategy"]], label=f"{row['strategy']}: test (thin: validation)")
        else:
            axes.axhline(row["accuracy_mean"], linestyle="--", color=colours[row["strategy"]],
                         label=f"{row['strategy']}: test")
    axes.set(xlabel="calls made", ylabel="accuracy",
             title=f"black-box searches against calls, {train_size} training examples")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return svg_text(figure)


def all_plots(summary: pd.DataFrame, searches: pd.DataFrame) -> dict[str, str]:
    """Title -> SVG, in the order the report shows them: what a grid of black-box cells alone measured first (it
    has no trained weights to count, hold in memory or store), then the trained weights' costs, then the
    black-box searches against their calls, at the largest size they ran."""
    plots = {"Accuracy against training-set size": accuracy_vs_train_size(summary),
             "Training time": training_time(summary)}
    trained = summary[summary["trainable_parameters"].notna()]
    if not trained.empty:
        plots |= {"Accuracy against trainable parameters": accuracy_vs_parameters(summary,
                                                                                  int(trained["train_size"].max())),
                  "Peak memory": peak_memory(summary), "Storage per task": storage_per_task(summary)}
    if not searches.empty:
        plots["Black-box searches against calls"] = blackbox_searches(summary, searches,
                                                                      int(searches["train_size"].max()))
    return plots
