"""Serving on MiniLM over loopback HTTP: `tunelab serve` with eight adapters (four LoRA, two (IA)^3, two bottleneck
adapters, the runs of the mixed-batches benchmark) against a naive server (FastAPI calling a transformers pipeline per
request, `naive_server.py`, on the first LoRA merged into MiniLM, in fp32 as the pipeline loads by default).

The load: 32 concurrent clients, each sending its requests one after another (one text each, the movie-snippets
test texts), every request timed. Sides, in an order rotated each repeat:
- mixed: the eight-adapter server in fp32, each client's requests naming the adapters in turn (batches mix them);
- one adapter: the same server, every request naming the first LoRA;
- one-run server: `tunelab serve` of that LoRA run alone, fp32;
- naive: the naive server (fp32);
- mixed / one adapter at tunelab's default precision: a second eight-adapter server with `--precision auto` (bf16
  autocast where the CPU computes bf16, as this one does; fp32 elsewhere);
- no model: the naive server's FastAPI answering a fixed body, the ceiling the HTTP stack and this load generator
  set on this machine whatever the model.
The bars: no errors; tunelab's one-adapter throughput >= 3x the naive server's (judged both at the same precision,
fp32, and at each side's default); mixed >= 0.8x one adapter; the eight-adapter server's resident memory (after
the load) <= 1.1x the one-run server's. Medians of the repeats; every server takes the machine's default threads.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
from common import BENCHMARKS, OFFLINE_ENV, TUNELAB, alternating, log, machine, median, run_timed, write_result
from mixed_batches import TASKS, build_bundle, test_texts

NAME = "serving"
CLIENTS = 32
SINGLE = "lora-movie"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start(command: list[str], log_file: Path) -> tuple[subprocess.Popen, str, int]:
    """A server process and its URL, once /ready answers (its log in `log_file`)."""
    port = free_port()
    process = subprocess.Popen([*command, str(port)] if command[0] == sys.executable else
                               [*command, "--port", str(port)], env=OFFLINE_ENV,
                               stdout=log_file.open("w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    for _ in range(3000):
        if process.poll() is not None:
            raise RuntimeError(f"{command} ended: see {log_file}")
        try:
            if httpx.get(f"{url}/ready").status_code == 200:
                return process, url, process.pid
        except httpx.TransportError:
            time.sleep(0.1)
    raise RuntimeError(f"{command} did not start: see {log_file}")


async def _load(url: str, names: list[str], texts: list[str], per_client: int) -> dict[str, Any]:
    latencies: list[float] = []
    errors = 0

    async def client(index: int, session: httpx.AsyncClient) -> None:
        nonlocal errors
        for request in range(per_client):
            body = {"model": names[(index + request) % len(names)],
                    "inputs": [texts[(index * per_client + request) % len(texts)]]}
            started = time.perf_counter()
            response = await session.post(f"{url}/v1/predict", json=body)
            latencies.append(time.perf_counter() - started)
            errors += response.status_code != 200

    limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
    async with httpx.AsyncClient(limits=limits, timeout=300) as session:
        started = time.perf_counter()
        await asyncio.gather(*(client(index, session) for index in range(CLIENTS)))
        wall = time.perf_counter() - started
    latencies.sort()
    return {"requests": len(latencies), "errors": errors, "wall_s": wall, "throughput_rps": len(latencies) / wall,
            "p50_ms": 1000 * latencies[len(latencies) // 2], "p99_ms": 1000 * latencies[int(len(latencies) * 0.99)]}


def load(url: str, names: list[str], texts: list[str], per_client: int) -> dict[str, Any]:
    return asyncio.run(_load(url, names, texts, per_client))


def mean_batch_rows(url: str) -> float:
    """Rows per micro-batch over the server's life, from its Prometheus metrics."""
    samples = {}
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith(("tunelab_batch_rows_sum", "tunelab_batch_rows_count")):
            name, value = line.split("{")[0], float(line.rsplit(" ", 1)[1])
            samples[name] = samples.get(name, 0.0) + value
    return samples["tunelab_batch_rows_sum"] / samples["tunelab_batch_rows_count"]


def run_benchmark(repeats: int = 5, quick: bool = False, work: Path | None = None) -> dict[str, Any]:
    work = work or Path(tempfile.mkdtemp(prefix="tunelab-bench-serving-"))
    work.mkdir(parents=True, exist_ok=True)
    bundle = build_bundle(work)
    merged = work / "merged"
    if not merged.exists():
        run_timed([TUNELAB, "export", str(bundle / "tasks" / SINGLE), "--merge", "--output", str(merged)],
                  work / "export.log")
    texts = test_texts(1000)
    per_client = 5 if quick else 20
    servers = {
        "bundle": start([TUNELAB, "serve", str(bundle), "--precision", "fp32"], work / "serve-bundle.log"),
        "bundle-auto": start([TUNELAB, "serve", str(bundle)], work / "serve-bundle-auto.log"),
        "single": start([TUNELAB, "serve", f"{SINGLE}={bundle / 'tasks' / SINGLE}", "--precision", "fp32"],
                        work / "serve-single.log"),
        "naive": start([sys.executable, str(BENCHMARKS / "naive_server.py"), str(merged)], work / "naive.log"),
        "none": start([sys.executable, str(BENCHMARKS / "naive_server.py"), "none"], work / "none.log"),
    }
    sides = {"mixed": ("bundle", list(TASKS)), "one adapter": ("bundle", [SINGLE]),
             "one-run server": ("single", [SINGLE]), "naive": ("naive", [SINGLE]),
             "mixed, default precision": ("bundle-auto", list(TASKS)),
             "one adapter, default precision": ("bundle-auto", [SINGLE]), "no model": ("none", [SINGLE])}
    try:
        for server, names in sides.values():  # warm-up: first batches, allocator, lazy imports
            load(servers[server][1], names, texts, 2)
        rounds = list(alternating(repeats if not quick else 1, tuple(sides),
                                  lambda side, repeat: load(servers[sides[side][0]][1], sides[side][1], texts,
                                                            per_client)))
        rss = {name: psutil.Process(pid).memory_info().rss for name, (_, _, pid) in servers.items()}
        batch_rows = {name: mean_batch_rows(servers[name][1]) for name in ("bundle", "bundle-auto", "single")}
    finally:
        for process, _, _ in servers.values():
            process.terminate()
            process.wait(timeout=60)
    summary: dict[str, Any] = {}
    for side in sides:
        runs = [round_[side] for round_ in rounds]
        summary[side] = {key: median([run[key] for run in runs]) for key in ("throughput_rps", "p50_ms", "p99_ms")}
        summary[side]["errors"] = sum(run["errors"] for run in runs)
        summary[side]["requests"] = sum(run["requests"] for run in runs)
    naive = summary["naive"]["throughput_rps"]
    summary["batched_vs_naive"] = summary["one adapter"]["throughput_rps"] / naive
    summary["batched_vs_naive_default_precision"] = summary["one adapter, default precision"]["throughput_rps"] / naive
    summary["mixed_vs_one_adapter"] = summary["mixed"]["throughput_rps"] / summary["one adapter"]["throughput_rps"]
    summary["mixed_vs_one_adapter_default_precision"] = (summary["mixed, default precision"]["throughput_rps"]
                                                         / summary["one adapter, default precision"]["throughput_rps"])
    summary["rss_bytes"] = rss
    summary["mean_batch_rows"] = batch_rows
    summary["rss_eight_vs_one"] = rss["bundle"] / rss["single"]
    bars = {"no_errors": all(summary[side]["errors"] == 0 for side in sides),
            "batched_at_least_3x_naive_both_fp32": summary["batched_vs_naive"] >= 3,
            "batched_at_least_3x_naive_each_default_precision": summary["batched_vs_naive_default_precision"] >= 3,
            "mixed_at_least_0.8x_one_adapter": summary["mixed_vs_one_adapter"] >= 0.8,
            "rss_eight_adapters_at_most_1.1x_one": summary["rss_eight_vs_one"] <= 1.1}
    result = {"benchmark": NAME, "quick": quick, "machine": machine(),
              "settings": {"model": "minilm", "adapters": {name: f"{s} on {d}" for name, (s, d) in TASKS.items()},
                           "clients": CLIENTS, "requests_per_client": per_client, "texts_per_request": 1,
                           "max_batch": 32, "max_wait_ms": 5.0,
                           "precision": "fp32, and auto for the default-precision sides",
                           "repeats": len(rounds)},
              "rounds": rounds, "summary": summary, "bars": bars, "pass": all(bars.values())}
    log(f"{NAME}: {summary}")
    log(f"{NAME}: wrote {write_result(NAME, result, quick)}")
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="1 repeat, 5 requests per client")
    parser.add_argument("--work", type=Path, default=None, help="where the runs are kept; finished runs are reused")
    args = parser.parse_args()
    run_benchmark(args.repeats, args.quick, args.work)
