"""Resource accounting for a run: peak memory while training, bytes on disk, inference latency."""

from __future__ import annotations

import statistics
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import torch
from torch import nn

from tunelab.strategies.base import count_parameters


class PeakMemory:
    """Samples this process's resident memory in a thread; `peak_bytes` is the maximum seen.

    On a GPU it also records torch's peak allocated device memory.
    """

    def __init__(self, interval_s: float = 0.05):
        self.interval_s = interval_s
        self.peak_bytes = 0
        self.peak_gpu_bytes: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        process = psutil.Process()
        while not self._stop.is_set():
            self.peak_bytes = max(self.peak_bytes, process.memory_info().rss)
            self._stop.wait(self.interval_s)

    def __enter__(self) -> PeakMemory:
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()
        if torch.cuda.is_available():
            self.peak_gpu_bytes = torch.cuda.max_memory_allocated()


def bytes_on_disk(paths: list[Path]) -> int:
    return sum(path.stat().st_size for path in paths)


@torch.no_grad()
def latency_per_example_ms(predict_one, texts: list[str], warmup: int = 3) -> float:
    """Median wall time of predicting one text at a time (batch size 1), in milliseconds."""
    for text in texts[:warmup]:
        predict_one(text)
    timings = []
    for text in texts:
        start = time.perf_counter()
        predict_one(text)
        timings.append((time.perf_counter() - start) * 1000)
    return statistics.median(timings)


def run_resources(model: nn.Module, timings: dict[str, float], memory: PeakMemory, delta_files: list[Path],
                  latency: float | None) -> dict[str, Any]:
    """What a run cost: parameters, time, peak memory, bytes on disk, latency at batch size 1 (None where a stage
    does not measure it)."""
    trainable, total = count_parameters(model)
    return {
        "trainable_parameters": trainable, "total_parameters": total, "trainable_share": trainable / total,
        **{key: round(value, 3) for key, value in timings.items()},
        "peak_memory_bytes": memory.peak_bytes, "peak_gpu_memory_bytes": memory.peak_gpu_bytes,
        "delta_bytes": bytes_on_disk(delta_files),
        "latency_ms_per_example": None if latency is None else round(latency, 3),
        # what a task would cost on disk as a full model copy instead of a delta
        "full_copy_bytes": sum(p.numel() * p.element_size() for p in model.parameters()),
    }
