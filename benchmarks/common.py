"""What the benchmark drivers share: timed subprocesses, run-directory readers, medians, JSON results.

Every measured run is a fresh subprocess so that no run inherits another's warm caches, threads or memory.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

BENCHMARKS = Path(__file__).resolve().parent
RESULTS = BENCHMARKS / "results"
# The console script next to this interpreter, so the benchmark measures the tunelab of this venv.
TUNELAB = str(Path(sys.executable).with_name("tunelab"))
# No run may reach for the network: the embedded model and data are local, and a hub lookup would add noise.
OFFLINE_ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
               "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}


@dataclass
class Timed:
    """One finished subprocess: its wall time, its own peak RSS (from wait4) and the load around it."""

    command: list[str]
    wall_s: float
    peak_rss_bytes: int
    load_before: float
    load_after: float

    def summary(self) -> dict[str, Any]:
        return {key: value for key, value in asdict(self).items() if key != "command"}


def run_timed(command: list[str], log: Path) -> Timed:
    """Run `command` with output to `log`; raise with the log's tail if it fails.

    `os.wait4` gives the child's own max RSS, measured the same way for every tool, whatever it reports itself.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()[0]
    with log.open("w", encoding="utf-8") as out:
        start = time.perf_counter()
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=OFFLINE_ENV)
        _, status, usage = os.wait4(process.pid, 0)
        wall_s = time.perf_counter() - start
        process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(failure(command, process.returncode, log))
    return Timed(command, round(wall_s, 3), usage.ru_maxrss * 1024, load_before, os.getloadavg()[0])


def failure(command: list[str], code: int, log: Path) -> str:
    """What a failed command says: itself, its exit code and its log's last lines."""
    tail = "\n".join(log.read_text(encoding="utf-8", errors="replace").splitlines()[-25:])
    return f"{' '.join(command)} exited {code}; log {log}:\n{tail}"


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def read_run(run_dir: Path) -> dict[str, Any]:
    """The figures a benchmark needs from a tunelab run directory."""
    resources, metrics = read_json(run_dir / "resources.json"), read_json(run_dir / "metrics.json")
    return {"train_s": resources["train_s"], "feature_extraction_s": resources.get("feature_extraction_s", 0.0),
            "peak_memory_bytes": resources["peak_memory_bytes"], "test_accuracy": metrics["test"]["accuracy"]}


def tunelab_train(run_dir: Path, options: list[str], log: Path) -> tuple[Timed, dict[str, Any]]:
    """`tunelab train ... --output run_dir --quiet` as a timed subprocess, and what it wrote."""
    timed = run_timed([TUNELAB, "train", *options, "--output", str(run_dir), "--quiet"], log)
    return timed, read_run(run_dir)


def write_splits(folder: Path, config: dict[str, Any]) -> dict[str, Any]:
    """tunelab's own split of a dataset (as `config` loads it) as CSVs of text and label, so that a plain script
    trains and tests on the very rows tunelab does; also the size of each split."""
    from tunelab.config import build_config
    from tunelab.recipes.classification import RECIPE

    splits = RECIPE.prepare(build_config(config)).splits
    paths: dict[str, Any] = {}
    for name in ("train", "validation", "test"):
        paths[name] = folder / f"{name}.csv"
        getattr(splits, name)[["text", "label"]].to_csv(paths[name], index=False)
    paths["sizes"] = {name: len(getattr(splits, name)) for name in ("train", "validation", "test")}
    return paths


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def machine() -> dict[str, Any]:
    """Where the figures came from: they mean little without the core count and library versions."""
    import torch
    import transformers

    return {"nproc": len(os.sched_getaffinity(0)), "cpu_count": os.cpu_count(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "transformers": transformers.__version__,
            "python": platform.python_version(), "platform": platform.platform(),
            "cuda": torch.cuda.is_available(), "load_avg_1m_at_start": os.getloadavg()[0]}


def write_result(name: str, data: dict[str, Any], quick: bool) -> Path:
    """Write results/<name>.json atomically; quick smoke runs go to <name>.quick.json and never clobber real ones."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}{'.quick' if quick else ''}.json"
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(partial, path)
    return path


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def alternating(repeats: int, sides: tuple[str, ...], run_side: Callable[[str, int], Any]) -> Iterator[dict]:
    """Each repeat runs every side, in an order rotated by one each repeat (two sides: first side first on even
    repeats, second on odd ones), so that no side always meets a machine warmed or loaded by another. Yields
    {repeat, order, side: result, ...}."""
    for repeat in range(repeats):
        shift = repeat % len(sides)
        order = list(sides[shift:] + sides[:shift])
        yield {"repeat": repeat, "order": order, **{side: run_side(side, repeat) for side in order}}


@contextmanager
def working_folder(name: str, keep: bool) -> Iterator[Path]:
    """A fresh temporary folder for a driver's runs and logs, removed afterwards unless `keep`."""
    folder = Path(tempfile.mkdtemp(prefix=f"tunelab-bench-{name}-"))
    log(f"{name}: working in {folder}")
    try:
        yield folder
    finally:
        if keep:
            log(f"{name}: kept {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)


def main_for(run_benchmark: Callable[..., Any], description: str, default_repeats: int, quick_help: str,
             extra: dict[str, dict[str, Any]] | None = None) -> None:
    """The command line every driver shares: --repeats, --quick, --keep, and a driver's `extra` options
    (flag -> argparse keywords), passed on as keyword arguments."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--repeats", type=int, default=default_repeats)
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--keep", action="store_true", help="keep the working folder (runs, logs, data)")
    for flag, keywords in (extra or {}).items():
        parser.add_argument(flag, **keywords)
    args = vars(parser.parse_args())
    run_benchmark(args.pop("repeats"), args.pop("quick"), args.pop("keep"), **args)
