"""Where a grid's cells and a search's trials train: one seam, two executors.

A `Job` is "train this run config into its output folder" (or run this `tunelab blackbox` command, which writes its
run there); an executor runs it and answers (exit code, the reason it failed or ""). Either way the run is an ordinary
`tunelab` process of its own (its own peak memory, a crash costs one run), forked from a fork server that imported
tunelab, torch, transformers and peft once: those imports were most of a small run's cost beyond training. The
server runs no torch operation, so every fork starts as clean as a new process. Where there is no fork server
(Windows), runs start as new processes.

- `local`: on this machine, in the caller's thread. A grid trains one run at a time on every core; the search's K
  worker threads each drive one, on cores/K threads.
- `ray`: each run is a Ray task with a resource request (CPUs, GPUs, memory) on any node of a Ray cluster, which
  forks the run's process there. The task writes the run straight into the grid's or search's folder, so every node
  must see that folder, the data and the model at the same paths (one machine, or a shared filesystem) and run the
  same Python environment; the driver copies nothing.
"""

from __future__ import annotations

import ctypes
import importlib.util
import logging
import math
import multiprocessing
import os
import runpy
import shlex
import signal
import socket
import sys
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from tunelab.config import RunConfig, to_yaml
from tunelab.errors import TunelabError
from tunelab.runs import write_text_atomic

# Imported once, in the fork server, by name: a run is `python -m tunelab train` (which imports these), and this
# module, a layer below them, never imports them itself.
PRELOAD = ["tunelab.cli", "tunelab.api", "tunelab.report", "tunelab.recipes.classification"]
PR_SET_PDEATHSIG = 1  # prctl(2)
EXECUTORS = ("local", "ray")
# What a Ray task's process gets from the driver's environment besides the node's own: where tunelab and the
# caches are, and tunelab's and the hub clients' settings.
FORWARDED_PREFIXES = ("TUNELAB_", "HF_")
FORWARDED = ("PYTHONPATH",)
CONNECT_TIMEOUT_S = 5.0

Outcome = tuple[int, str]  # exit code, the one-line reason it failed or ""


@dataclass
class Job:
    """Train `config` into its output folder, with its config written to `config_path` and its output to `log`; or,
    given `command`, run `tunelab COMMAND...` instead (a black-box cell: `tunelab blackbox` writes `config`'s run),
    its command line written to `config_path`. Relative paths resolve in `cwd`, as they would for `tunelab` run
    there."""

    config: RunConfig
    config_path: Path
    log: Path
    cwd: Path = field(default_factory=Path.cwd)
    command: list[str] | None = None

    def __post_init__(self) -> None:  # a Ray task runs in a folder of its own: it gets absolute paths
        self.config_path, self.log = self.config_path.absolute(), self.log.absolute()

    def arguments(self) -> list[str]:
        return self.command or ["train", str(self.config_path), "--quiet"]

    def record(self) -> str:
        """What `config_path` holds: the run config, or the command line that runs it."""
        return shlex.join(["tunelab", *self.command]) + "\n" if self.command else to_yaml(self.config)


class Executor(Protocol):
    def capacity(self) -> int:
        """How many jobs can train at once now."""

    def submit(self, job: Job) -> Future[Outcome]:
        """Start `job` (the local executor trains it before returning)."""

    def describe(self) -> str:
        """Where runs train, when it is worth a line ("" locally)."""


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def threads_per_run(workers: int) -> int | None:
    """Local CPU threads of each run when `workers` train at once (one alone keeps torch's default)."""
    return max(1, cores() // workers) if workers > 1 else None


# --- a run's own process -------------------------------------------------------------------------------------


def _error_line(log: Path, code: int | None) -> str:
    """The one-line reason a run's `tunelab train` gave, or how it ended and where to look when it crashed."""
    lines = log.read_text(encoding="utf-8", errors="replace").splitlines() if log.exists() else []
    errors = [line.removeprefix("error: ") for line in lines if line.startswith("error: ")]
    ended = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
    return errors[-1] if errors else f"crashed ({ended}); see {log}"


def _die_with_parent() -> None:
    """Linux: the kernel kills this process when its parent (the fork server) exits, so a grid or a search killed
    with SIGKILL, or a cancelled Ray task, leaves no orphan still training and writing."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _run(arguments: list[str], log_path: str, environment: dict[str, str], threads: int | None, cwd: str) -> None:
    """A run's process: `tunelab ARGUMENTS...` as `python -m tunelab` runs it, in `cwd`, with the caller's
    environment as it is now (the fork server's is as it was when it started), its output in the run's log, on
    `threads` CPU threads when several runs train at once."""
    _die_with_parent()
    os.environ.clear()
    os.environ.update({**environment, "COLUMNS": "200"})
    os.chdir(cwd)
    if threads:
        import torch  # already imported by the fork server's preload; the executor itself stays torch-free

        torch.set_num_threads(threads)
    with open(log_path, "w", encoding="utf-8") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
    sys.argv = ["tunelab", *arguments]
    runpy.run_module("tunelab", run_name="__main__")


def _processes() -> multiprocessing.context.BaseContext:
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    return context


def train_in_process(job: Job, threads: int | None = None) -> Outcome:
    """Run `job` in a process of its own and wait for it."""
    write_text_atomic(job.config_path, job.record())
    process = _processes().Process(target=_run, args=(job.arguments(), str(job.log), dict(os.environ), threads,
                                                      str(job.cwd)))
    process.start()
    process.join()
    return process.exitcode, "" if process.exitcode == 0 else _error_line(job.log, process.exitcode)


@dataclass(frozen=True)
class LocalExecutor:
    """Runs on this machine, one per calling thread."""

    threads: int | None = None

    def capacity(self) -> int:
        return 1

    def submit(self, job: Job) -> Future[Outcome]:
        future: Future[Outcome] = Future()
        future.set_result(train_in_process(job, self.threads))
        return future

    def describe(self) -> str:
        return ""


# --- Ray -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExecutorChoice:
    """Where runs train, as the command line says it: `local`, or `ray` on the cluster at `address` (a local Ray
    on this machine's cores without one), each run asking for `cpus`, `gpus` and `memory_gb` (default: this
    machine's cores shared by the runs that train at once, as locally; one GPU where the cluster has GPUs)."""

    name: str = "local"
    address: str | None = None
    cpus: int | None = None
    gpus: float | None = None
    memory_gb: float | None = None

    def __post_init__(self) -> None:
        if self.name not in EXECUTORS:
            raise TunelabError(f"--executor '{self.name}' is not one of {', '.join(EXECUTORS)}")
        if self.name != "ray":
            given = [flag for flag, value in (("--address", self.address), ("--cpus-per-run", self.cpus),
                                              ("--gpus-per-run", self.gpus), ("--memory-per-run", self.memory_gb))
                     if value is not None]
            if given:
                raise TunelabError(f"{given[0]} is for --executor ray (runs train on this machine otherwise)")
        elif importlib.util.find_spec("ray") is None:
            raise TunelabError("--executor ray needs ray, which is not installed: pip install 'tunelab[ray]'")


LOCAL = ExecutorChoice()


@contextmanager
def open_executor(choice: ExecutorChoice, workers: int = 1) -> Iterator[Executor]:
    """The executor `choice` names, for `workers` runs at once on the local one; a Ray connection (or local Ray) is
    closed on leaving, and its runs still training are cancelled (Ctrl-C, an error)."""
    if choice.name == "local":
        yield LocalExecutor(threads_per_run(workers))
        return
    executor = RayExecutor(choice, workers)
    try:
        yield executor
    finally:
        executor.close()


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}".rstrip(": ")


def _check_reachable(address: str) -> None:
    """`ray.init` waits for minutes on an address where nothing answers: try the port first."""
    if address == "auto":  # a cluster this machine belongs to; Ray finds it, or says at once it found none
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise TunelabError(f"--address '{address}' is not HOST:PORT (the head's port, 6379 unless `ray start "
                           f"--head --port` chose another) or auto")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as error:
        raise TunelabError(f"cannot reach the Ray cluster at {address}: {error.strerror or error}; start it with "
                           f"`ray start --head` or check --address") from None


def _forwarded_environment() -> dict[str, str]:
    return {name: value for name, value in os.environ.items()
            if name in FORWARDED or name.startswith(FORWARDED_PREFIXES)}


class RayExecutor:
    """Each job is a Ray task asking for its resources; the task forks the run's process on its node."""

    def __init__(self, choice: ExecutorChoice, workers: int):
        import ray

        self.ray, self.owned, self.address = ray, not ray.is_initialized(), choice.address
        self.running: dict[Any, Future[Outcome]] = {}  # the tasks not yet settled
        if self.owned:
            self._connect(choice.address)
        try:
            self.needs = self._needs(choice, workers)
            self._check_feasible(choice.address)
        except TunelabError:
            self.close()
            raise
        self.threads = int(self.needs["CPU"])
        options = {"num_cpus": self.needs["CPU"], "num_gpus": self.needs.get("GPU", 0),
                   "memory": self.needs.get("memory"), "runtime_env": {"env_vars": _forwarded_environment()}}
        self.task = ray.remote(train_in_process).options(**{key: value for key, value in options.items() if value})

    def _connect(self, address: str | None) -> None:
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no network call the user did not ask for
        quiet = {"log_to_driver": False, "logging_level": logging.ERROR}  # each run's output is in its log
        if address is None:
            self.ray.init(num_cpus=cores(), include_dashboard=False, **quiet)
            return
        _check_reachable(address)
        try:
            self.ray.init(address=address, **quiet)
        except (ConnectionError, RuntimeError, ValueError) as error:
            hint = "" if os.environ.get("RAY_AUTH_MODE") == "token" else (
                "; a cluster with token authentication (`ray start` turns it on where ~/.ray/auth_token exists) "
                "also needs RAY_AUTH_MODE=token here")
            raise TunelabError(f"cannot connect to the Ray cluster at {address}: {_first_line(error)}{hint}") from None

    def _nodes(self) -> list[dict[str, float]]:
        return [node["Resources"] for node in self.ray.nodes() if node["Alive"]]

    def _needs(self, choice: ExecutorChoice, workers: int) -> dict[str, float]:
        """What each run asks for: the given amounts, else this machine's cores over `workers` (at most what the
        largest node has) and one GPU where the cluster has any."""
        nodes = self._nodes()
        cpus = choice.cpus or min(max(1, cores() // workers), max(int(node.get("CPU", 0)) for node in nodes) or 1)
        gpus = choice.gpus if choice.gpus is not None else float(any(node.get("GPU", 0) for node in nodes))
        memory = choice.memory_gb and int(choice.memory_gb * 1e9)
        return {"CPU": cpus, **({"GPU": gpus} if gpus else {}), **({"memory": memory} if memory else {})}

    def _check_feasible(self, address: str | None) -> None:
        """A request no node can meet would wait forever: refuse it (checked against the nodes up now)."""
        if any(all(node.get(name, 0) >= amount for name, amount in self.needs.items()) for node in self._nodes()):
            return
        asked = ", ".join(f"{amount:g} {name}" for name, amount in self.needs.items())
        raise TunelabError(f"no node of the Ray cluster at {address or 'this machine'} has {asked} for one run; "
                           f"lower --cpus-per-run, --gpus-per-run or --memory-per-run, or add a node that has")

    def capacity(self) -> int:
        """Runs the cluster holds at once now (it may grow: asked again before each submission)."""
        totals = self.ray.cluster_resources()
        return max(1, min(math.floor(totals.get(name, 0) / amount) for name, amount in self.needs.items()))

    def describe(self) -> str:
        totals = self.ray.cluster_resources()
        where = f"the Ray cluster at {self.address}" if self.address else "Ray on this machine"
        has = ", ".join(f"{totals[name]:g} {name}" for name in ("CPU", "GPU") if totals.get(name))
        asks = ", ".join(f"{amount / 1e9:g} GB memory" if name == "memory" else f"{amount:g} {name}"
                         for name, amount in self.needs.items())
        return f"training on {where} ({has}): each run asks for {asks}; {self.capacity()} at once"

    def submit(self, job: Job) -> Future[Outcome]:
        reference = self.task.remote(job, self.threads)
        outcome: Future[Outcome] = Future()
        self.running[reference] = outcome

        def settle(done: Future[Outcome]) -> None:
            self.running.pop(reference, None)
            try:
                outcome.set_result(done.result())
            except BaseException as error:  # the task's worker or node died, or it was cancelled
                outcome.set_result((1, f"the Ray task failed: {_first_line(error)}"))

        reference.future().add_done_callback(settle)
        return outcome

    def close(self) -> None:
        """Cancel what still trains (the task's worker is killed, and with it the fork server and the run's
        process), then disconnect."""
        for reference in list(self.running):
            self.ray.cancel(reference, force=True)
        if self.owned:
            self.ray.shutdown()
