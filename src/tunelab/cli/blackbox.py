"""`tunelab blackbox`: tune a model you can only query."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from tunelab.cli.app import app, console
from tunelab.cli.options import TEMPLATE_HELP, VERBALIZER_HELP
from tunelab.errors import TunelabError

APIS = ("tunelab", "openai", "openai-top")


@app.command()
def blackbox(
    output: Annotated[Path, typer.Option(help="the run's folder")],
    method: Annotated[str, typer.Option(help="bbt: a soft prompt searched by CMA-ES through a random projection "
                                             "(the model in this process, or a `tunelab serve` endpoint); search: "
                                             "edits of the instruction, the template's words and in-context "
                                             "demonstrations (any endpoint); mezo: a soft prompt or a LoRA trained "
                                             "by zeroth-order SPSA, two calls a step")] = "bbt",
    model: Annotated[str, typer.Option(help="the causal LM: in this process, or its name on --endpoint")]
    = "smollm2",
    data: Annotated[str, typer.Option(help="a file or an embedded dataset (classification)")] = "movie-snippets",
    endpoint: Annotated[str | None, typer.Option(help="a `tunelab serve` URL (http://host:port); default: the "
                                                      "model in this process")] = None,
    api: Annotated[str, typer.Option(help="what --endpoint speaks: tunelab (`tunelab serve`'s /v1/score), openai "
                                          "(any OpenAI-compatible /v1/completions with echo and logprobs), or "
                                          "openai-top (the same, the label word's first token read from the next "
                                          "token's top 20: servers without usable echo, e.g. llama-cpp-python)")]
    = "tunelab",
    api_key_env: Annotated[str | None, typer.Option(help="the environment variable holding the endpoint's API "
                                                         "key")] = None,
    shots: Annotated[int, typer.Option(help="labelled examples per label, for the search and again for "
                                            "validation")] = 16,
    budget: Annotated[int, typer.Option(min=1, help="calls the search may make (each scores every shot with "
                                                    "every label word)")] = 4000,
    virtual_tokens: Annotated[int, typer.Option(min=1, help="mezo: the soft prompt's length (bbt's soft prompt is "
                                                            "the template's words)")] = 10,
    intrinsic_dim: Annotated[int, typer.Option(min=1, help="bbt: the searched dimension")] = 500,
    population: Annotated[int, typer.Option(min=2, help="bbt: CMA-ES candidates per generation")] = 20,
    generations: Annotated[int, typer.Option(min=1, help="bbt: CMA-ES generations, fewer if the budget ends "
                                                         "first")] = 25,
    demonstrations: Annotated[int, typer.Option(min=0, help="search: in-context examples at most")] = 4,
    tune: Annotated[str, typer.Option(help="mezo: what trains: soft-prompt (before the text; this process or a "
                                           "`tunelab serve` endpoint) or lora (on the weights; this process "
                                           "only)")] = "soft-prompt",
    rank: Annotated[int, typer.Option(min=1, help="mezo --tune lora: the update's rank")] = 8,
    target_modules: Annotated[str | None, typer.Option(help="mezo --tune lora: comma-separated module names to "
                                                            "adapt, or all-linear (default: the attention's query "
                                                            "and value)")] = None,
    lr: Annotated[float | None, typer.Option(min=0, help="mezo: the learning rate (default: 1e-3 for a soft "
                                                         "prompt, 1e-4 for lora)")] = None,
    epsilon: Annotated[float | None, typer.Option(min=0, help="mezo: the perturbation's size (default: 1e-3 for a "
                                                              "soft prompt, 1e-2 for lora)")] = None,
    eval_every: Annotated[int, typer.Option(min=1, help="mezo: steps between validation calls")] = 10,
    candidates: Annotated[int, typer.Option(min=1, help="search: edits tried per round")] = 8,
    propose: Annotated[int, typer.Option(min=0, help="search: instructions the model writes per round from a few "
                                                     "training pairs (APE; one generation call), tried beside the "
                                                     "edits")] = 0,
    patience: Annotated[int | None, typer.Option(min=0, help="search and mezo: rounds without a better result on "
                                                             "the validation shots before stopping, 0: never "
                                                             "(default: 10)")] = None,
    template: Annotated[str | None, typer.Option(help=TEMPLATE_HELP)] = None,
    verbalizer: Annotated[list[str] | None, typer.Option(help=VERBALIZER_HELP)] = None,
    text_column: Annotated[str, typer.Option(help="the data's text column")] = "text",
    label_column: Annotated[str, typer.Option(help="the data's label column")] = "label",
    limit_eval: Annotated[int | None, typer.Option(help="score on at most N test examples")] = None,
    seed: Annotated[int, typer.Option(help="draws the shots, the projection and the search")] = 42,
    overwrite: Annotated[bool, typer.Option(help="replace an existing run at --output")] = False,
) -> None:
    """Tune a model through queries only: K labelled examples per label, a budget of calls, no gradients. Killed and
    run again with the same command, a search resumes from its last finished generation."""
    from rich.progress import BarColumn, Progress, TextColumn

    from tunelab.blackbox.bbt import BBTSettings
    from tunelab.blackbox.endpoints import InProcess, OpenAICompatible, TunelabServer
    from tunelab.blackbox.mezo import MeZOSettings
    from tunelab.blackbox.prompts import checked_template
    from tunelab.blackbox.run import run_blackbox, staged_output
    from tunelab.blackbox.search import SearchSettings
    from tunelab.cli.options import prompt_settings, quiet_libraries
    from tunelab.config import build_config
    from tunelab.runs import BLACKBOX_METHODS

    if method not in BLACKBOX_METHODS:
        raise TunelabError(f"unknown --method '{method}'; choose {', '.join(BLACKBOX_METHODS)}")
    if api not in APIS:
        raise TunelabError(f"unknown --api '{api}'; choose {', '.join(APIS)}")
    if method == "bbt" and patience is not None:
        raise TunelabError("--patience is for search and mezo: bbt runs --generations and keeps the average of its "
                           "last means")
    config = build_config({"model": model, "task": "classification", "strategy": {"name": "zero-shot"},
                           "data": {"source": data, "text_column": text_column, "label_column": label_column,
                                    "shots": shots, "limit_eval": limit_eval},
                           "training": {"seed": seed}, "prompt": prompt_settings(template, verbalizer),
                           "output": str(output)})
    if config.prompt.template is not None:
        checked_template(config.prompt.template)
    staged_output(config, overwrite)  # an existing --output is refused before the model loads
    key = None
    if api_key_env is not None:
        key = os.environ.get(api_key_env)
        if not key:
            raise TunelabError(f"--api-key-env {api_key_env}: that environment variable is not set")
    quiet_libraries()
    patience = 10 if patience is None else patience
    if method == "bbt":
        settings = BBTSettings(intrinsic_dim, population, generations=generations, seed=seed)
    elif method == "mezo":
        settings = MeZOSettings(tune, virtual_tokens, rank, target_modules, lr, epsilon, eval_every=eval_every,
                                seed=seed, patience=patience)
    else:
        settings = SearchSettings(demonstrations, candidates, patience, seed, propose)
    if endpoint is None:
        from tunelab.api import load_language_model

        asked = InProcess(*load_language_model(model))
    else:
        asked = TunelabServer(endpoint, model, key) if api == "tunelab" else \
            OpenAICompatible(endpoint, model, key, scoring="top" if api == "openai-top" else "echo")
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total} calls"),
                  console=console, transient=True) as bar:
        searching = bar.add_task("searching", total=budget)

        def show(state) -> None:
            """The bar on a terminal; a line a generation in a log (nohup, CI), where a bar draws nothing."""
            accuracy = f"validation accuracy {state.best_validation:.3f}"
            bar.update(searching, completed=asked.usage.calls, description=accuracy)
            if not console.is_terminal:
                console.print(f"generation {state.generation}: {asked.usage.calls}/{budget} calls, {accuracy}",
                              markup=False, highlight=False)

        path, metrics = run_blackbox(config, asked, settings, budget, overwrite, show)
    console.print(result_table(path, metrics, method == "mezo" and tune == "lora"))
    if not metrics["learned"]:
        searched = metrics["curve"][-1]["calls"] if metrics["curve"] else 0  # the evaluation's calls are apart
        longer = "more --generations" if method == "bbt" else "--patience 0 to spend the whole budget"
        console.print(f"[yellow]warning:[/yellow] what was found scores {metrics['test']['accuracy']:.3f} on the test "
                      f"split, no better than the template alone ({metrics['zero_shot']['accuracy']:.3f}), after "
                      f"{searched} of {budget} calls: try {longer}, more --shots, or "
                      f"another --method")


def result_table(path: Path, metrics: dict, lora: bool = False) -> Table:
    table = Table(title=escape(f"{path}: {metrics['shots']} shots per label, {metrics['test_examples']} test "
                               f"examples"), caption=f"{metrics['generations']} generations; calls and tokens in "
                                                     f"resources.json; the search curve in search_curve.png")
    for column in ("prompt", "validation accuracy", "test accuracy"):
        table.add_column(column)
    found = "found prompt (prompt.txt)" if metrics["method"] == "search" else \
        "trained LoRA (adapter/)" if lora else "found soft prompt"
    table.add_row(found, f"{metrics['validation_accuracy']:.3f}", f"{metrics['test']['accuracy']:.3f}")
    table.add_row("the template alone (zero-shot)", f"{metrics['zero_shot']['validation_accuracy']:.3f}",
                  f"{metrics['zero_shot']['accuracy']:.3f}")
    return table
