"""Readable terminal tables for runs, datasets and models."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
from rich.console import RenderableType
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from tunelab.compare.claims import Claim
from tunelab.config import build_config, read_yaml
from tunelab.runs import CONFIG_FILE, METRICS_FILE, RESOURCES_FILE, read_json, require_run
from tunelab.units import human_bytes, human_count


def on_disk(resources: dict[str, Any]) -> str:
    """The delta's size, and its share of a full model copy (runs written before issue 3 lack the latter)."""
    delta, full = resources["delta_bytes"], resources.get("full_copy_bytes")
    return f"{human_bytes(delta)} ({delta / full:.2%} of full)" if full else human_bytes(delta)


def latency(resources: dict[str, Any]) -> str:
    """Per-example latency at batch 1; runs trained through TRL (`rlhf sft`) do not measure it."""
    value = resources.get("latency_ms_per_example")
    return "-" if value is None else f"{value:.1f} ms"


def scores_task(scores: dict[str, Any]) -> str:
    """Which task wrote these test scores, told by the metric only that task reports (runs and evaluations carry
    no task name; exports and policy runs have no config to read it from)."""
    for key, task in (("perplexity", "generation"), ("pearson", "regression"), ("exact_match", "question-answering"),
                      ("per_type", "token-classification")):
        if key in scores:
            return task
    return "classification"


# task -> its two quality columns in `runs_table`, from a run's metrics.json
QUALITY_COLUMNS: dict[str, Callable[[dict[str, Any]], tuple[str, str]]] = {
    "classification": lambda m: (f"{m['test']['accuracy']:.3f}", f"{m['test']['macro_f1']:.3f}"),
    "regression": lambda m: (f"Pearson {m['test']['pearson']:.3f}", f"Spearman {m['test']['spearman']:.3f}"),
    "question-answering": lambda m: (f"EM {m['test']['exact_match']:.1f}", f"F1 {m['test']['f1']:.1f}"),  # percent
    "token-classification": lambda m: (f"entity F1 {m['test']['f1']:.3f}", f"token acc {m['test']['accuracy']:.3f}"),
    "generation": lambda m: (f"loss {m['test']['loss']:.3f} (base {m['base_test']['loss']:.3f})",
                             f"ppl {m['test']['perplexity']:.2f} (base {m['base_test']['perplexity']:.2f})"),
}


def quality_columns(metrics: dict[str, Any]) -> tuple[str, str]:
    """The two quality columns of a run, by task: accuracy and macro-F1, Pearson and Spearman, SQuAD exact match
    and F1, entity F1 and token accuracy, or the test loss and perplexity beside the untrained model's."""
    return QUALITY_COLUMNS[scores_task(metrics["test"])](metrics)


def runs_table(run_dirs: list[Path], title: str = "runs") -> Table:
    """One row per run: strategy, its task's two test scores (`quality_columns`), and the costs."""
    table = Table(title=title)
    for column in ("run", "strategy", "train n", "test score", "second score", "trainable", "train time",
                   "peak mem", "on disk", "latency"):
        table.add_column(column, justify="left" if column in ("run", "strategy") else "right")
    for run_dir in run_dirs:
        require_run(run_dir)
        config = build_config(read_yaml(run_dir / CONFIG_FILE))
        metrics: dict[str, Any] = read_json(run_dir / METRICS_FILE)
        resources: dict[str, Any] = read_json(run_dir / RESOURCES_FILE)
        table.add_row(
            run_dir.name, config.strategy.name, str(metrics["train_examples"]), *quality_columns(metrics),
            f"{human_count(resources['trainable_parameters'])} ({resources['trainable_share'] * 100:.3g}%)",
            f"{resources['train_s']:.1f} s", human_bytes(resources["peak_memory_bytes"]),
            on_disk(resources), latency(resources),
        )
    return table


def grid_table(summary: pd.DataFrame, title: str) -> Table:
    """A compare grid summarised over seeds: one row per (strategy, training-set size)."""
    from tunelab.compare.page import SUMMARY_HEADER, summary_rows

    table = Table(title=title)
    for column in SUMMARY_HEADER:
        table.add_column(column, justify="left" if column == "strategy" else "right")
    for row in summary_rows(summary):
        table.add_row(*row)
    return table


def claims_table(claims: list[Claim]) -> Table:
    colours = {"holds": "green", "does not hold": "red"}
    table = Table(title="the article's claims, measured")
    for column in ("claim", "train n", "verdict", "evidence"):
        table.add_column(column, justify="right" if column == "train n" else "left")
    for claim in claims:
        table.add_row(claim.statement, str(claim.train_size),
                      Text(claim.verdict, style=colours.get(claim.verdict, "yellow")), claim.evidence)
    return table


def metrics_table(metrics: dict[str, Any], title: str) -> Table:
    """Per-class precision/recall/F1 with accuracy and macro-F1 in the caption."""
    table = Table(title=title, caption=f"accuracy {metrics['accuracy']:.3f} · macro-F1 {metrics['macro_f1']:.3f} · "
                                       f"{metrics['examples']} examples")
    for column in ("label", "precision", "recall", "F1", "support"):
        table.add_column(column, justify="left" if column == "label" else "right")
    for label, row in metrics["per_class"].items():
        table.add_row(label, f"{row['precision']:.3f}", f"{row['recall']:.3f}", f"{row['f1-score']:.3f}",
                      f"{row['support']:.0f}")
    return table


def regression_scores(scores: dict[str, Any]) -> str:
    """A regression run's scores on one line, in the data's units."""
    return (f"Pearson {scores['pearson']:.3f} · Spearman {scores['spearman']:.3f} · MAE {scores['mae']:.3f} · "
            f"RMSE {scores['rmse']:.3f} · {scores['examples']} examples")


def generation_scores(scores: dict[str, Any], base: dict[str, Any] | None = None) -> str:
    """A generation run's held-out scores on one line; with `base`, each after the untrained model's."""

    def value(key: str, digits: int) -> str:
        now = f"{scores[key]:.{digits}f}"
        return f"{base[key]:.{digits}f} -> {now}" if base and key in base else now

    line = f"loss {value('loss', 3)} · perplexity {value('perplexity', 2)}"
    if "rouge_l" in scores:
        line += f" · ROUGE-L {value('rouge_l', 3)} (F1, 0-1, on {scores['rouge_examples']} greedy answers)"
    return line + f" · {scores['examples']} examples, {scores['tokens']} answer tokens"


def squad_table(metrics: dict[str, Any], title: str) -> Table:
    """SQuAD exact match and F1 (percent) over all questions, and on SQuAD 2.0 data over the answerable and the
    unanswerable ones apart."""
    table = Table(title=title)
    for column in ("questions", "count", "exact match", "F1"):
        table.add_column(column, justify="left" if column == "questions" else "right")
    for name, prefix in (("all", ""), ("answerable", "has_answer_"), ("unanswerable", "no_answer_")):
        if f"{prefix}examples" in metrics:
            table.add_row(name, str(metrics[f"{prefix}examples"]), f"{metrics[f'{prefix}exact_match']:.2f}",
                          f"{metrics[f'{prefix}f1']:.2f}")
    return table


def entity_metrics_table(metrics: dict[str, Any], title: str) -> Table:
    """Entity-level precision, recall and F1 per type and over all entities (micro, as CoNLL reports them), with
    token accuracy and the words the model did not read in the caption."""
    unread = metrics["unread_words"]
    caption = (f"macro-F1 {metrics['macro_f1']:.3f} · token accuracy {metrics['accuracy']:.3f} · "
               f"{metrics['sentences']} sentences, {metrics['words']} words"
               + (f" · {unread} words unread (cut by max_length or given no token), tagged O" if unread else ""))
    table = Table(title=title, caption=caption, min_width=len(caption))  # the caption on one line
    for column in ("type", "precision", "recall", "F1", "entities"):
        table.add_column(column, justify="left" if column == "type" else "right")
    rows = [*metrics["per_type"].items(), ("all (micro)", {**metrics, "support": metrics["entities"]})]
    for kind, row in rows:
        table.add_row(escape(kind), *(f"{row[name]:.3f}" for name in ("precision", "recall", "f1")),
                      str(row["support"]), style="bold" if kind == "all (micro)" else None)
    return table


def entities_table(texts: list[str], found: list[list[Any]], title: str) -> Table:
    """The entities found in each text: their words, type, character span and confidence."""
    table = Table(title=title)
    for column in ("text", "entity", "type", "start", "end", "confidence"):
        table.add_column(column, justify="right" if column in ("start", "end", "confidence") else "left")
    for text, entities in zip(texts, found, strict=True):
        if not entities:
            table.add_row(escape(text), "-", "", "", "", "")
        for index, entity in enumerate(entities):
            table.add_row(escape(text) if index == 0 else "", f"[bold]{escape(entity.text)}[/bold]",
                          escape(entity.type), str(entity.start), str(entity.end), f"{entity.score:.3f}")
    return table


def evaluation_view(metrics: dict[str, Any], title: str) -> RenderableType:
    """What `tunelab eval` shows for its task's metrics: a line of scores, or a table per class, type or subset."""
    views: dict[str, Callable[[], RenderableType]] = {
        "generation": lambda: f"{escape(title)}: {generation_scores(metrics)}",
        "regression": lambda: f"{escape(title)}: {regression_scores(metrics)}",
        "question-answering": lambda: squad_table(metrics, title=f"{title} (SQuAD scores, %)"),
        "token-classification": lambda: entity_metrics_table(metrics, title=f"{title} (entities)"),
        "classification": lambda: metrics_table(metrics, title=title),
    }
    return views[scores_task(metrics)]()
