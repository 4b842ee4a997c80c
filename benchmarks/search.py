"""Configuration search on MiniLM, movie-snippets, 1,000 training rows: 40 trials (accuracy and trainable
parameters) on 2 local workers, then the Pareto set and the hand defaults (lora, ia3, adapter, prefix) re-trained on
3 seeds. One `tunelab search` command; the bars: 40 trials within 60 minutes on this machine, and for each hand
default a configuration of the set that dominates it beyond seed noise (or the result says where none does).
Resumable: `--work DIR` keeps the search folder, and the same command finishes it.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

from common import TUNELAB, log, machine, read_json, run_timed, write_result

NAME = "search"


def run_benchmark(quick: bool, work: Path) -> dict[str, Any]:
    trials, rows, seeds = (6, 200, "1") if quick else (40, 1000, "1,2,3")
    folder = work / "search"
    command = [TUNELAB, "search", "--model", "minilm", "--data", "movie-snippets", "--limit-train", str(rows),
               "--trials", str(trials), "--objectives", "accuracy,trainable-params", "--workers", "2",
               "--seeds", seeds, "--output", str(folder), "--quiet"]
    timed = run_timed(command, work / "search.log")
    result = read_json(folder / "search.json")
    trials_minutes = result["trials_wall_s"] / 60
    data: dict[str, Any] = {
        "benchmark": NAME, "quick": quick, "machine": machine(), "command": " ".join(command[1:]),
        "settings": {"model": "minilm", "data": "movie-snippets", "rows": rows, "trials": trials, "workers": 2,
                     "seeds": seeds},
        "wall_s": timed.wall_s, "trials_wall_s": result["trials_wall_s"], "trials": result["trials"],
        "interrupted": result["interrupted"], "sampler": result["sampler"], "pareto": result["pareto"],
        "evaluated": result["evaluated"], "dominates": result["dominates"],
        "bars": {"trials_within_60_min": trials_minutes <= 60,
                 **{f"{default}_dominated": bool(winners) for default, winners in result["dominates"].items()}}}
    log(f"{NAME}: {trials} trials in {trials_minutes:.1f} min, all in {timed.wall_s / 60:.1f} min; "
        f"dominated: {result['dominates']}")
    log(f"{NAME}: wrote {write_result(NAME, data, quick)}")
    return data


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="6 trials on 200 rows, one seed: a check that it runs")
    parser.add_argument("--work", type=Path, default=None, help="where the search folder is kept (resumable)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="tunelab-bench-search-"))
    work.mkdir(parents=True, exist_ok=True)
    run_benchmark(args.quick, work)
