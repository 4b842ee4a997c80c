"""`make demo` as a user on a fresh machine meets it after the install: wall time, and whether every strategy ran.

The demo runs into a new folder with an empty tunelab cache (`TUNELAB_HOME`), so the first-use costs are in the
figure: building the embedded data's cache and turning SmolLM2's packaged GGUF into fp32 weights. Each repeat starts
from nothing again.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

from common import BENCHMARKS, OFFLINE_ENV, log, machine, main_for, median, read_json, working_folder, write_result

NAME = "demo"
WALL_BAR_S = 300.0  # the main job finishes in the time a person waits for a first result


def run_demo(folder: Path, repeat: int) -> dict[str, Any]:
    """One `make demo` into `folder`, timed; the cells it finished and the ones that failed."""
    grid = folder / f"demo-{repeat}"
    log_path = folder / f"demo-{repeat}.log"
    environment = {**OFFLINE_ENV, "TUNELAB_HOME": str(folder / f"home-{repeat}")}
    with log_path.open("w", encoding="utf-8") as out:
        start = time.perf_counter()
        code = subprocess.run(["make", "-C", str(BENCHMARKS.parent), "demo", f"DEMO={grid}"], stdout=out,
                              stderr=subprocess.STDOUT, env=environment, check=False).returncode
        wall_s = time.perf_counter() - start
    finished = sorted(path.parent.name for path in (grid / "cells").glob("*/metrics.json"))
    failed = read_json(grid / "failures.json") if (grid / "failures.json").exists() else {}
    return {"wall_s": round(wall_s, 1), "exit_code": code, "finished": finished, "failed": failed}


def run_benchmark(repeats: int = 1, quick: bool = False, keep: bool = False) -> dict[str, Any]:
    from tunelab.strategies.catalog import NAMES

    host = machine()
    with working_folder(NAME, keep) as folder:
        rows = []
        for repeat in range(repeats):
            rows.append(run_demo(folder, repeat))
            log(f"{NAME}: repeat {repeat + 1}/{repeats}: {rows[-1]['wall_s']:.0f} s, "
                f"{len(rows[-1]['finished'])} cells, {len(rows[-1]['failed'])} failed")
    strategies = {name.split("-n")[0] for row in rows for name in row["finished"]}
    summary = {"wall_s": median([row["wall_s"] for row in rows]), "cells": len(rows[0]["finished"]),
               "strategies_missing": sorted(set(NAMES) - strategies)}
    bars = {"wall_le_300s": summary["wall_s"] <= WALL_BAR_S,
            "every_strategy_ran": not summary["strategies_missing"],
            "no_failed_cell": all(row["exit_code"] == 0 and not row["failed"] for row in rows)}
    result = {"benchmark": NAME, "quick": quick, "repeats": repeats, "machine": host, "summary": summary,
              "bars": bars, "pass": all(bars.values()), "rows": rows}
    log(f"{NAME}: wrote {write_result(NAME, result, quick)}")
    return result


if __name__ == "__main__":
    main_for(run_benchmark, __doc__.splitlines()[0], 1, "the same as a full run: the demo has no smaller size")
