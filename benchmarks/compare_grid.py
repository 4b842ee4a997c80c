"""The demo's grid over several seeds: `tunelab compare` of every strategy on MiniLM / movie-snippets at 64 and 512
training examples (the demo's budget: each strategy's defaults, batch 16, at least 50 optimizer steps), then the
article's claims as `tunelab report` checks them, with two standard errors over seeds as the noise.

It reports verdicts, not a pass: the issue asks the report to say where the claims hold and where they do not.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from common import TUNELAB, log, machine, main_for, run_timed, working_folder, write_result

NAME = "compare_grid"
SEEDS_FROM = 42


def run_benchmark(repeats: int = 3, quick: bool = False, keep: bool = False, grid: str | None = None) -> dict[str, Any]:
    """`repeats` is the number of seeds; `grid` a folder to create or resume instead of a temporary one."""
    from tunelab.compare.claims import check_claims
    from tunelab.compare.results import load_grid, summarise

    settings = {"train_sizes": "32,64", "limit_eval": 200} if quick else {"train_sizes": "64,512"}
    host = machine()
    with working_folder(NAME, keep) as folder:
        target = Path(grid) if grid else folder / "grid"
        command = [TUNELAB, "compare", "--model", "minilm", "--data", "movie-snippets", "--train-sizes",
                   settings["train_sizes"], "--seeds", str(repeats), "--seed", str(SEEDS_FROM), "--batch-size", "16",
                   "--output", str(target), "--quiet",
                   *(["--limit-eval", str(settings["limit_eval"])] if "limit_eval" in settings else [])]
        timed = run_timed(command, folder / "compare.log")
        results = load_grid(target)
        summary = summarise(results.cells)
    claims = [vars(claim) for claim in check_claims(summary)]
    for claim in claims:
        log(f"{NAME}: n={claim['train_size']} {claim['verdict']}: {claim['statement']} ({claim['evidence']})")
    result = {"benchmark": NAME, "quick": quick, "seeds": list(range(SEEDS_FROM, SEEDS_FROM + repeats)),
              "settings": settings, "machine": host, "failures": results.failures,
              "this_invocation_wall_s": timed.wall_s,  # a resumed grid trains only what is missing
              "claims": claims, "summary": json.loads(summary.to_json(orient="records")),  # NaN -> null
              "cells": json.loads(results.cells.to_json(orient="records"))}
    path = write_result(NAME, result, quick)
    log(f"{NAME}: wrote {path}")
    return result


if __name__ == "__main__":
    main_for(run_benchmark, __doc__, default_repeats=3, quick_help="2 tiny sizes, 200 test examples",
             extra={"--grid": {"default": None, "help": "grid folder to create or resume (default: temporary)"}})
