"""The search's report: the front as a picture (every trial's validation quality against its trainable share, the
Pareto set and the hand defaults re-evaluated on the test split over seeds), the table, and the verdict for each
hand default; one self-contained HTML page, as the compare report is."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt

from tunelab.compare.page import STYLE, html_table
from tunelab.compare.plots import svg_text
from tunelab.errors import TunelabError
from tunelab.runs import read_json, write_text_atomic
from tunelab.search.objectives import format_cost
from tunelab.search.study import RESULT_FILE

REPORT_FILE = "report.html"
SEARCH_HEADER = ["configuration", "strategy", "test (mean ± sd)", "seeds", "trainable", "share", "delta",
                 "latency", "searched as"]


def read_result(folder: Path) -> dict[str, Any]:
    if not (folder / RESULT_FILE).exists():
        raise TunelabError(f"{folder} has no finished search ({RESULT_FILE}); run `tunelab search` with --output "
                           f"{folder}")
    return read_json(folder / RESULT_FILE)


def verdict(winners: list[str]) -> str:
    """What the search found against one hand default."""
    return f"dominated by {', '.join(winners)}" if winners else "not dominated beyond noise by the Pareto set"


def search_rows(result: dict[str, Any]) -> list[list[str]]:
    """One row per re-evaluated configuration: the Pareto set first, then the hand defaults."""
    rows = sorted(result["evaluated"], key=lambda row: (row["hand_default"], -row["test_mean"]))
    return [[row["name"], row["plan"], f"{row['test_mean']:.3f} ± {row['test_sd']:.3f}", str(row["seeds"]),
             format_cost("trainable-params", row["trainable-params"]), f"{row['trainable_share']:.3%}",
             format_cost("delta-bytes", row["delta-bytes"]), format_cost("latency", row["latency"]),
             "hand default" if row["hand_default"] else "Pareto set"] for row in rows]


def front_plot(result: dict[str, Any]) -> str:
    """Validation quality of every trial (low-rung trials faint) and the re-evaluated test means, against the
    trainable share on a log scale."""
    objectives, evaluated = result["objectives"], result["evaluated"]
    quality = next(name for name in objectives if name not in result["costs"])
    index = objectives.index(quality)
    figure, axes = plt.subplots(figsize=(7.5, 4.5))
    sizes = [row["trainable-params"] / row["trainable_share"] for row in evaluated if row["trainable_share"]]
    params = objectives.index("trainable-params") if "trainable-params" in objectives else None
    if params is not None and sizes:  # the trials' parameter counts as shares of the whole model
        whole = sizes[0]
        for state, style in (("pruned", {"color": "0.75", "s": 14}), ("complete", {"color": "tab:blue", "s": 22})):
            trials = [trial for trial in result["search_trials"] if trial["state"] == state]
            values = [trial["values"] or trial["low_values"] for trial in trials]
            axes.scatter([value[params] / whole for value in values], [value[index] for value in values],
                         label=f"trials, validation ({state})", **style)
    for default, marker, colour in ((False, "o", "tab:green"), (True, "*", "tab:red")):
        rows = [row for row in evaluated if row["hand_default"] == default]
        axes.errorbar([row["trainable_share"] for row in rows], [row["test_mean"] for row in rows],
                      yerr=[row["test_sd"] for row in rows], fmt=marker, color=colour, capsize=3, markersize=9,
                      label="hand defaults, test" if default else "Pareto set re-evaluated, test")
        for row in rows:
            axes.annotate(row["name"], (row["trainable_share"], row["test_mean"]), textcoords="offset points",
                          xytext=(5, 4), fontsize=7)
    axes.set(xscale="log", xlabel="trainable share of the model (log scale)", ylabel=quality,
             title=f"{quality} against trainable parameters")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="lower right")
    return svg_text(figure)


def render(folder: Path, result: dict[str, Any]) -> str:
    trials = result["trials"]
    verdicts = "".join(f"<li><b>{html.escape(default)}</b>: {html.escape(verdict(winners))}</li>"
                       for default, winners in result["dominates"].items())
    table = html_table(SEARCH_HEADER, [[html.escape(cell) for cell in row] for row in search_rows(result)],
                       frozenset({0, 1, 8}))
    title = f"Configuration search: {folder.name}"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title><style>{STYLE}</style></head>
<body>
<h1>{html.escape(title)}</h1>
<p class="muted">objectives {html.escape(", ".join(result["objectives"]))} ·
sampler {html.escape(str(result["sampler"]))} · {result["rows"]} training rows, low rung 1/{result["eta"]} of them ·
{trials["complete"]} trials finished, {trials["pruned"]} stopped at the low rung, {trials["fail"]} failed,
{result["interrupted"]} interrupted and run again</p>
<h2>Against the hand defaults</h2>
<p class="muted">A configuration dominates a default when it is no worse beyond noise with fewer trainable
parameters, or better beyond noise with no more; noise is twice the standard error of the difference over seeds.</p>
<ul>{verdicts}</ul>
<h2>The front</h2>
<figure>{front_plot(result)}</figure>
<h2>Re-evaluated on the test split</h2>
{table}
</body></html>
"""


def write_search_page(folder: Path, result: dict[str, Any]) -> Path:
    path = folder / REPORT_FILE
    write_text_atomic(path, render(folder, result))
    return path
