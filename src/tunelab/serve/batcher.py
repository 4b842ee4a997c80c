"""Micro-batching: requests from many clients queue, and one worker answers them together, up to `max_batch` rows
or after waiting `max_wait_ms` for more, whichever comes first. The forward runs in the batcher's own thread (one,
so an engine computes one batch at a time and its memory stays in one allocator arena) while the server keeps
reading requests and streaming generations. The queue is bounded: a request that finds it full is
refused at once (the server answers 503), which is kinder to clients than an unbounded wait.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from tunelab.training.memory import inference_memory

TRIM_EVERY_S = 1.0


def _trimmer() -> Callable[[], None]:
    """glibc keeps the memory of freed tensors of every shape a batch had, and a server sees many shapes: its
    resident memory creeps up by tens of MB an hour of load. Handing free memory back (`malloc_trim`) at most once a
    second keeps it flat; elsewhere (macOS, musl) this does nothing."""
    try:
        trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return lambda: None
    last = [0.0]

    def maybe_trim() -> None:
        if time.monotonic() - last[0] >= TRIM_EVERY_S:
            trim(0)
            last[0] = time.monotonic()

    return maybe_trim


class Overloaded(Exception):
    """The queue is full."""


@dataclass
class _Job:
    items: list[Any]
    future: asyncio.Future


class MicroBatcher:
    def __init__(self, answer: Callable[[list[Any]], list[Any]], max_batch: int, max_wait_ms: float, max_queue: int,
                 on_batch: Callable[[int, int], None] = lambda rows, queued: None):
        """`answer` maps a list of items to one result per item; a result that is an exception fails its request
        alone. `on_batch(rows, queued)` is told each batch's size and what still waits (for metrics)."""
        self.answer, self.max_batch, self.max_wait = answer, max_batch, max_wait_ms / 1000
        self.on_batch = on_batch
        self.max_queue = max_queue
        self.queue: asyncio.Queue[_Job] = asyncio.Queue(maxsize=max_queue)
        self.worker: asyncio.Task | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tunelab-batch")
        self.trim = _trimmer()

    async def submit(self, items: list[Any]) -> list[Any]:
        loop = asyncio.get_running_loop()
        if self.worker is None or self.worker.done() or self.loop is not loop:  # a queue serves one event loop
            self.queue, self.loop = asyncio.Queue(maxsize=self.max_queue), loop
            self.worker = loop.create_task(self._work())
        job = _Job(items, loop.create_future())
        try:
            self.queue.put_nowait(job)
        except asyncio.QueueFull:
            raise Overloaded from None
        return await job.future

    async def _work(self) -> None:
        while True:
            jobs = [await self.queue.get()]
            rows = len(jobs[0].items)
            deadline = asyncio.get_running_loop().time() + self.max_wait
            while rows < self.max_batch:
                try:
                    job = await asyncio.wait_for(self.queue.get(), deadline - asyncio.get_running_loop().time())
                except TimeoutError:
                    break
                jobs.append(job)
                rows += len(job.items)
            jobs = [job for job in jobs if not job.future.done()]  # a request that timed out or went away
            self.on_batch(sum(len(job.items) for job in jobs), self.queue.qsize())
            await self._answer(jobs)

    def close(self) -> None:
        if self.worker is not None:
            self.worker.cancel()
        self.thread.shutdown(wait=False)

    def _answer_and_trim(self, items: list[Any]) -> list[Any]:
        """The batch's answers; a batch that runs out of memory fails its requests with one line (the server stays
        up), naming a `--max-batch` that would fit."""
        with inference_memory(len(items), "tunelab serve --max-batch"):
            results = self.answer(items)
        self.trim()
        return results

    async def _answer(self, jobs: list[_Job]) -> None:
        items = [item for job in jobs for item in job.items]
        try:
            results = await self.loop.run_in_executor(self.thread, self._answer_and_trim, items) if items else []
        except Exception as error:  # the whole batch failed: each request hears why
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(error)
            return
        start = 0
        for job in jobs:
            mine, start = results[start:start + len(job.items)], start + len(job.items)
            if job.future.done():
                continue
            failed = next((result for result in mine if isinstance(result, Exception)), None)
            if failed is not None:
                job.future.set_exception(failed)
            else:
                job.future.set_result(mine)
