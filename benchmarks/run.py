"""Run tunelab's benchmarks and print their headline figures; each one also writes benchmarks/results/<name>.json."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import chaos
import compare_grid
import composition
import demo
import distributed
import few_shot
import fuzz
import mezo
import mixed_batches
import onnx_export
import probe_cache
import prompt_templates
import regression
import rlhf_pipeline
import search
import serving
import small_data
import speed
import strategy_accuracy
import strategy_costs
import vs_plain
from rich.console import Console
from rich.table import Table

GIB = 1024**3
MIB = 1024**2


def verdict(passed: bool) -> str:
    return "[green]pass[/green]" if passed else "[red]FAIL[/red]"


def vs_plain_rows(result: dict[str, Any], strategy: str) -> list[tuple[str, str, str]]:
    s = result["summary"]
    return [
        (f"{strategy}: train_s (median)", f"tunelab {s['tunelab_train_s']:.1f} s, plain {s['plain_train_s']:.1f} s",
         ""),
        (f"{strategy}: time ratio tunelab/plain", f"{s['ratio_median']:.3f} (of medians {s['ratio_of_medians']:.3f})",
         verdict(s["pass"])),
        (f"{strategy}: time ratio tunelab/plain with bf16=True", f"{s['ratio_vs_plain_bf16_median']:.3f}", ""),
        (f"{strategy}: test accuracy (median)", f"tunelab {s['tunelab_accuracy']:.4f}, plain "
         f"{s['plain_accuracy']:.4f}, plain bf16 {s['plain_bf16_accuracy']:.4f}", ""),
        (f"{strategy}: peak RSS (wait4, median)",
         f"tunelab {s['tunelab_peak_rss_bytes'] / GIB:.2f} GiB, plain {s['plain_peak_rss_bytes'] / GIB:.2f} GiB", ""),
    ]


def probe_rows(result: dict[str, Any]) -> list[tuple[str, str, str]]:
    s = result["summary"]
    return [
        ("probe: train_s (median)", f"cached {s['cached_train_s']:.1f} s (features "
         f"{s['cached_feature_extraction_s']:.1f} s), uncached {s['uncached_train_s']:.1f} s", ""),
        ("probe: speed-up uncached/cached", f"{s['speedup']:.1f}x", verdict(s["pass"])),
        ("probe: test accuracy", f"cached {s['cached_accuracy']:.4f}, uncached {s['uncached_accuracy']:.4f}", ""),
    ]


def cost_rows(result: dict[str, Any]) -> list[tuple[str, str, str]]:
    s = result["summary"]
    rows = [(f"costs: {name}", f"step {s[name]['step_s']:.3f} s ({s[name]['step_vs_full']:.2f}x full), peak RSS "
             f"{s[name]['peak_rss_vs_full']:.2f}x full, delta {s[name]['delta_bytes'] / MIB:.2f} MiB, trainable "
             f"{s[name]['trainable_share'] * 100:.3g}%", "") for name in strategy_costs.STRATEGIES]
    return [*rows, ("costs: lora step <= 0.7x full, none > full", "", verdict(s["pass"]))]


def onnx_rows(result: dict[str, Any]) -> list[tuple[str, str, str]]:
    s = result["summary"]
    return [("onnx: max |logit difference| to the run", f"{s['onnx_max_logit_difference']:.1e}",
             verdict(result["pass"])),
            ("onnx: ms per example at batch 1", f"onnxruntime {s['onnx_ms_per_example']:.2f}, PyTorch "
             f"{s['pytorch_ms_per_example']:.2f} ({s['onnx_vs_pytorch']:.2f}x)", "")]


def speed_rows(result: dict[str, Any]) -> list[tuple[str, str, str]]:
    padding = result["padding_share"]
    rows = [("speed: padded positions per batch", f"random order {padding['random']:.1%}, length-grouped "
             f"{padding['grouped']:.1%}", "")]
    for name, s in result["summary"].items():
        bf16 = "not timed" if s["bf16_vs_fp32"] is None else f"{s['bf16_vs_fp32']:.2f}x"
        rows.append((f"speed: {name}", f"fp32 step {s['fp32_step_s']:.3f} s, grouped {s['grouped_vs_random']:.2f}x, "
                     f"bf16 {bf16}", ""))
    return rows


def accuracy_rows(result: dict[str, Any]) -> list[tuple[str, str, str]]:
    s = result["summary"]
    rows = [(f"accuracy: {name}", f"{s[name]['accuracy']:.4f} ({s[name]['accuracy_vs_full'] * 100:.1f}% of full), "
             f"train {s[name]['train_s']:.0f} s ({s[name]['train_s_vs_full']:.2f}x full), trainable "
             f"{s[name]['trainable_share'] * 100:.3g}%", "") for name in strategy_accuracy.STRATEGIES]
    rows += [(f"bar: {name}", "", verdict(passed)) for name, passed in result["bars"].items()]
    return [("accuracy: majority class", f"{result['majority_accuracy']:.4f}", ""), *rows]


def few_shot_rows(result: dict[str, Any]) -> list[tuple[str, str, str]]:
    rows = [(f"few-shot: {mode}", f"{s['accuracy']['mean']:.4f} ± {s['accuracy']['std']:.4f} "
             f"({s['accuracy']['min']:.4f}-{s['accuracy']['max']:.4f}), train {s['train_s_per_example']:.3f} s per "
             f"example-epoch, latency {s['latency_ms_per_example']:.1f} ms", "")
            for mode, s in result["summary"].items()]
    return [*rows, *((f"bar: {name}", "", verdict(passed)) for name, passed in result["bars"].items())]


def template_rows(result: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [(f"template: {row['template'][:48]!r} {'/'.join(w[0] for w in row['verbalizer'].values())}",
             ", ".join(f"{split} {row[split]['accuracy']:.4f} (calibrated {row[split]['accuracy_calibrated']:.4f})"
                       for split in result["settings"]["splits"]),
             "chosen" if row["template"] == result["best_on_first_split"] else "") for row in result["candidates"]]


def grid_rows(result: dict[str, Any]) -> list[tuple[str, str, str]]:
    rows = [(f"grid: {row['strategy']} n={row['train_size']}", f"{row['accuracy_mean']:.4f} ± "
             f"{row['accuracy_std'] or 0:.4f} ({row['seeds']} seeds), train {row['train_s_mean']:.0f} s", "")
            for row in result["summary"]]
    claims = [(f"claim n={claim['train_size']}: {claim['statement']}", claim["evidence"], claim["verdict"])
              for claim in result["claims"]]
    return [*rows, *claims]


def rlhf_rows(result: dict[str, Any]) -> list[tuple[str, str, str]]:
    rows = [(f"rlhf: {name}", f"reward {row['reward']:+.3f}, KL {row['kl']:.2f}, SFT perplexity "
             f"{row['reference_perplexity']:.1f}, VADER win vs SFT "
             f"{'-' if row['vader_win_rate'] is None else format(row['vader_win_rate'], '.1%')}", "")
            for name, row in result["report"]["policies"].items()]
    rows.append(("rlhf: pipeline wall time", f"{result['wall_s'] / 60:.1f} min", ""))
    return [*rows, *((f"bar: {name}", "", verdict(passed)) for name, passed in result["bars"].items())]


def regression_rows(result: dict[str, Any]) -> list[tuple[str, str, str]]:
    s = result["summary"]
    rows = [(f"regression: {side} Pearson (median of {len(result['seeds'])} seeds)", f"{s[f'{side}_pearson']:.4f}",
             "") for side in ("full", "lora", "plain")]
    rows.append(("regression: lora - full, full - plain (medians per seed)",
                 f"{s['lora_minus_full']:+.4f}, {s['full_minus_plain']:+.4f}", ""))
    return [*rows, *((f"bar: {name}", "", verdict(passed)) for name, passed in result["bars"].items())]


def small_data_rows(result: dict[str, Any]) -> list[tuple[str, str, str]]:
    rows = [(f"small data: {key} (median of {len(result['seeds'])} seeds)", f"{value:.4f} "
             f"({result['margins_over_majority'][key]:+.4f} over majority)", "")
            for key, value in result["summary"].items()]
    return [*rows, *((f"bar: {name}", "", verdict(passed)) for name, passed in result["bars"].items())]


def composition_rows(results: dict[str, Any]) -> list[tuple[str, str, str]]:
    merged, few = results["merge"], results["few_shot"]
    rows = [(f"merge {method}: share of single-task accuracy kept (median of {len(merged['seeds'])} seeds)",
             f"{figures['mean_kept']:.4f}", "") for method, figures in merged["summary"].items()]
    rows += [(f"few-shot, leave one domain out: {key} (median of {len(few['seeds'])} seeds)", f"{value:.4f}", "")
             for key, value in few["summary"].items() if key.endswith("_mean_accuracy")]
    bars = {**merged["bars"], **few["bars"]}
    return [*rows, *((f"bar: {name}", "", verdict(passed)) for name, passed in bars.items())]


def mixed_rows(result: dict[str, Any]) -> list[tuple[str, str, str]]:
    s = result["summary"]
    return [("mixed batches: max |row - its run| (8 adapters)", f"{s['max_abs_difference']:.1e}", ""),
            ("mixed batches: throughput vs one LoRA run (median)", f"{s['throughput_ratio']:.2f}x", ""),
            ("mixed batches: weights held, 8 adapters vs one run", f"{s['tensor_ratio']:.3f}x", ""),
            ("mixed batches: RSS growth, 8 adapters vs one run (median)", f"{s['memory_ratio']:.2f}x", ""),
            *((f"bar: {name}", "", verdict(passed)) for name, passed in result["bars"].items())]


def serving_rows(result: dict[str, Any]) -> list[tuple[str, str, str]]:
    s = result["summary"]
    sides = [side for side in s if isinstance(s[side], dict) and "throughput_rps" in s[side]]
    return [*((f"serving: {side}", f"{s[side]['throughput_rps']:.0f} req/s, p50 {s[side]['p50_ms']:.0f} ms, p99 "
               f"{s[side]['p99_ms']:.0f} ms, {s[side]['errors']} errors", "") for side in sides),
            ("serving: batched vs naive", f"{s['batched_vs_naive']:.1f}x", ""),
            ("serving: mixed vs one adapter", f"{s['mixed_vs_one_adapter']:.2f}x", ""),
            ("serving: RSS, 8 adapters vs one run", f"{s['rss_eight_vs_one']:.2f}x", ""),
            *((f"bar: {name}", "", verdict(passed)) for name, passed in result["bars"].items())]


def precision_rows(result: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [(f"bf16: {name}", f"{result['summary'][name]['accuracy']:.4f}, {s['median_difference']:+.4f} against "
             f"fp32 on the same seeds ({', '.join(f'{d:+.4f}' for d in s['differences'])})", "")
            for name, s in result["vs_fp32"].items()]


def search_rows(result: dict[str, Any]) -> list[tuple[str, str, str]]:
    trials, minutes = result["trials"], result["trials_wall_s"] / 60
    return [("search: trials (complete, pruned, failed)",
             f"{trials['complete']}, {trials['pruned']}, {trials['fail']} in {minutes:.0f} min", ""),
            *((f"search: {row['name']} ({row['plan']})", f"{row['test_mean']:.3f} ± {row['test_sd']:.3f}, "
               f"{row['trainable-params']:,.0f} trainable", "") for row in result["evaluated"]),
            *((f"bar: {name}", "", verdict(passed)) for name, passed in result["bars"].items())]


def distributed_rows(result: dict[str, Any]) -> list[tuple[str, str, str]]:
    s = result["summary"]
    return [*((f"distributed: {side}", f"accuracy {s[side]['accuracy_mean']:.3f} ± {s[side]['accuracy_sd']:.3f}, "
               f"{s[side]['train_s_per_step_median'] * 1000:.0f} ms a step", "")
              for side in ("one process", "two processes")),
            ("distributed: step time, two processes vs one", f"{s['step_time_ratio_two_vs_one']:.2f}x", ""),
            *((f"bar: {name}", "", verdict(passed)) for name, passed in result["bars"].items())]


def fuzz_rows(result: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [*((f"fuzz: {name}", f"{row['examples']:,} inputs: {row['accepted']:,} taken, {row['refused']:,} refused "
               f"({row['distinct_messages']:,} distinct messages), {row['uncaught']} uncaught, {row['seconds']:.0f} s",
               "") for name, row in result["summary"].items()),
            *((f"bar: {name}", "", verdict(passed)) for name, passed in result["bars"].items())]


def chaos_rows(result: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [*((f"chaos: killed {row['moment']}", f"resumed from step {row['resumed_from_step']}, identical "
               f"metrics {row['identical_metrics']}, seen after the kill: {row['visible_after_kill']}", "")
              for row in result["kills"]),
            *((f"bar: {name}", "", verdict(passed)) for name, passed in result["bars"].items())]


def mezo_rows(result: dict[str, Any]) -> list[tuple[str, str, str]]:
    s, forwards = result["summary"], result["settings"]["forward_passes"]
    return [("mezo: zero-shot template", f"{s['zero_shot_accuracy']:.3f}", ""),
            (f"mezo --tune lora, {forwards} forward passes", f"{s['mezo_accuracy']:.3f}", ""),
            (f"the same LoRA by backprop, {forwards} forward passes", f"{s['backprop_accuracy']:.3f}", "")]


def _work(name: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f"tunelab-bench-{name}-"))


def demo_rows(result: dict[str, Any]) -> list[tuple[str, str, str]]:
    s = result["summary"]
    return [("demo: make demo after the install (median)", f"{s['wall_s']:.0f} s, {s['cells']} cells", ""),
            *((f"bar: {name}", "", verdict(passed)) for name, passed in result["bars"].items())]


DRIVERS = {
    "full": (lambda args: vs_plain_rows(vs_plain.run_benchmark(args.repeats or 3, args.quick, args.keep, "full"),
                                        "full")),
    "lora": (lambda args: vs_plain_rows(vs_plain.run_benchmark(args.repeats or 3, args.quick, args.keep, "lora"),
                                        "lora")),
    "probe": lambda args: probe_rows(probe_cache.run_benchmark(args.repeats or 1, args.quick, args.keep)),
    "costs": lambda args: cost_rows(strategy_costs.run_benchmark(args.repeats or 3, args.quick, args.keep)),
    "accuracy": lambda args: accuracy_rows(strategy_accuracy.run_benchmark(args.repeats or 3, args.quick, args.keep)),
    "accuracy-bf16": lambda args: precision_rows(strategy_accuracy.run_benchmark(args.repeats or 3, args.quick,
                                                                                 args.keep, "bf16")),
    "demo": lambda args: demo_rows(demo.run_benchmark(args.repeats or 1, args.quick, args.keep)),
    "templates": lambda args: template_rows(prompt_templates.run_benchmark(1, args.quick, args.keep)),
    "few-shot": lambda args: few_shot_rows(few_shot.run_benchmark(args.repeats or 5, args.quick, args.keep)),
    "grid": lambda args: grid_rows(compare_grid.run_benchmark(args.repeats or 3, args.quick, args.keep)),
    "rlhf": lambda args: rlhf_rows(rlhf_pipeline.run_benchmark(1, args.quick, args.keep)),
    "regression": lambda args: regression_rows(regression.run_benchmark(args.repeats or 3, args.quick, args.keep)),
    "small-data": lambda args: small_data_rows(small_data.run_benchmark(args.repeats or 3, args.quick, args.keep)),
    "onnx": lambda args: onnx_rows(onnx_export.run_benchmark(args.repeats or 3, args.quick, args.keep)),
    "speed": lambda args: speed_rows(speed.run_benchmark(args.repeats or 3, args.quick, args.keep)),
    "mixed": lambda args: mixed_rows(mixed_batches.run_benchmark(args.repeats or 20, args.quick)),
    "serving": lambda args: serving_rows(serving.run_benchmark(args.repeats or 5, args.quick)),
    "composition": lambda args: composition_rows(composition.run_benchmark(args.repeats or 3, args.quick)),
    "search": lambda args: search_rows(search.run_benchmark(args.quick, _work("search"))),
    "fuzz": lambda args: fuzz_rows(fuzz.run_benchmark(quick=args.quick)),
    "chaos": lambda args: chaos_rows(chaos.run_benchmark(200 if args.quick else 400, 5, 0, args.quick, _work("chaos"))),
    "mezo": lambda args: mezo_rows(mezo.run_benchmark(
        [42, 43, 44][:1 if args.quick else args.repeats or 3], 6 if args.quick else 12, 9 if args.quick else 33,
        64 if args.quick else 150, 3, args.quick, _work("mezo"))),
    "distributed": lambda args: distributed_rows(distributed.run_benchmark(
        list(range(1, (1 if args.quick else args.repeats or 3) + 1)), 200 if args.quick else 2000, args.quick,
        _work("distributed"))),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=None,
                        help="repeats per benchmark (default: 3; probe 1; for accuracy and few-shot (5), the "
                             "number of seeds)")
    parser.add_argument("--only", choices=list(DRIVERS), action="append", help="run these benchmarks only")
    parser.add_argument("--quick", action="store_true", help="tiny smoke test; writes results/<name>.quick.json")
    parser.add_argument("--keep", action="store_true", help="keep the working folders (runs, logs, CSVs)")
    args = parser.parse_args()
    rows: list[tuple[str, str, str]] = []
    for name in args.only or list(DRIVERS):
        rows += DRIVERS[name](args)
    table = Table(title="tunelab benchmarks" + (" (quick smoke test: figures mean nothing)" if args.quick else ""))
    for column in ("measure", "result", "verdict"):
        table.add_column(column)
    for row in rows:
        table.add_row(*row)
    Console().print(table)


if __name__ == "__main__":
    main()
