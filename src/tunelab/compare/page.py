"""The grid's report as one self-contained HTML page: tables, the claims checked, and inline SVG plots.

No script, stylesheet, font or image is fetched: the page opens the same offline, attached to an email or
archived with the runs.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from tunelab.compare.claims import Claim, noise_note
from tunelab.compare.grid import has_blackbox
from tunelab.compare.plots import all_plots
from tunelab.compare.results import GridResults, failures_by_reason
from tunelab.config import build_config
from tunelab.runs import write_text_atomic
from tunelab.units import human_bytes, human_count

REPORT_FILE = "report.html"
STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; color: #222; padding: 0 1em; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border-bottom: 1px solid #ddd; padding: 0.3em 0.7em; text-align: right; }
th:first-child, td.text { text-align: left; }
.holds { color: #1a7f37; } .does-not-hold { color: #b42318; } .within-noise, .not-measured { color: #8a6d00; }
figure { margin: 1.5em 0; } figure svg { max-width: 100%; height: auto; }
.muted { color: #666; font-size: 0.9em; }
"""
BLACKBOX_NOTE = ("Black-box cells (blackbox:METHOD) train no weights: their train time is the calls their search made "
                 "and its wall time; they learn from train n // labels examples per label, validate on as many, and "
                 "take no part in the claims or in `tunelab recommend`.")


def html_table(header: list[str], rows: list[list[str]], text_columns: frozenset[int] = frozenset({0})) -> str:
    """An HTML table of already escaped cells; text columns align left, numbers right."""
    head = "".join(f"<th>{html.escape(cell)}</th>" for cell in header)
    body = "".join("<tr>" + "".join(f'<td class="text">{cell}</td>' if index in text_columns else f"<td>{cell}</td>"
                                    for index, cell in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _mean_std(mean: float, std: float) -> str:
    return f"{mean:.3f}" if math.isnan(std) else f"{mean:.3f} ± {std:.3f}"


def _measured(value: float, show: Callable[[float], str]) -> str:
    """A measured value as `show` writes it; "-" where a row has none (a black-box cell trains no weights)."""
    return "-" if pd.isna(value) else show(value)


def _trainable(row: pd.Series) -> str:
    return _measured(row["trainable_parameters"],
                     lambda count: f"{human_count(int(count))} ({row['trainable_share']:.3%})")


def _cost(row: pd.Series) -> str:
    """Training time, or for a black-box cell the calls its search made (mean over seeds) and its wall time."""
    seconds = f"{row['train_s_mean']:.1f} s"
    return seconds if pd.isna(row["calls_mean"]) else f"{row['calls_mean']:,.0f} calls, {seconds}"


def summary_rows(summary: pd.DataFrame) -> list[list[str]]:
    """The cells of the summary table, shared by the page and the terminal; a grid of two models names each
    row's."""
    several = summary["model"].nunique() > 1
    return [[f"{row['strategy']} ({row['model']})" if several else row["strategy"], f"{row['train_size']}",
             f"{row['seeds']}" + (f" ({row['unlearned']} did not learn)" if row["unlearned"] else ""),
             _mean_std(row["accuracy_mean"], row["accuracy_std"]),
             _measured(row["macro_f1_mean"], lambda value: f"{value:.3f}"),
             _trainable(row), _cost(row), _measured(row["peak_memory_bytes"], human_bytes),
             _measured(row["delta_bytes"], human_bytes),
             _measured(row["latency_ms"], lambda value: f"{value:.1f} ms")] for _, row in summary.iterrows()]


SUMMARY_HEADER = ["strategy", "train n", "seeds", "accuracy", "macro-F1", "trainable", "train time", "peak memory",
                  "on disk", "latency"]


def _claims(claims: list[Claim]) -> str:
    rows = [[html.escape(claim.statement), f"{claim.train_size}",
             f'<span class="{claim.verdict.replace(" ", "-")}">{claim.verdict}</span>', html.escape(claim.evidence)]
            for claim in claims]
    return html_table(["claim (the article's section 6)", "train n", "verdict", "evidence"], rows, frozenset({0, 2, 3}))


def render(results: GridResults, summary: pd.DataFrame, claims: list[Claim]) -> str:
    spec = results.spec
    base = build_config(spec.base)
    models = f"{base.model}, prompt-based on {spec.prompt_model}" if spec.prompt_model else base.model
    title = f"tunelab compare: {models} on {base.data.source}"
    failures = "".join(f"<li>{', '.join(f'<code>{html.escape(cell)}</code>' for cell in cells)}: "
                       f"{html.escape(reason)}</li>" for reason, cells in failures_by_reason(results.failures).items())
    figures = "".join(f'<figure aria-label="{html.escape(name)}">{svg}</figure>'
                      for name, svg in all_plots(summary, results.searches).items())
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title><style>{STYLE}</style></head>
<body>
<h1>{html.escape(title)}</h1>
<p class="muted">{len(results.cells)} of {results.planned} runs finished ·
strategies {html.escape(", ".join(spec.strategies))} ·
training sizes {", ".join(map(str, spec.train_sizes))} · seeds {", ".join(map(str, spec.seeds))} ·
{f"{spec.epochs:g} epochs" if spec.epochs else "each strategy's epochs"}, at least {spec.min_steps} steps,
{f"black-box cells at most {spec.blackbox_budget:,} calls each," if spec.blackbox_budget else ""}
batch {base.training.batch_size} · written {datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}</p>
<h2>The article's claims, measured</h2>
<p class="muted">{html.escape(noise_note(len(spec.seeds), base.data.limit_eval))} "Within 1-2% of full" is a
bound: it holds when the measured gap is at most 2 points.</p>
{_claims(claims)}
<h2>Results</h2>
<p class="muted">Test accuracy: mean ± standard deviation over seeds. Train time includes the per-epoch validation.
Latency: one example at a time. {BLACKBOX_NOTE if has_blackbox(spec) else ""}</p>
{html_table(SUMMARY_HEADER, [[html.escape(cell) for cell in row] for row in summary_rows(summary)])}
{f"<h2>Runs that failed</h2><ul>{failures}</ul>" if failures else ""}
<h2>Plots</h2>
{figures}
</body></html>
"""


def write_page(results: GridResults, summary: pd.DataFrame, claims: list[Claim]) -> Path:
    path = results.folder / REPORT_FILE
    write_text_atomic(path, render(results, summary, claims))
    return path
