"""Mixed-task batches on MiniLM: eight adapters of three kinds (four LoRA, two (IA)^3, two bottleneck adapters over
the four sentiment domains) answering rows of different tasks in one forward.

- equality: 256 test rows, each naming one of the eight tasks in turn, against each task's own run (fp32);
- throughput: a batch of 64 rows, eight per task, against the same 64 texts through one LoRA run alone (its own
  predictor, batch 64), alternating, median of the repeats;
- memory: what loading the eight-task bundle and answering one mixed batch adds to a process's resident memory,
  against loading a single LoRA run and answering the same texts (each in a fresh process; the peaks too), and the
  bytes of the weights each holds (RSS growth also counts libraries imported on first use and the allocator), the
  medians of 5 alternating repeats.
The bars: rows equal their single-task forwards (max |difference| <= 1e-5), throughput >= 0.8x the single-adapter
batch, memory <= 1.1x one model. The runs train briefly (256 examples, one epoch): what is measured here is the
arithmetic and the cost of routing, not accuracy.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import TUNELAB, log, machine, median, run_timed, write_result

NAME = "mixed_batches"
TASKS = {"lora-movie": ("lora", "movie-snippets"), "lora-tweets": ("lora", "tweets"),
         "lora-amazon": ("lora", "amazon-snippets"), "lora-nyt": ("lora", "nyt-snippets"),
         "ia3-movie": ("ia3", "movie-snippets"), "ia3-nyt": ("ia3", "nyt-snippets"),
         "adapter-tweets": ("adapter", "tweets"), "adapter-amazon": ("adapter", "amazon-snippets")}
BATCH = 64
ROWS = 256
# Prints the process's resident memory before loading (libraries imported, texts read) and after loading the model
# and answering one batch, and its peak.
LOAD_AND_ANSWER = """
import json, resource, sys
from pathlib import Path
import psutil
from tunelab.api import load_predictor
from tunelab.compose.mixed import MixedPredictor
texts = json.loads(Path(sys.argv[3]).read_text())
before = psutil.Process().memory_info().rss
if sys.argv[1] == "mixed":
    tasks = {tasks!r}
    mixed = MixedPredictor(sys.argv[2], "fp32")
    mixed.logits(texts, [tasks[row % len(tasks)] for row in range(len(texts))])
    models = [mixed.shared, *(predictor.model for predictor in mixed.separate.values())]
else:
    predictor = load_predictor(Path(sys.argv[2]), "fp32")
    predictor.logits(texts)
    models = [predictor.model]
tensors = sum(t.numel() * t.element_size() for model in models for t in [*model.parameters(), *model.buffers()])
print(json.dumps({{"before": before, "after": psutil.Process().memory_info().rss, "tensor_bytes": tensors,
                  "peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}}))
"""


def build_bundle(work: Path) -> Path:
    for name, (strategy, domain) in TASKS.items():
        run = work / name
        if not (run / "metrics.json").exists():
            run_timed([TUNELAB, "train", "--model", "minilm", "--data", domain, "--strategy", strategy,
                       "--limit-train", "256", "--epochs", "1", "--output", str(run), "--quiet", "--overwrite"],
                      run.with_suffix(".log"))
    bundle = work / "bundle"
    run_timed([TUNELAB, "compose", "bundle", *(f"{name}={work / name}" for name in TASKS), "--output", str(bundle),
               "--overwrite"], work / "bundle.log")
    return bundle


def test_texts(count: int) -> list[str]:
    from tunelab.assets.datasets import CATALOG

    return CATALOG["movie-snippets"].load()["text"].tolist()[-count:]


def equality(bundle: Path) -> float:
    import numpy as np

    from tunelab.api import load_predictor
    from tunelab.compose.mixed import MixedPredictor

    names = list(TASKS)
    texts = test_texts(ROWS)
    tasks = [names[row % len(names)] for row in range(ROWS)]
    mixed = MixedPredictor(bundle, "fp32").logits(texts, tasks)
    worst = 0.0
    for name in names:
        rows = [row for row, task in enumerate(tasks) if task == name]
        single = load_predictor(bundle / "tasks" / name, "fp32").logits([texts[row] for row in rows])
        worst = max(worst, float(np.abs(np.stack([mixed[row] for row in rows]) - single).max()))
    return worst


def throughput(bundle: Path, repeats: int) -> dict[str, Any]:
    from tunelab.api import load_predictor
    from tunelab.compose.mixed import MixedPredictor

    names = list(TASKS)
    texts = test_texts(BATCH)
    tasks = [names[row % len(names)] for row in range(BATCH)]
    mixed, single = MixedPredictor(bundle, "fp32"), load_predictor(bundle / "tasks" / "lora-movie", "fp32")
    sides = {"mixed": lambda: mixed.logits(texts, tasks, BATCH), "single": lambda: single.logits(texts, BATCH)}
    times: dict[str, list[float]] = {"mixed": [], "single": []}
    for side in sides.values():
        side()  # warm-up
    for repeat in range(repeats):
        for name in (("mixed", "single") if repeat % 2 == 0 else ("single", "mixed")):
            start = time.perf_counter()
            sides[name]()
            times[name].append(time.perf_counter() - start)
    return {"mixed_batch_s": median(times["mixed"]), "single_batch_s": median(times["single"]),
            "throughput_ratio": median(times["single"]) / median(times["mixed"]), "repeats": repeats}


def memory(bundle: Path, work: Path, repeats: int) -> dict[str, Any]:
    """Each side in a fresh process, alternating, `repeats` times: its resident memory grown by loading and answering,
    its peak, and the bytes of the weights it holds; medians."""
    script = LOAD_AND_ANSWER.format(tasks=list(TASKS))
    texts = work / "texts.json"
    texts.write_text(json.dumps(test_texts(BATCH)), encoding="utf-8")
    figures: dict[str, list[dict[str, int]]] = {"mixed": [], "single": []}
    paths = {"mixed": bundle, "single": bundle / "tasks" / "lora-movie"}
    for repeat in range(repeats):
        for side in (("mixed", "single") if repeat % 2 == 0 else ("single", "mixed")):
            log_file = work / f"memory-{side}-{repeat}.log"
            run_timed([sys.executable, "-c", script, side, str(paths[side]), str(texts)], log_file)
            figures[side].append(json.loads(log_file.read_text(encoding="utf-8").strip().splitlines()[-1]))
    grown = {side: median([run["after"] - run["before"] for run in runs]) for side, runs in figures.items()}
    peak = {side: median([run["peak"] for run in runs]) for side, runs in figures.items()}
    tensors = {side: runs[0]["tensor_bytes"] for side, runs in figures.items()}
    return {"mixed_loaded_rss_bytes": grown["mixed"], "single_loaded_rss_bytes": grown["single"],
            "memory_ratio": grown["mixed"] / grown["single"], "mixed_peak_rss_bytes": peak["mixed"],
            "single_peak_rss_bytes": peak["single"], "peak_ratio": peak["mixed"] / peak["single"],
            "mixed_tensor_bytes": tensors["mixed"], "single_tensor_bytes": tensors["single"],
            "tensor_ratio": tensors["mixed"] / tensors["single"], "memory_repeats": repeats}


def run_benchmark(repeats: int = 20, quick: bool = False, work: Path | None = None) -> dict[str, Any]:
    work = work or Path(tempfile.mkdtemp(prefix="tunelab-bench-mixed-"))
    work.mkdir(parents=True, exist_ok=True)
    bundle = build_bundle(work)
    worst = equality(bundle)
    speed = throughput(bundle, 3 if quick else repeats)
    rss = memory(bundle, work, 1 if quick else 5)
    summary = {"max_abs_difference": worst, **speed, **rss}
    bars = {"rows_equal_single_forwards_1e-5": worst <= 1e-5, "throughput_at_least_0.8x": speed[
        "throughput_ratio"] >= 0.8, "memory_at_most_1.1x_one_model": rss["memory_ratio"] <= 1.1}
    result = {"benchmark": NAME, "quick": quick, "machine": machine(),
              "settings": {"model": "minilm", "tasks": {name: f"{s} on {d}" for name, (s, d) in TASKS.items()},
                           "batch_size": BATCH, "equality_rows": ROWS, "precision": "fp32"},
              "summary": summary, "bars": bars, "pass": all(bars.values())}
    log(f"{NAME}: {summary}")
    log(f"{NAME}: wrote {write_result(NAME, result, quick)}")
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="3 repeats")
    parser.add_argument("--work", type=Path, default=None, help="where the runs are kept; finished runs are reused")
    args = parser.parse_args()
    run_benchmark(args.repeats, args.quick, args.work)
