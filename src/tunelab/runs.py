"""Run directories, and only their files: staged and committed atomically, never overwritten by accident, one writer
at a time, checked when read back.

A run is built in a hidden sibling folder and renamed into place only when complete, so a crash or a
bad input never leaves a half-written run, and `--overwrite` replaces an old run only at the very end. Files are
fsync'd before they are renamed into place, so a power cut cannot leave an empty file under a complete name; a run's
manifest holds each file's size and SHA-256, checked before the run is loaded.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import shutil
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from tunelab.config import CONFIG_FILE, RunConfig, build_config, read_yaml, to_yaml
from tunelab.errors import TunelabError

METRICS_FILE = "metrics.json"
RESOURCES_FILE = "resources.json"
MANIFEST_FILE = "manifest.json"  # every file of a committed run: size and SHA-256
WRITER_FILE = ".writer.json"  # in a staging folder: which process is writing it
BLACKBOX_FILE = "blackbox.yaml"  # marks a black-box run (`tunelab blackbox`): its method, settings and what it found
BLACKBOX_METHODS = ("bbt", "search", "mezo")  # `tunelab blackbox --method`
CHECKPOINTS = "checkpoints"  # the Trainer's, inside the staged run; removed when the run commits unless kept
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def sync_folder(folder: Path) -> None:
    """Make a rename or a new file in `folder` durable (the folder's own entry list is fsync'd)."""
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Written whole or not at all: a process killed while writing, or a power cut, leaves the previous file."""
    partial = path.with_name(path.name + ".partial")
    with open(partial, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, path)
    sync_folder(path.parent)


def write_json(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def open_resumable(folder: Path, settings_file: str, settings: dict[str, Any], kind: str) -> None:
    """Create a folder of resumable work (a grid, a pipeline) with its settings, or check that an existing one was
    started with these very settings, so that running the same command again resumes it and nothing else does."""
    stored_file = folder / settings_file
    if folder.exists() and not stored_file.exists() and any(folder.iterdir()):
        raise TunelabError(f"{folder} exists and is not a tunelab {kind}; choose another --output")
    if stored_file.exists():
        stored = yaml.safe_load(stored_file.read_text(encoding="utf-8"))
        changed = [key.replace("_", " ") for key, value in settings.items() if stored.get(key) != value]
        if changed:
            raise TunelabError(f"{folder} holds a {kind.split()[-1]} with other {', '.join(changed)}; repeat its "
                               f"settings to resume it (see {stored_file}), or choose another --output")
    folder.mkdir(parents=True, exist_ok=True)
    write_text_atomic(stored_file, yaml.safe_dump(settings, sort_keys=False))


def write_run(folder: Path, config: RunConfig, metrics: dict[str, Any], resources: dict[str, Any]) -> None:
    """The files every trained run holds besides its delta: the resolved config, metrics and costs."""
    write_text_atomic(folder / CONFIG_FILE, to_yaml(config))
    write_json(folder / METRICS_FILE, metrics)
    write_json(folder / RESOURCES_FILE, resources)


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _sha256(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _run_files(folder: Path) -> list[Path]:
    """What a manifest covers: every file but the Trainer's checkpoints (scratch for resuming, dropped by bundles)."""
    return sorted(path for path in folder.rglob("*")
                  if path.is_file() and CHECKPOINTS not in path.relative_to(folder).parts)


def write_manifest(folder: Path) -> None:
    """fsync every file of a finished run, then record each one's size and SHA-256."""
    files = {}
    for path in _run_files(folder):
        if path.name == MANIFEST_FILE:
            continue
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())
        files[path.relative_to(folder).as_posix()] = {"bytes": path.stat().st_size, "sha256": _sha256(path)}
    write_json(folder / MANIFEST_FILE, {"files": files})


def verify_manifest(folder: Path) -> None:
    """Refuse a run whose files are not the ones it was committed with (truncated, altered or lost), naming the
    first such file. A run written before manifests existed has none, and is read as it is."""
    manifest = folder / MANIFEST_FILE
    if not manifest.exists():
        return
    try:
        files = read_json(manifest)["files"]
    except (ValueError, KeyError, TypeError):
        raise TunelabError(f"{manifest} is damaged: restore the run from a copy or train it again") from None
    for name, expected in files.items():
        problem = _file_problem(folder / name, expected)
        if problem:
            raise TunelabError(f"{folder / name} {problem} (checked against {MANIFEST_FILE}): the run is damaged; "
                               f"restore it from a copy or train it again")


def _file_problem(path: Path, expected: dict[str, Any]) -> str | None:
    if not path.is_file():
        return "is missing"
    size = path.stat().st_size
    if size < expected["bytes"]:
        return f"is truncated ({size} of {expected['bytes']} bytes)"
    if size != expected["bytes"] or _sha256(path) != expected["sha256"]:
        return "has changed since the run was written"
    return None


def is_disk_full(error: BaseException, folder: Path) -> bool:
    """Whether `error` came from a full disk: an OSError says so; torch and safetensors wrap it in their own errors
    (safetensors keeps the message; torch's zip writer does not), so a folder with no free blocks counts too."""
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, OSError) and cause.errno in NO_SPACE or "No space left on device" in str(cause):
            return True
        cause = cause.__cause__ or cause.__context__
    usage = os.statvfs(folder) if folder.exists() else None
    return usage is not None and usage.f_bfree * usage.f_frsize < 1 << 20


class _WriterLock:
    """One writer per staging folder: an flock on the folder itself, which goes with its process (even one killed
    with SIGKILL), and a file inside naming that process for the one refused."""

    def __init__(self, folder: Path, kind: str, final: Path):
        folder.mkdir(parents=True, exist_ok=True)
        self.descriptor = os.open(folder, os.O_RDONLY)
        try:
            fcntl.flock(self.descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.descriptor)
            raise TunelabError(f"another process is writing {final} ({_writer(folder)}); wait for it to finish or "
                               f"stop it, or choose another --output") from None
        if os.fstat(self.descriptor).st_ino != os.stat(folder).st_ino:  # committed under us: it is a run now
            self.release()
            raise TunelabError(f"another process has just written {final}; choose another --output or pass "
                               f"--overwrite")
        write_json(folder / WRITER_FILE, {"pid": os.getpid(), "host": socket.gethostname(),
                                          "command": " ".join(sys.argv)[:300], "kind": kind})

    def release(self) -> None:
        os.close(self.descriptor)


def _writer(folder: Path) -> str:
    try:
        writer = read_json(folder / WRITER_FILE)
        return f"process {writer['pid']} on {writer['host']}: {writer['command']}"
    except (OSError, ValueError, KeyError):
        return "a process that has not said which"


def _clear(folder: Path) -> None:
    """Empty a staging folder but keep the folder itself: its inode carries the writer's lock."""
    for child in folder.iterdir():
        if child.name == WRITER_FILE:
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def staging_folder(final: Path) -> Path:
    """Where a run bound for `final` is written until it commits."""
    return final.with_name(f".{final.name}.partial")


def discard_interrupted(final: Path) -> None:
    """Throw away what an interrupted run bound for `final` left (its checkpoints), under its writer's lock: a
    run still writing it is refused, not robbed."""
    folder = staging_folder(final)
    if folder.exists():
        lock = _WriterLock(folder, "tunelab run", final)
        try:
            shutil.rmtree(folder)
        finally:
            lock.release()


class StagedRun:
    """A run being written: files go to a hidden staging folder until `commit()`, by one process at a time.

    `resumable` says whether a staging folder holds work worth resuming (a training checkpoint): such a folder is
    kept when the run fails or is interrupted, and found again by the next run; any other leftovers are cleared."""

    def __init__(self, final: Path, overwrite: bool, marker: str = CONFIG_FILE, kind: str = "tunelab run",
                 resumable: Callable[[Path], bool] | None = None):
        """`marker` is the file that identifies a folder this kind of write may replace."""
        if final.exists() and not overwrite:
            raise TunelabError(f"{final} already exists: choose another --output or pass --overwrite")
        if final.exists() and not (final / marker).exists():
            raise TunelabError(f"{final} exists and is not a {kind}; refusing to replace it")
        self.final, self.overwrite, self.kind, self.resumable = final, overwrite, kind, resumable
        self.path = staging_folder(final)
        self.retired = final.with_name(f".{final.name}.replaced")
        self._lock: _WriterLock | None = None

    def __enter__(self) -> StagedRun:
        self._lock = _WriterLock(self.path, self.kind, self.final)
        shutil.rmtree(self.retired, ignore_errors=True)  # an interrupted commit's leftovers
        if not self.resumes():
            _clear(self.path)  # a previous crash's leftovers
        return self

    def resumes(self) -> bool:
        """Whether the staging folder holds work the run can resume."""
        return self.resumable is not None and self.resumable(self.path)

    def clear(self) -> None:
        _clear(self.path)

    def __exit__(self, exc_type: object, error: BaseException | None, *rest: object) -> None:
        try:
            if error is None:
                return
            full = isinstance(error, Exception) and is_disk_full(error, self.path)
            if not self.resumes():
                shutil.rmtree(self.path, ignore_errors=True)
            if full:
                kept = f"; the run so far is kept in {self.path} and resumes" if self.path.exists() else ""
                raise TunelabError(f"the disk is full: writing {self.final} failed; free some space and run the same "
                                   f"command again{kept}") from error
        finally:
            if self._lock is not None:
                self._lock.release()

    def commit(self) -> Path:
        """Rename the staged folder into place, its files fsync'd and listed in its manifest; a run it replaces
        goes only after the new one is in place."""
        if self.final.exists() and not self.overwrite:
            raise TunelabError(f"another process wrote {self.final} while this one ran; choose another --output or "
                               f"pass --overwrite")
        (self.path / WRITER_FILE).unlink(missing_ok=True)
        write_manifest(self.path)
        if self.final.exists():
            os.replace(self.final, self.retired)
        os.replace(self.path, self.final)
        sync_folder(self.final.parent)
        shutil.rmtree(self.retired, ignore_errors=True)
        return self.final


def require_run(path: Path) -> None:
    if not (path / CONFIG_FILE).exists():
        raise TunelabError(f"{path} is not a tunelab run directory (no {CONFIG_FILE}); pass the --output of a "
                           f"finished `tunelab train`")


def read_run_config(path: Path) -> RunConfig:
    """The resolved config a run was trained with."""
    return build_config(read_yaml(path / CONFIG_FILE))
