"""The generated parts of the documentation: tables from the strategy catalog and the task names, measured figures
from benchmarks/results/*.json, the CLI reference from the Typer app. The MkDocs hook (hooks.py) fills a page's
`{{ name }}` markers with them at build time; `python docs/render.py --readme README.md` rewrites the README's
blocks between `<!-- generated: name -->` and `<!-- end -->` (`make docs` does both)."""

from __future__ import annotations

import argparse
import io
import json
import re
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tunelab.engines import AVOIDED, ENGINES, TRAPS, pair_table
from tunelab.strategies.catalog import CATALOG, strategies_for
from tunelab.task_catalog import TASK_CATALOG, TASKS

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
BLOCK = re.compile(r"(<!-- generated: (?P<name>[\w-]+) -->\n).*?(<!-- end -->)", re.DOTALL)


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def _results(name: str) -> dict[str, Any]:
    return json.loads((RESULTS / f"{name}.json").read_text(encoding="utf-8"))


def strategy_table() -> str:
    rows = [[f"`{name}`", row.family, row.summary,
             f"{row.learning_rate:g}, {row.epochs:g} epochs" if row.epochs else "nothing trains",
             "yes" if row.mergeable else "no", ", ".join(task for task in TASKS if row.serves(task))]
            for name, row in CATALOG.items()]
    return _table(["strategy", "family", "what it does", "default lr, epochs", "merges", "tasks"], rows)


def task_table() -> str:
    return _table(["task", "what it predicts", "strategies that serve it"],
                  [[f"`{row.name}`", row.summary, ", ".join(f"`{name}`" for name in strategies_for(row.name))]
                   for row in TASK_CATALOG])


def headline_table() -> str:
    """Strategy against strategy on one run of one benchmark each: MiniLM with 2,000 labels (3 seeds), SmolLM2
    with 32 labels per class (5 seeds), and tunelab against a plain transformers + peft script."""
    accuracy = _results("strategy_accuracy")
    rows = [[f"`{name}`", f"{s['accuracy']:.3f}", f"{s['trainable_share']:.3%}", f"{s['train_s_vs_full']:.2f}x"]
            for name, s in accuracy["summary"].items()]
    few_shot = _results("few_shot")
    rows += [[f"`{name}` (SmolLM2, {few_shot['settings']['shots']} per class)",
              f"{s['accuracy']['median']:.3f}", f"{s['trainable_share']:.3%}", "-"]
             for name, s in few_shot["summary"].items() if name in CATALOG]
    table = _table(["strategy", "test accuracy (median of seeds)", "trainable", "train time vs full"], rows)
    plain = [_results(name)["summary"] for name in ("full_vs_plain", "lora_vs_plain")]
    return (f"MiniLM on movie-snippets, {accuracy['settings']['limit_train']:,} training labels, "
            f"{len(accuracy['seeds'])} seeds:\n\n{table}\n\nAgainst a plain transformers + peft script on the same "
            f"model, data and batch (fp32, as the Hugging Face docs write it): train time ratio "
            f"{plain[0]['ratio_median']:.2f} (full) and {plain[1]['ratio_median']:.2f} (LoRA), at test accuracy "
            f"{plain[0]['tunelab_accuracy']:.3f} against {plain[0]['plain_accuracy']:.3f} (full) and "
            f"{plain[1]['tunelab_accuracy']:.3f} against {plain[1]['plain_accuracy']:.3f} (LoRA); against the same "
            f"script with `bf16=True`: {plain[0]['ratio_vs_plain_bf16_median']:.2f} and "
            f"{plain[1]['ratio_vs_plain_bf16_median']:.2f}.")


def speed_table() -> str:
    """Padding and step time per strategy from the speed benchmark: grouped against random order, bf16 against
    fp32, each measured in the same repeat."""
    speed = _results("speed")
    padding = speed["padding_share"]
    rows = [[f"`{name}`", f"{s['fp32_step_s']:.3f} s", f"{s['grouped_vs_random']:.2f}x",
             "not timed" if s["bf16_vs_fp32"] is None else f"{s['bf16_vs_fp32']:.2f}x"]
            for name, s in speed["summary"].items()]
    native = "has" if speed["cpu_has_native_bf16"] else "has no"
    return (f"MiniLM, movie-snippets, batches of {speed['batch_size']}, median of {speed['repeats']} repeats on a "
            f"{speed['machine']['nproc']}-core CPU that {native} native bf16. Padded positions per batch: "
            f"{padding['random']:.0%} in random order, {padding['grouped']:.0%} length-grouped.\n\n"
            + _table(["strategy", "fp32 step (random order)", "length-grouped", "bf16 autocast"], rows))


def precision_table() -> str:
    """bf16 autocast against fp32 per strategy: test accuracy on the same seeds (the accuracy benchmark run in each
    precision) and the step time (the speed benchmark)."""
    bf16 = _results("strategy_accuracy_bf16")
    steps = _results("speed")["summary"]
    rows = [[f"`{name}`", f"{s['fp32_accuracy']:.3f}", f"{bf16['summary'][name]['accuracy']:.3f}",
             f"{s['median_difference']:+.3f}", " ".join(f"{d:+.3f}" for d in s["differences"]),
             "not timed" if steps[name]["bf16_vs_fp32"] is None else f"{steps[name]['bf16_vs_fp32']:.2f}x"]
            for name, s in bf16["vs_fp32"].items()]
    return (f"MiniLM, movie-snippets, {bf16['settings']['limit_train']:,} training labels, seeds "
            f"{', '.join(map(str, bf16['seeds']))}, random batch order; accuracy medians over the seeds, the "
            f"difference per seed:\n\n"
            + _table(["strategy", "fp32 accuracy", "bf16 accuracy", "bf16 - fp32 (median)", "per seed",
                      "bf16 step time vs fp32"], rows))


def demo_line() -> str:
    demo = _results("demo")
    s = demo["summary"]
    return (f"`make demo` after the install, from an empty cache: {s['wall_s']:.0f} s on a "
            f"{demo['machine']['nproc']}-core CPU, {s['cells']} runs, "
            f"{'every strategy' if not s['strategies_missing'] else 'missing ' + ', '.join(s['strategies_missing'])}"
            f", {'no' if demo['bars']['no_failed_cell'] else 'some'} failed runs.")


SHORT_DOMAINS = {"movie-snippets": "movies", "tweets": "tweets", "amazon-snippets": "amazon", "nyt-snippets": "nyt"}


def merge_table() -> str:
    """What each merge method kept of every task's single-task accuracy (medians over the seeds)."""
    merged = _results("composition")
    domains = merged["settings"]["domains"]
    rows = [[f"`{method}`", f"{s['mean_kept']:.1%}", *(f"{s[d]['kept']:.1%} ({s[d]['merged']:.3f})" for d in domains)]
            for method, s in merged["summary"].items()]
    first = merged["summary"][next(iter(merged["summary"]))]
    rows.append(["single-task", "100%", *(f"({first[d]['single_task']:.3f})" for d in domains)])
    rows.append(["base+head", "", *(f"({first[d]['base_and_head']:.3f})" for d in domains)])
    return (f"MiniLM, one LoRA run per domain ({merged['settings']['limit_train']:,} training examples at most, "
            f"defaults), the four merged into one delta with each method's defaults, every task on its whole test "
            f"split; medians over seeds {', '.join(map(str, merged['seeds']))}. Share of the single-task accuracy "
            f"kept, and the accuracy in brackets:\n\n"
            + _table(["method", "mean kept", *(SHORT_DOMAINS[d] for d in domains)], rows))


def few_shot_composition_table() -> str:
    """Leave one domain out: the composition against its baselines on each held-out domain (medians over the seeds
    each side was measured on)."""
    few = _results("composition_few_shot")
    s, domains, shots = few["summary"], few["settings"]["domains"], few["settings"]["shots_per_label"]
    sides = {"composed": "`compose hub` over the other three domains' LoRA runs",
             "best_single_source": "the best of those runs alone (chosen on the test split)",
             "single_source_chosen_on_shots": "the one of those runs that scores best on the shots",
             f"lora_{shots}_shots": "LoRA trained on the shots",
             "fusion": "`fusion` over the other three domains' adapter runs",
             "base_and_head": "the base model, head fitted on the shots"}
    rows = [[label, ", ".join(map(str, few["seeds_per_side"][side])), f"{s[f'{side}_mean_accuracy']:.3f}",
             *(f"{s[f'{d}_{side}']:.3f}" for d in domains)]
            for side, label in sides.items() if f"{side}_mean_accuracy" in s]
    return (f"MiniLM, {shots} labelled examples per label of the held-out domain (and as many for validation), "
            f"sources trained on the other three domains; test accuracy, medians over the seeds (the mean over the "
            f"four held-out domains per seed, then its median):\n\n"
            + _table(["model", "seeds", "mean", *(SHORT_DOMAINS[d] for d in domains)], rows))


def mixed_batches_line() -> str:
    mixed = _results("mixed_batches")["summary"]
    return (f"Eight adapters (four LoRA, two (IA)^3, two bottleneck) on MiniLM: every row of a mixed batch within "
            f"{mixed['max_abs_difference']:.0e} of its own run's logits; a mixed batch of 64 rows at "
            f"{mixed['throughput_ratio']:.2f}x the throughput of the same batch through one LoRA run alone; the "
            f"eight hold {mixed['mixed_tensor_bytes'] / 1e6:.1f} MB of weights against "
            f"{mixed['single_tensor_bytes'] / 1e6:.1f} MB for one run ({mixed['tensor_ratio']:.2f}x); loading them "
            f"and answering added {mixed['mixed_loaded_rss_bytes'] / 1e6:.0f} MB to a fresh process's resident "
            f"memory, one LoRA run {mixed['single_loaded_rss_bytes'] / 1e6:.0f} MB (medians of "
            f"{mixed['memory_repeats']} processes each; the growth also counts libraries imported on first use).")


def serving_table() -> str:
    result = _results("serving")
    served, settings = result["summary"], result["settings"]
    sides = {"mixed": "tunelab, 8 adapters mixed (fp32)", "one adapter": "tunelab, one adapter of the 8 (fp32)",
             "one-run server": "tunelab, a server of that run alone (fp32)",
             "mixed, default precision": "tunelab, 8 adapters mixed (default precision)",
             "one adapter, default precision": "tunelab, one adapter of the 8 (default precision)",
             "naive": "naive: a pipeline per request (fp32)",
             "no model": "no model: the HTTP stack's ceiling"}
    rows = [[label, f"{served[side]['throughput_rps']:.0f}", f"{served[side]['p50_ms']:.0f}",
             f"{served[side]['p99_ms']:.0f}", f"{served[side]['errors']} of {served[side]['requests']}"]
            for side, label in sides.items()]
    rss = served["rss_bytes"]
    return (f"{settings['clients']} concurrent clients on loopback, each sending {settings['requests_per_client']} "
            f"requests of one text one after another, MiniLM, medians of {settings['repeats']} rounds on "
            f"{result['machine']['nproc']} CPU cores:\n\n"
            + _table(["server", "requests/s", "p50 ms", "p99 ms", "errors"], rows)
            + f"\n\nMicro-batched throughput {served['batched_vs_naive']:.1f}x the naive server's at the same "
            f"precision (fp32), {served['batched_vs_naive_default_precision']:.1f}x at tunelab's default (`auto`: bf16 "
            f"autocast on this CPU); mixing eight adapters {served['mixed_vs_one_adapter']:.2f}x one adapter's "
            f"({served['mixed_vs_one_adapter_default_precision']:.2f}x at the default precision). Batches held "
            f"{served['mean_batch_rows']['bundle']:.1f} rows on average (fp32 server). The same FastAPI answering "
            f"without a model reaches {served['no model']['throughput_rps']:.0f} requests/s with this load generator "
            f"on the same cores: on a small CPU each request's HTTP work (client and server) is a large share of its "
            f"cost, and batching saves less per row than on a GPU. Resident memory "
            f"after the load: eight "
            f"adapters {rss['bundle'] / 1e6:.0f} MB, one run {rss['single'] / 1e6:.0f} MB "
            f"({served['rss_eight_vs_one']:.2f}x).")


def search_table() -> str:
    """The measured search: its cost, the re-evaluated Pareto set beside the hand defaults, and the verdicts."""
    from tunelab.search.page import search_rows, verdict

    result = _results("search")
    settings, trials = result["settings"], result["trials"]
    rows = [[f"`{cell}`" if index == 0 else cell for index, cell in enumerate(row[:8])] for row in search_rows(result)]
    words = result["command"].split()  # as a user would type it: their own --output, no --quiet
    words[words.index("--output") + 1] = "runs/search"
    command = " ".join(word for word in words if word != "--quiet")
    verdicts = "; ".join(f"`{default}` {verdict(winners)}" for default, winners in result["dominates"].items())
    return (f"Measured on this project's {result['machine']['nproc']}-core CPU: `tunelab {command}` ran "
            f"{settings['trials']} trials ({trials['complete']} to the full {settings['rows']} rows, "
            f"{trials['pruned']} stopped at the low rung, {trials['fail']} failed) in "
            f"{result['trials_wall_s'] / 60:.0f} minutes, and the whole command, the re-evaluation included, in "
            f"{result['wall_s'] / 60:.0f} minutes. Test accuracy over seeds {settings['seeds']}:\n\n"
            + _table(["configuration", "searched plan", "test (mean ± sd)", "seeds", "trainable", "share", "delta",
                      "latency"], rows)
            + f"\n\nAgainst the hand defaults: {verdicts}.")


def distributed_line() -> str:
    """Two processes against one, as measured, under DDP and (where measured) ZeRO-3."""
    result = _results("distributed")
    settings, summary = result["settings"], result["summary"]
    one = summary["one process"]

    def against_one(side: str, how: str) -> str:
        two = summary[side]
        return (f"{how} {two['accuracy_mean']:.3f} ± {two['accuracy_sd']:.3f} (a difference of "
                f"{two['accuracy_difference']:+.3f} against a noise margin of {two['noise']:.3f}; a training step "
                f"{two['train_s_per_step_median'] * 1000:.0f} ms, {two['step_time_ratio_vs_one']:.2f}x)")

    sides = [against_one("two processes", "two processes of one thread each (DDP)")]
    if "two processes, ZeRO-3" in summary:
        sides.append(against_one("two processes, ZeRO-3", "under ZeRO-3"))
    return (f"Measured on this project's {result['machine']['nproc']}-core CPU (MiniLM, movie-snippets, "
            f"{settings['rows']:,} training rows, `{settings['strategy']}`, global batch {settings['global_batch']}, "
            f"seeds {', '.join(map(str, settings['seeds']))}, medians for time): one process of two threads "
            f"{one['accuracy_mean']:.3f} ± {one['accuracy_sd']:.3f} test accuracy, a training step "
            f"{one['train_s_per_step_median'] * 1000:.0f} ms; " + "; ".join(sides) + ".")


def engine_table() -> str:
    """The engines of `--distributed`, from `tunelab.engines`."""
    def where(engine: Any) -> str:
        needs = [f"GPUs ({engine.needs_accelerator})" if engine.needs_accelerator else "CPUs (gloo) and GPUs",
                 f"`pip install 'tunelab[{engine.package}]'`" if engine.package else ""]
        return "; ".join(need for need in needs if need)

    return _table(["engine", "what it does", "shards", "runs on", "shipped config"],
                  [[f"`{name}`", engine.summary, ", ".join(engine.shards) or "nothing", where(engine),
                    f"`tunelab/engines/{engine.config}`" if engine.config else "-"]
                   for name, engine in ENGINES.items()])


def engine_pair_table() -> str:
    """Every catalogue strategy under every engine: allowed, or refused before launch (the trap's number)."""
    numbers = {id(trap): number for number, trap in enumerate(TRAPS, 1)}
    plain, checkpointing = pair_table(), pair_table(checkpointing=True)

    def cell(strategy: str, engine: str) -> str:
        trap = plain[strategy][engine] or checkpointing[strategy][engine]
        if trap is None:
            return "yes"
        return f"not with gradient checkpointing ({numbers[id(trap)]})" if trap.with_checkpointing else \
            f"refused ({numbers[id(trap)]})"

    table = _table(["strategy", *(f"`{engine}`" for engine in ENGINES)],
                   [[f"`{strategy}`", *(cell(strategy, engine) for engine in ENGINES)] for strategy in CATALOG])
    traps = "\n".join(f"{number}. {trap.reason}; instead: {trap.instead}." for number, trap in enumerate(TRAPS, 1))
    avoided = "\n".join(f"- {trap}: {answer}." for trap, answer in AVOIDED)
    return f"{table}\n\n{traps}\n\nKept out of reach by design:\n\n{avoided}"


def engine_advice() -> str:
    """What `tunelab recommend` says of full fine-tuning of a 7B model on eight 80 GB GPUs, computed."""
    from tunelab.compare.advisor import Situation, recommend

    situation = Situation(samples=50_000, model_parameters=7e9, causal=True, gpu=True, memory_gb=80, gpus=8)
    full = next(row for row in recommend(situation) if row.strategy == "full")
    note = full.trade_off[full.trade_off.index("needs ~"):]
    return (f"```bash\ntunelab recommend --samples 50000 --model-size 7B --causal --gpu --memory 80GB --gpus 8\n"
            f"# full: {note}\n# run: {full.command}\n```")


def foreign_server_line() -> str:
    """The prompt search through llama-cpp-python's server, as measured."""
    result = _results("foreign_server")
    settings, summary = result["settings"], result["summary"]
    runs = "; ".join(f"seed {row['seed']}: {row['zero_shot_accuracy']:.3f} -> {row['test_accuracy']:.3f} in "
                     f"{row['calls']} calls" for row in result["rows"])
    return (f"Measured through {settings['server']}'s server on the packaged SmolLM2 file ({settings['model']}), "
            f"`--api openai-top`, {settings['shots']} shots per label, a budget of {settings['budget']} calls, from "
            f"\"{settings['template']}\", test accuracy on the whole test split: {runs}; a mean gain of "
            f"{summary['mean_gain'] * 100:+.1f} points, {summary['median_s_per_call']:.1f} s a call (median).")


def chaos_line() -> str:
    """`tunelab train` killed at ten moments and run again, as measured."""
    result = _results("chaos")
    settings, summary = result["settings"], result["summary"]
    moments = "; ".join(dict.fromkeys(row["moment"] for row in result["kills"]))
    return (f"Measured (MiniLM, movie-snippets, `{settings['strategy']}`, {settings['rows']} training rows, "
            f"`--checkpoint-every {settings['checkpoint_every']}`, {result['reference']['optimizer_steps']} steps): "
            f"{summary['kills']} runs, each to be killed with SIGKILL at a moment of its own ({moments}), "
            f"{sum(row['killed_at_s'] is not None for row in result['kills'])} killed (the others ended before "
            f"their moment came), then run again; "
            f"{summary['resumed_to_identical_metrics']} of {summary['kills']} ended with metrics identical to an "
            f"uninterrupted run's ({summary['resumed_from_a_checkpoint']} of them resumed from a checkpoint; the "
            f"others found none, killed before the first one or after the commit had dropped them, and trained "
            f"again), {summary['half_written_seen']} half-written runs were ever "
            f"visible, and {summary['staging_left']} staging folders were left behind.")


def fuzz_table() -> str:
    """Each reader of user input on generated inputs, as measured."""
    result = _results("fuzz")
    rows = [[f"`{name}`", f"{row['examples']:,}", f"{row['accepted']:,}",
             f"{row['refused']:,} ({row['distinct_messages']:,})", str(row["uncaught"])]
            for name, row in result["summary"].items()]
    minutes = sum(row["seconds"] for row in result["summary"].values()) / 60
    return (_table(["reader", "inputs", "taken", "refused in one line (distinct messages)", "any other exception"],
                    rows)
            + f"\n\n{result['settings']['examples_per_target']:,} generated inputs per reader (Hypothesis, seed "
              f"{result['settings']['seed']}, `benchmarks/fuzz.py`); the readers' times add up to {minutes:.0f} "
              f"minutes on this project's shared {result['machine']['nproc']}-core CPU.")


def mezo_table() -> str:
    """MeZO on a LoRA against the same LoRA trained by backpropagation, at the same forward passes, as measured."""
    result = _results("mezo")
    settings, rows = result["settings"], result["rows"]

    def cells(side: str, label: str) -> list[str]:
        measured = [row[side] for row in rows if side in row]
        accuracies = ", ".join(f"{run['test_accuracy']:.3f}" for run in measured)
        first = measured[0]
        return [f"{label} ({first['steps']} steps)", str(first["forward_passes"]), str(first["backward_passes"]),
                f"{statistics.fmean(run['test_accuracy'] for run in measured):.3f} ({accuracies})",
                f"{statistics.median(run['peak_rss_bytes'] for run in measured) / 2**30:.2f} GiB",
                f"{statistics.median(run['wall_s'] for run in measured) / 60:.1f} min"]

    zero_shot = [row["mezo"]["zero_shot_accuracy"] for row in rows]
    table = _table(["", "forward passes", "backward passes", "test accuracy: mean (per seed)", "peak RSS",
                    "wall time (median)"],
                   [["the template alone (zero-shot)", "0", "0", f"{statistics.fmean(zero_shot):.3f} ("
                     f"{', '.join(f'{value:.3f}' for value in zero_shot)})", "-", "-"],
                    cells("mezo", "mezo --tune lora"), cells("backprop", "the same LoRA by backpropagation (pet)"),
                    *([cells("mezo_long", "mezo --tune lora, a larger budget")] if "mezo_long" in rows[0] else [])])
    gain = lambda side: statistics.fmean(row[side]["test_accuracy"] - row["mezo"]["zero_shot_accuracy"]  # noqa: E731
                                         for row in rows if side in row) * 100
    gains = "; ".join(f"{label} {gain(side):+.1f}" for side, label in (
        ("mezo", "mezo"), ("backprop", "backprop"), ("mezo_long", "mezo at the larger budget")) if side in rows[0])
    return (f"{table}\n\nMean change from zero-shot, in points: {gains}. "
            f"SmolLM2, {settings['data']}, {settings['shots']} shots per label, seeds "
            f"{', '.join(str(row['seed']) for row in rows)}, test accuracy on the first {settings['limit_eval']} test "
            f"examples; a forward pass reads every training (or validation) shot once. Peak RSS is the process's "
            f"(wait4), wall time the whole command's (the model's load and the test scoring included), on "
            f"{result['machine']['nproc']} CPU cores shared with other work ({result['machine']['torch_threads']} "
            f"thread a run, a seed's runs side by side).")


def bbt_table() -> str:
    """bbt against the template's zero-shot accuracy and the gradient-trained prompt strategies on the same shots,
    per seed, with the two bars, as measured (seeds still running are not in it)."""
    result = _results("blackbox")
    settings, bbt = result["settings"], result["bbt"]
    rows, mean = bbt["rows"], bbt["mean"]
    sides = [("zero_shot_accuracy", "the template alone (zero-shot)"), ("test_accuracy", "bbt (CMA-ES, calls only)"),
             ("soft_template_accuracy", "soft-template (gradients)"), ("pet_accuracy", "pet (gradients)")]
    def measured(values: dict[str, Any], key: str) -> str:
        return f"{values[key]:.3f}" if key in values else "-"  # pet runs after every seed's bbt

    def mean_of(key: str) -> str:
        seeds = sum(key in row for row in rows)
        return measured(mean, key) + (f" ({seeds} seed{'s' * (seeds > 1)})" if 0 < seeds < len(rows) else "")

    table = _table(["", *(f"seed {row['seed']}" for row in rows), "mean"],
                   [[label, *(measured(row, key) for row in rows), mean_of(key)] for key, label in sides] +
                   [["bbt: validation accuracy (the shots that checked it)",
                     *(f"{row['validation_accuracy']:.3f}" for row in rows),
                     f"{mean['validation_accuracy']:.3f}"],
                    ["bbt: calls made", *(f"{row['calls']:,}" for row in rows), f"{mean['calls']:,.0f}"],
                    ["bbt: search time", *(f"{row['search_wall_s'] / 60:.0f} min" for row in rows),
                     f"{mean['search_wall_s'] / 60:.0f} min"]])
    bars = result["bars"]
    over = lambda key: (mean["test_accuracy"] - mean[key]) * 100  # noqa: E731
    verdict = lambda bar: "met" if bars[bar] else "not met"  # noqa: E731
    tested = f"the first {settings['limit_eval']} test examples" if settings["limit_eval"] else "the whole test split"
    concurrent = settings.get("concurrent_bbt_searches", 1)
    together = f", {concurrent} searches at once, one thread each" if concurrent > 1 else ""
    per_seed = f", the {concurrent} seeds together" if concurrent > 1 else " a seed"
    lengths = sorted({row["curve"][-1]["generation"] for row in rows})
    generations = f"{lengths[0]}" if len(lengths) == 1 else f"{lengths[0]}-{lengths[-1]}"
    return (f"{table}\n\nSmolLM2, {settings['data']}, {settings['shots']} shots per label, at most "
            f"{settings['bbt_budget']:,} calls, test accuracy on {tested}; {bbt['seeds_done']} seeds measured. "
            f"bbt at least 2 points over zero-shot: {verdict('bbt_at_least_zero_shot_plus_2')} (bbt minus "
            f"zero-shot: {over('zero_shot_accuracy'):+.1f} points); within 3 points of soft-template: "
            f"{verdict('bbt_within_3_of_soft_template')} (bbt minus soft-template: "
            f"{over('soft_template_accuracy'):+.1f}). A search ran {generations} generations (`--generations`); "
            f"a call took "
            f"{mean['search_wall_s'] / mean['calls']:.1f} s on this machine's {result['machine']['nproc']} CPU cores"
            f"{together} (all {settings['bbt_budget']:,} at that pace: "
            f"{settings['bbt_budget'] * mean['search_wall_s'] / mean['calls'] / 3600:.1f} hours{per_seed}).")


def bbt_plot() -> str:
    """The bbt searches' validation accuracy (what each held) against the calls made, each seed's test accuracy where
    its search ended, and the test accuracy of the template alone, soft-template and pet on the same shots (means
    over the seeds): an inline SVG drawn from the JSON at build time, so the picture is the measurement's."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bbt = _results("blackbox")["bbt"]
    figure, axis = plt.subplots(figsize=(9, 4))
    for index, row in enumerate(bbt["rows"]):
        calls, color = [point["calls"] for point in row["curve"]], f"C{index}"
        axis.step(calls, [point["validation_accuracy"] for point in row["curve"]], where="post", color=color,
                  alpha=0.6, label=f"seed {row['seed']}: validation (K shots)")
        axis.plot(calls[-1], row["test_accuracy"], marker="*", markersize=12, color=color, linestyle="none",
                  label=f"seed {row['seed']}: test, what was found")
    for key, label, style in (("zero_shot_accuracy", "the template alone", "--"),
                              ("soft_template_accuracy", "soft-template (gradients)", ":"),
                              ("pet_accuracy", "pet (gradients)", "-.")):
        if key in bbt["mean"]:
            axis.axhline(bbt["mean"][key], color="grey", linestyle=style, label=f"test, {label}, mean")
    axis.set_xlabel("calls made")
    axis.set_ylabel("accuracy")
    axis.set_title("bbt: accuracy against calls, beside gradient training on the same shots")
    axis.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    figure.tight_layout()
    drawn = io.StringIO()
    with plt.rc_context({"svg.hashsalt": "tunelab"}):  # the same JSON draws the same SVG
        figure.savefig(drawn, format="svg", metadata={"Date": None})
    plt.close(figure)
    svg = drawn.getvalue()
    return "<div>\n" + "\n".join(line for line in svg[svg.index("<svg"):].splitlines() if line.strip()) + "\n</div>"


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return ", ".join(f"{key} {_cell(inner)}" for key, inner in value.items() if not isinstance(inner, (dict, list)))
    return str(value)


def results_page() -> str:
    """Every results file: its settings, its summary and its bars, as the JSON holds them."""
    sections = []
    for path in sorted(set(RESULTS.glob("*.json")) - set(RESULTS.glob("*.quick.json"))):
        result = json.loads(path.read_text(encoding="utf-8"))
        parts = [f"## {path.stem}", f"`benchmarks/results/{path.name}`"]
        if result.get("note"):
            parts.append(f"*{result['note']}*")
        if isinstance(result.get("settings"), dict):
            parts.append("Settings: " + _cell(result["settings"]) + ".")
        summary = result.get("summary")
        if isinstance(summary, dict):
            parts.append(_table(["figure", "value"], [[key, _cell(value)] for key, value in summary.items()]))
        elif isinstance(summary, list):
            parts.append(_table(["row"], [[_cell(row)] for row in summary]))
        if result.get("bars"):
            parts.append(_table(["bar", "met"], [[bar, "yes" if met else "**no**"]
                                                 for bar, met in result["bars"].items()]))
        sections.append("\n\n".join(parts))
    return "\n\n".join(sections)


def cli_reference() -> str:
    """Every command of the Typer app with its options, as `--help` shows them."""
    import typer

    from tunelab.cli import app

    def describe(command: Any, path: str) -> list[str]:
        out = [f"## `{path}`", (command.help or "").strip()]
        rows = [[", ".join(f"`{opt}`" for opt in param.opts), (getattr(param, "help", None) or "").replace("|", "/"),
                 "required" if param.required else f"`{param.default}`" if param.default not in (None, False) else ""]
                for param in command.params if param.name != "help"]
        if rows:
            out.append(_table(["option", "what", "default"], rows))
        for name, sub in getattr(command, "commands", {}).items():
            out += describe(sub, f"{path} {name}")
        return out

    root = typer.main.get_command(app)
    return "\n\n".join(part for name, command in root.commands.items() for part in describe(command, f"tunelab {name}"))


GENERATED: dict[str, Callable[[], str]] = {
    "strategy_table": strategy_table, "task_table": task_table, "headline_table": headline_table,
    "results_page": results_page, "cli_reference": cli_reference, "speed_table": speed_table,
    "precision_table": precision_table, "demo_line": demo_line, "merge_table": merge_table,
    "few_shot_composition_table": few_shot_composition_table, "mixed_batches_line": mixed_batches_line,
    "serving_table": serving_table, "search_table": search_table,
    "distributed_line": distributed_line, "foreign_server_line": foreign_server_line, "chaos_line": chaos_line,
    "engine_table": engine_table, "engine_pair_table": engine_pair_table, "engine_advice": engine_advice,
    "fuzz_table": fuzz_table,
    "mezo_table": mezo_table, "bbt_table": bbt_table, "bbt_plot": bbt_plot,
}


def fill(markdown: str) -> str:
    """A page with its `{{ name }}` markers replaced."""
    return re.sub(r"\{\{ (\w+) \}\}", lambda match: GENERATED[match.group(1)](), markdown)


def rewrite_blocks(text: str) -> str:
    return BLOCK.sub(lambda match: f"{match.group(1)}{GENERATED[match.group('name')]()}\n{match.group(3)}", text)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--readme", type=Path, required=True, help="the README whose generated blocks to rewrite")
    readme = parser.parse_args().readme
    readme.write_text(rewrite_blocks(readme.read_text(encoding="utf-8")), encoding="utf-8")
