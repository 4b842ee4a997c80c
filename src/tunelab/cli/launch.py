"""`tunelab train --nproc N`: the same command again under torchrun, N processes on this machine (and `--nnodes`
machines), rank 0 printing and writing. torchrun reports a failed process with a multi-page report; the user sees
the processes' own one-line error instead, or for a crash the exception (or signal) that ended the first process."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from tunelab.errors import TunelabError
from tunelab.ranks import per_process, world_size
from tunelab.runs import discard_interrupted

TORCHRUN_LOG = re.compile(r"^[IWEF]\d{4} ")  # torchrun's own log lines (glog style: W1205 20:34:58 ...)
TORCH_WARNING = re.compile(r"^\[rank\d+\]:\[W")
# a traceback's last line, prefixed with its rank once the process group is up ("[rank1]: RuntimeError: ...")
EXCEPTION_LINE = re.compile(r"^(?:\[rank\d+\]: )?([A-Za-z_][\w.]*(?:Error|Exception|Interrupt)\b.*)")
KILLED = re.compile(r"failed \(exitcode: -(\d+)\) local_rank: (\d+)")  # torchrun's log of a process a signal ended
LAUNCH_FLAGS = ("--nproc", "--nnodes", "--node-rank", "--master-addr", "--master-port")


def without_launch_flags(argv: list[str]) -> list[str]:
    """The command's own arguments, minus the flags that only say how to launch it."""
    kept, skip = [], False
    for argument in argv:
        if skip:
            skip = False
        elif argument in LAUNCH_FLAGS:
            skip = True
        elif not argument.startswith(tuple(f"{flag}=" for flag in LAUNCH_FLAGS)):
            kept.append(argument)
    return kept


def torchrun_command(argv: list[str], nproc: int, nnodes: int, node_rank: int, master_addr: str | None,
                     master_port: int) -> list[str]:
    """`python -m torch.distributed.run ... -m tunelab ARGS`: standalone on one machine, a static rendezvous at
    `master_addr` for several."""
    if nnodes > 1 and master_addr is None:
        raise TunelabError("--nnodes above 1 needs --master-addr: the address of the node with --node-rank 0")
    where = ["--standalone"] if nnodes == 1 else ["--nnodes", str(nnodes), "--node-rank", str(node_rank),
                                                  "--master-addr", master_addr, "--master-port", str(master_port)]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), *where,
            "-m", "tunelab", *without_launch_flags(argv)]


def relaunch(batch_size: int, nproc: int, nnodes: int = 1, node_rank: int = 0, master_addr: str | None = None,
             master_port: int = 29500, restart: Path | None = None) -> NoReturn:
    """This very command again under torchrun, once the caller has refused what it can before launching; the batch
    size is global, so it must split over the processes. `restart`: the output whose interrupted run --restart
    discards, here, once, so that every process then finds the same (no) checkpoint; the processes run without
    --restart."""
    if world_size() > 1:
        raise TunelabError("--nproc launches torchrun; under torchrun already, leave --nproc out")
    per_process(batch_size, "--batch-size", nproc * nnodes)
    if restart is not None:
        discard_interrupted(restart)
    arguments = [argument for argument in sys.argv[1:] if argument != "--restart"]
    raise typer.Exit(launch(torchrun_command(arguments, nproc, nnodes, node_rank, master_addr, master_port)))


def single_process(command: str, reason: str) -> None:
    """Refuse a run under torchrun that only one process can make."""
    if world_size() > 1:
        raise TunelabError(f"{command} runs in one process ({reason}); run it without torchrun")


def launch(command: list[str]) -> int:
    """Run torchrun with its processes' output shown as it comes, torchrun's own failure report left out; the
    processes' one-line error (each process gives the same) shown once, or else what ended the first process to
    fail. The exit code: 0, 2 for a user error."""
    errors: list[str] = []
    cause: str | None = None  # what ended the first process to fail
    with subprocess.Popen(command, stderr=subprocess.PIPE, text=True, bufsize=1) as process:
        reporting = False  # from a traceback on, torchrun (or a crashed process) is reporting a failure
        for line in process.stderr:
            if TORCH_WARNING.match(line):  # e.g. DDP's note on find_unused_parameters, once per process
                continue
            reporting = reporting or line.startswith(("Traceback", "[rank"))
            printed_by_the_run = not reporting and not TORCHRUN_LOG.match(line)
            if not printed_by_the_run:
                cause = cause or _cause(line)
            if line.startswith("error: "):
                errors.append(line.removeprefix("error: ").strip())
            elif printed_by_the_run:
                sys.stderr.write(line)
    if process.returncode == 0:
        return 0
    if errors:
        Console(stderr=True).print(f"[red]error:[/red] {escape(errors[0])}", highlight=False, soft_wrap=True)
        return 2
    told = f": {cause}" if cause else ""
    Console(stderr=True).print(f"[red]error:[/red] a training process failed{escape(told)} (torchrun exit code "
                               f"{process.returncode}); run with --nproc 1 to see its traceback", highlight=False,
                               soft_wrap=True)
    return 1


def _cause(line: str) -> str | None:
    """What ended a process, if this line of torchrun's output says: an exception, or a signal (e.g. 9 from the
    kernel when memory runs out)."""
    if exception := EXCEPTION_LINE.match(line):
        return exception.group(1).strip()
    if killed := KILLED.search(line):
        return f"process {killed.group(2)} was killed by signal {killed.group(1)}"
    return None
