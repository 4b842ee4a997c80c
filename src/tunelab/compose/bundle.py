"""A bundle: several tasks' trained deltas and heads on one base model, in one folder.

Each task is an ordinary run directory copied into `tasks/<name>/` (without its Trainer checkpoints), so every
command that reads a run reads a bundle's task as it is, and a bundle is self-contained: the source runs can be moved
or deleted. `bundle.yaml` names the base model, its fingerprint and the tasks. The runs must share the base: the same
weights, not only the same name, which is what a fingerprint of the base's config and weight files checks.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import yaml

from tunelab.assets.models import base_fingerprint
from tunelab.config import RunConfig
from tunelab.errors import TunelabError
from tunelab.runs import (
    CHECKPOINTS,
    StagedRun,
    read_run_config,
    require_run,
    verify_manifest,
    write_text_atomic,
)

BUNDLE_FILE = "bundle.yaml"
TASKS = "tasks"
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class Bundle:
    path: Path
    model: str  # the base model as the runs name it
    fingerprint: str
    tasks: dict[str, str]  # name -> the task it predicts (classification, regression, ...)
    merge: dict | None = None  # how the tasks' deltas were merged into one (`compose merge`); None: each its own

    def run(self, name: str) -> Path:
        """The run directory of one of the bundle's tasks."""
        if name not in self.tasks:
            raise TunelabError(f"{self.path} has no task '{name}'; its tasks are {', '.join(self.tasks)}")
        return self.path / TASKS / name

    def runs(self) -> list[Path]:
        return [self.run(name) for name in self.tasks]


def is_bundle(path: Path) -> bool:
    return (path / BUNDLE_FILE).exists()


def read_bundle(path: Path | str) -> Bundle:
    path = Path(path)
    if not is_bundle(path):
        raise TunelabError(f"{path} is not a tunelab bundle (no {BUNDLE_FILE}); make one with `tunelab compose "
                           f"bundle RUN... --output {path}`")
    verify_manifest(path)
    stored = yaml.safe_load((path / BUNDLE_FILE).read_text(encoding="utf-8"))
    return Bundle(path, stored["model"], stored["fingerprint"], stored["tasks"], stored.get("merge"))


def task_run(path: Path, task: str | None) -> Path:
    """The run directory a command reads: `path` itself, or the named task of a bundle (which needs one)."""
    if not is_bundle(path):
        if task is not None:
            raise TunelabError(f"--task picks a task of a bundle and {path} is a single run; leave --task out")
        return path
    bundle = read_bundle(path)
    if task is None:
        raise TunelabError(f"{path} is a bundle of {len(bundle.tasks)} tasks: pass --task with one of "
                           f"{', '.join(bundle.tasks)}")
    return bundle.run(task)


def named_runs(sources: list[str]) -> dict[str, Path]:
    """NAME=PATH or PATH (named by its folder) -> the run directory; names unique and usable as folder names."""
    named: dict[str, Path] = {}
    for source in sources:
        name, _, path = source.partition("=") if "=" in source else ("", "", source)
        run = Path(path)
        name = name or run.resolve().name
        if not NAME.match(name):
            raise TunelabError(f"'{name}' cannot name a task (letters, digits, '.', '_' and '-'); pass NAME={path}")
        if name in named:
            raise TunelabError(f"two runs would be named '{name}'; name them apart with NAME=PATH")
        require_run(run)
        named[name] = run
    if not named:
        raise TunelabError("a bundle needs at least one run")
    return named


def shared_base(runs: dict[str, Path], configs: dict[str, RunConfig]) -> tuple[str, str]:
    """(model, fingerprint) of the base model every run was trained on; refused when their weights differ."""
    fingerprints: dict[str, tuple[str, str]] = {}  # model name -> (fingerprint, the first task that used it)
    for name, config in configs.items():
        if config.model not in fingerprints:
            fingerprints[config.model] = (base_fingerprint(config.model), name)
    (model, (fingerprint, first)), *others = fingerprints.items()
    for other, (other_fingerprint, task) in others:
        if other_fingerprint != fingerprint:
            raise TunelabError(f"{runs[task]} was trained on {other} and {runs[first]} on {model}: a bundle holds "
                               f"runs of one base model")
    return model, fingerprint


def write_bundle_file(folder: Path, model: str, fingerprint: str, configs: dict[str, RunConfig],
                      runs: dict[str, Path], merge: dict | None = None) -> Bundle:
    tasks = {name: config.task for name, config in configs.items()}
    record = {"model": model, "fingerprint": fingerprint, "tasks": tasks,
              "sources": {name: str(run.resolve()) for name, run in runs.items()}}
    write_text_atomic(folder / BUNDLE_FILE, yaml.safe_dump(record | ({"merge": merge} if merge else {}),
                                                           sort_keys=False))
    return Bundle(folder, model, fingerprint, tasks, merge)


def make_bundle(sources: list[str], output: Path | str, overwrite: bool = False) -> Bundle:
    """Copy the runs (`NAME=PATH` or `PATH`) into one bundle at `output`, after checking that they share a base."""
    output, runs = Path(output), named_runs(sources)
    configs = {name: read_run_config(run) for name, run in runs.items()}
    model, fingerprint = shared_base(runs, configs)
    with StagedRun(output, overwrite, marker=BUNDLE_FILE, kind="tunelab bundle") as staged:
        for name, run in runs.items():
            shutil.copytree(run, staged.path / TASKS / name, ignore=shutil.ignore_patterns(CHECKPOINTS))
        write_bundle_file(staged.path, model, fingerprint, configs, runs)
        path = staged.commit()
    return read_bundle(path)
