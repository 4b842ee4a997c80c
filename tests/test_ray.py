"""`--executor ray`: a grid's cells and a search's trials as Ray tasks, against a Ray head on 127.0.0.1 that this
module starts (2 CPUs) and stops. The same grid through Ray and locally gives the same metrics exactly; a partial
grid resumes; cancelling leaves nothing training; bad choices are one line."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from rich.console import Console
from test_compare import tunelab
from tiny import tiny_config

from tunelab.compare.executors import ExecutorChoice, Job, open_executor
from tunelab.compare.grid import CELLS
from tunelab.errors import TunelabError
from tunelab.search.run import run_search
from tunelab.search.space import DEFAULT_SPACE
from tunelab.search.study import SearchSpec

pytest.importorskip("ray", reason="ray is not installed: pip install 'tunelab[ray]'")

GRID_CELLS = ["linear-probe-n16-s1", "lora-n16-s1", "linear-probe-n32-s1", "lora-n32-s1"]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module", autouse=True)
def ray_temp() -> Iterator[str]:
    """Ray's files in a folder of this module's (short: Ray's socket paths must fit 107 bytes), removed after it.
    Token authentication off: Ray 2.60 turns it on for a Ray started by `ray.init()` (writing ~/.ray/auth_token)
    and for `ray start` wherever that file exists; so the tests neither write to the home folder nor depend on what
    an earlier session left there."""
    temp = tempfile.mkdtemp(prefix="tl-ray-")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAY_AUTH_MODE", "disabled")
        patch.setenv("RAY_TMPDIR", temp)
        yield temp
    shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def ray_head(ray_temp: str) -> Iterator[str]:
    """`ray start --head --block` on 127.0.0.1 with 2 CPUs; SIGTERM stops it and every process it started."""
    port = _free_port()
    head = subprocess.Popen([str(Path(sys.executable).with_name("ray")), "start", "--head", "--block",
                             "--node-ip-address", "127.0.0.1", "--port", str(port), "--num-cpus", "2",
                             "--include-dashboard", "false", "--disable-usage-stats", "--temp-dir",
                             str(Path(ray_temp) / "head")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while head.poll() is None and time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.5)
        else:
            head.kill()
            pytest.skip(f"ray could not start here: {head.communicate()[0][-500:]}")
        yield f"127.0.0.1:{port}"
    finally:
        head.send_signal(signal.SIGTERM)
        try:
            head.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def grid_args(tmp_path_factory: pytest.TempPathFactory, tiny_bert: Path, sentiment_csv: Path) -> list[str]:
    """Four trained cells and two refused ones (pet: the tiny BERT has no masked-LM head)."""
    return ["compare", "--model", str(tiny_bert), "--data", str(sentiment_csv), "--strategies",
            "linear-probe,lora,pet", "--train-sizes", "16,32", "--seeds", "1", "--seed", "1", "--epochs", "2",
            "--min-steps", "0", "--max-length", "16", "--batch-size", "8", "--quiet"]


def _test_metrics(folder: Path) -> dict[str, dict]:
    return {cell: json.loads((folder / CELLS / cell / "metrics.json").read_text())["test"] for cell in GRID_CELLS}


@pytest.fixture(scope="module")
def grids(grid_args: list[str], ray_head: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple]:
    """The grid locally and through the Ray head, one CPU per cell (two cells at once), each (folder, printed)."""
    folders = {name: tmp_path_factory.mktemp(name) / "grid" for name in ("local", "ray")}
    printed = {"local": tunelab(*grid_args, "--output", str(folders["local"]))}
    printed["ray"] = tunelab(*grid_args, "--output", str(folders["ray"]), "--executor", "ray", "--address", ray_head,
                             "--cpus-per-run", "1")
    for code, text in printed.values():
        assert code == 0, text
    assert f"training on the Ray cluster at {ray_head} (2 CPU): each run asks for 1 CPU; 2 at once" in printed["ray"][1]
    return {name: (folders[name], printed[name][1]) for name in folders}


def test_a_grid_through_ray_equals_the_local_grid_exactly(grids):
    (local, local_printed), (ray, ray_printed) = grids["local"], grids["ray"]
    assert _test_metrics(ray) == _test_metrics(local)
    for printed in (local_printed, ray_printed):  # progress and failures shown the same way
        assert "4 runs trained, 0 already finished, 2 failed" in printed
        assert "failed pet-n16-s1, pet-n32-s1: " in printed and "has no trained masked-LM head" in printed
    curve = "loss_curve"
    assert json.loads((ray / CELLS / "lora-n32-s1" / "metrics.json").read_text())[curve] == \
        json.loads((local / CELLS / "lora-n32-s1" / "metrics.json").read_text())[curve]


def test_a_partial_grid_resumes_through_ray(grids, grid_args, ray_head):
    local, _ = grids["local"]
    ray, _ = grids["ray"]
    shutil.rmtree(ray / CELLS / "lora-n16-s1")
    (ray / CELLS / ".lora-n16-s1.partial").mkdir()  # what a killed run leaves behind
    code, printed = tunelab(*grid_args, "--output", str(ray), "--executor", "ray", "--address", ray_head)
    assert code == 0 and "1 runs trained, 3 already finished, 2 failed" in printed, printed
    assert _test_metrics(ray) == _test_metrics(local)


def test_a_blackbox_cell_through_ray_equals_the_local_one(ray_head: str, tiny_llama_lm: Path, sentiment_csv: Path,
                                                          tmp_path: Path):
    """A black-box cell is a `tunelab blackbox` process on a Ray node as it is here: the same search, calls and
    accuracy."""
    args = ["compare", "--model", str(tiny_llama_lm), "--data", str(sentiment_csv), "--strategies", "blackbox:search",
            "--train-sizes", "8", "--seeds", "1", "--blackbox-budget", "12", "--quiet"]
    where = {"local": [], "ray": ["--executor", "ray", "--address", ray_head, "--cpus-per-run", "1"]}
    for name, flags in where.items():
        code, printed = tunelab(*args, "--output", str(tmp_path / name), *flags)
        assert code == 0 and "1 runs trained, 0 already finished, 0 failed" in printed, printed
    ran = {name: [json.loads((tmp_path / name / CELLS / "blackbox-search-n8-s42" / file).read_text())
                  for file in ("metrics.json", "resources.json")] for name in where}
    assert ran["ray"][0]["curve"] == ran["local"][0]["curve"] and ran["ray"][0]["test"] == ran["local"][0]["test"]
    assert ran["ray"][1]["search"]["calls"] == ran["local"][1]["search"]["calls"] <= 12


def test_a_search_through_a_local_ray_equals_the_local_search(tiny_bert: Path, sentiment_csv: Path, tmp_path: Path):
    """Without --address a Ray starts on this machine's cores (and stops with the search)."""
    base = tiny_config(tiny_bert, sentiment_csv, None, "lora").model_dump(mode="json", exclude={"strategy", "output"})
    spec = SearchSpec(base=base, space={"lora": DEFAULT_SPACE["lora"]}, trials=2, eta=1, seed=0, reevaluate_seeds=[],
                      hand_defaults=[])
    results = {name: run_search(tmp_path / name, spec, Console(quiet=True), progress=False, executor=choice).result
               for name, choice in (("local", ExecutorChoice()), ("ray", ExecutorChoice("ray", cpus=1)))}
    ray, local = ([(trial["plan"], trial["values"]) for trial in results[name]["search_trials"]]
                  for name in ("ray", "local"))
    assert len(ray) == 2 and ray == local


def test_cancelling_leaves_nothing_training(ray_head: str, tiny_bert: Path, sentiment_csv: Path, tmp_path: Path):
    """Leaving the executor (Ctrl-C, an error) cancels its tasks: the run's process dies with the task's worker."""
    config = tiny_config(tiny_bert, sentiment_csv, tmp_path / "run", "lora")
    config.training.epochs = 500
    job = Job(config, tmp_path / "run.yaml", tmp_path / "run.log")
    with open_executor(ExecutorChoice("ray", ray_head, cpus=1)) as executor:
        future = executor.submit(job)
        while not _holding(job.log) and not future.done():
            time.sleep(0.2)
        assert not future.done(), job.log.read_text()
    deadline = time.monotonic() + 20
    while _holding(job.log) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _holding(job.log) and not (tmp_path / "run").exists()


def _holding(log: Path) -> list[int]:
    """The processes that have `log` open: a run's process writes its output there."""
    holders = []
    for process in psutil.process_iter():
        try:
            if any(opened.path == str(log) for opened in process.open_files()):
                holders.append(process.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return holders


@pytest.mark.parametrize(("args", "message"), [
    (["--address", "127.0.0.1:6379"], "--address is for --executor ray"),
    (["--cpus-per-run", "2"], "--cpus-per-run is for --executor ray"),
    (["--executor", "slurm"], "--executor 'slurm' is not one of local, ray"),
    (["--executor", "ray", "--address", "nowhere"], "--address 'nowhere' is not HOST:PORT"),
])
def test_bad_executor_choices_are_one_line_before_anything_is_written(grid_args, tmp_path: Path, args, message):
    code, printed = tunelab(*grid_args, "--output", str(tmp_path / "grid"), *args)
    assert code == 2 and f"error: {message}" in printed and "Traceback" not in printed
    assert not (tmp_path / "grid").exists()


def test_search_takes_the_same_executor_choices(tmp_path: Path):
    code, printed = tunelab("search", "--output", str(tmp_path / "search"), "--address", "127.0.0.1:6379")
    assert code == 2 and "error: --address is for --executor ray" in printed
    assert not (tmp_path / "search").exists()


def test_an_unreachable_cluster_is_one_line(grid_args, tmp_path: Path):
    code, printed = tunelab(*grid_args, "--output", str(tmp_path / "grid"), "--executor", "ray", "--address",
                            f"127.0.0.1:{_free_port()}")
    assert code == 2 and "cannot reach the Ray cluster at 127.0.0.1:" in printed and "ray start --head" in printed
    assert not (tmp_path / "grid").exists()


def test_a_request_no_node_meets_is_refused(grid_args, ray_head: str, tmp_path: Path):
    import ray

    code, printed = tunelab(*grid_args, "--output", str(tmp_path / "grid"), "--executor", "ray", "--address",
                            ray_head, "--cpus-per-run", "64")
    assert code == 2 and "has 64 CPU for one run; lower --cpus-per-run" in printed, printed
    assert not (tmp_path / "grid").exists()
    assert not ray.is_initialized()  # disconnected on the way out


def test_ray_not_installed_is_one_line(monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None if name == "ray" else
                        find_spec(name, *args))
    with pytest.raises(TunelabError, match=r"needs ray, which is not installed: pip install 'tunelab\[ray\]'"):
        ExecutorChoice("ray")
