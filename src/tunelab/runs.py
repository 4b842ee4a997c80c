"""Run directories, and only their files: staged and committed atomically, never overwritten by accident, read back.

A run is built in a hidden sibling folder and renamed into place only when complete, so a crash or a
bad input never leaves a half-written run, and `--overwrite` replaces an old run only at the very end.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import yaml

from tunelab.config import CONFIG_FILE, RunConfig, build_config, read_yaml, to_yaml
from tunelab.errors import TunelabError

METRICS_FILE = "metrics.json"
RESOURCES_FILE = "resources.json"


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Written whole or not at all: a process killed while writing leaves the previous file."""
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(data)
    os.replace(partial, path)


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


CHECKPOINTS = "checkpoints"  # the Trainer's, inside the staged run; removed when the run commits unless kept


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


class StagedRun:
    """A run being written: files go to a hidden staging folder until `commit()`."""

    def __init__(self, final: Path, overwrite: bool, marker: str = CONFIG_FILE, kind: str = "tunelab run"):
        """`marker` is the file that identifies a folder this kind of write may replace."""
        if final.exists() and not overwrite:
            raise TunelabError(f"{final} already exists: choose another --output or pass --overwrite")
        if final.exists() and not (final / marker).exists():
            raise TunelabError(f"{final} exists and is not a {kind}; refusing to replace it")
        self.final = final
        self.path = final.with_name(f".{final.name}.partial")

    def __enter__(self) -> StagedRun:
        shutil.rmtree(self.path, ignore_errors=True)  # a previous crash's leftovers
        self.path.mkdir(parents=True)
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is not None:
            shutil.rmtree(self.path, ignore_errors=True)

    def commit(self) -> Path:
        retired = self.final.with_name(f".{self.final.name}.replaced")
        if self.final.exists():
            os.replace(self.final, retired)
        os.replace(self.path, self.final)
        shutil.rmtree(retired, ignore_errors=True)
        return self.final


def require_run(path: Path) -> None:
    if not (path / CONFIG_FILE).exists():
        raise TunelabError(f"{path} is not a tunelab run directory (no {CONFIG_FILE}); pass the --output of a "
                           f"finished `tunelab train`")


def read_run_config(path: Path) -> RunConfig:
    """The resolved config a run was trained with."""
    return build_config(read_yaml(path / CONFIG_FILE))
