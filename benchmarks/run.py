"""Run tunelab's benchmarks and print their headline figures; each one also writes benchmarks/results/<name>.json."""

from __future__ import annotations

import argparse
from typing import Any

import full_vs_plain
import probe_cache
from rich.console import Console
from rich.table import Table

GIB = 1024**3


def verdict(passed: bool) -> str:
    return "[green]pass[/green]" if passed else "[red]FAIL[/red]"


def full_rows(result: dict[str, Any]) -> list[tuple[str, str, str]]:
    s = result["summary"]
    return [
        ("full: train_s (median)", f"tunelab {s['tunelab_train_s']:.1f} s, plain {s['plain_train_s']:.1f} s",
         ""),
        ("full: time ratio tunelab/plain", f"{s['ratio_median']:.3f} (of medians {s['ratio_of_medians']:.3f})",
         verdict(s["pass"])),
        ("full: test accuracy (median)", f"tunelab {s['tunelab_accuracy']:.4f}, plain {s['plain_accuracy']:.4f}",
         ""),
        ("full: peak RSS (wait4, median)",
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=None, help="repeats per benchmark (default: full 3, probe 1)")
    parser.add_argument("--only", choices=["full", "probe"], default=None, help="run one benchmark only")
    parser.add_argument("--quick", action="store_true", help="tiny smoke test; writes results/<name>.quick.json")
    parser.add_argument("--keep", action="store_true", help="keep the working folders (runs, logs, CSVs)")
    args = parser.parse_args()
    rows: list[tuple[str, str, str]] = []
    if args.only in (None, "full"):
        rows += full_rows(full_vs_plain.run_benchmark(args.repeats or 3, args.quick, args.keep))
    if args.only in (None, "probe"):
        rows += probe_rows(probe_cache.run_benchmark(args.repeats or 1, args.quick, args.keep))
    table = Table(title="tunelab benchmarks" + (" (quick smoke test: figures mean nothing)" if args.quick else ""))
    for column in ("measure", "result", "verdict"):
        table.add_column(column)
    for row in rows:
        table.add_row(*row)
    Console().print(table)


if __name__ == "__main__":
    main()
