"""The configuration search: its space, objectives, successive halving and dominance as arithmetic; then searches on
the tiny BERT: two workers, a kill -9 mid-trial and the resume, `train --from-search`, the report, bad input."""

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

import optuna
import psutil
import pytest
import yaml
from tiny import run_main, tiny_config

from tunelab.errors import TunelabError
from tunelab.search.fidelity import low_rows, promoted
from tunelab.search.objectives import Objective, dominates, pareto_front, parse_objectives
from tunelab.search.reevaluate import dominance
from tunelab.search.run import folder_lock, run_search
from tunelab.search.space import DEFAULT_SPACE, read_space, suggest
from tunelab.search.study import INTERRUPTED, SearchSpec, open_storage, open_study
from tunelab.strategies.catalog import entry

ACCURACY, PARAMS = Objective("accuracy"), Objective("trainable-params")


def _plans(space: dict, trials: int, depth: int = 4) -> list:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    plans = []
    for _ in range(trials):
        trial = study.ask()
        plans.append((suggest(trial, space, depth), trial.params))
        study.tell(trial, 0.0)
    return plans


def test_the_space_samples_only_the_chosen_family_and_conditions():
    for plan, params in _plans(read_space(None), 60):
        assert {name.split(".")[0] for name in params if name != "family"} == {plan.strategy}
        assert ("adapter.scaling" in params) == (plan.options.get("variant") == "parallel")
        if "layers" in plan.options:  # a subset of the blocks, never empty, never all of them (that is the default)
            assert 0 < len(plan.options["layers"]) < 4
        if plan.strategy == "adalora":
            assert plan.options["target_r"] <= plan.options["init_r"]
        default = entry(plan.strategy).learning_rate  # the learning rate ranges around the strategy's own
        assert default / 5 <= plan.learning_rate <= default * 5


def test_a_yaml_space_narrows_and_extends(tmp_path: Path):
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump({"families": ["lora"], "lora": {"r": [4], "dropout": [0.0, 0.1],
                                                                   "learning_rate": [0.01]}}))
    space = read_space(path)
    assert list(space) == ["lora"] and space["lora"]["r"] == [4] and space["lora"]["layers"] == "per-layer"
    for plan, _ in _plans(space, 10):
        assert plan.strategy == "lora" and plan.options["r"] == 4 and plan.options["dropout"] in (0.0, 0.1)
        assert plan.learning_rate == 0.01


@pytest.mark.parametrize(("content", "message"), [
    ({"families": ["full"]}, "full is not a parameter-efficient strategy the search can vary"),
    ({"lora": {"rank": [4]}}, "lora has no option 'rank'"),
    ({"lora": {"r": []}}, "lora.r: give at least one choice"),
    ({"lora": {"alpha": {"low": 8, "high": 4}}}, "lora.alpha: low must be below high"),
    ({"families": ["lora-typo"]}, "unknown strategy 'lora-typo'"),
])
def test_a_bad_space_is_one_line(tmp_path: Path, content: dict, message: str):
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(content))
    with pytest.raises(TunelabError, match=message):
        read_space(path)


def test_objectives_parse_and_pareto_arithmetic():
    assert [objective.direction for objective in parse_objectives("accuracy,trainable-params,latency")] == \
        ["maximize", "minimize", "minimize"]
    for bad in ("trainable-params", "accuracy,macro-f1", "accuracy,accuracy"):
        with pytest.raises(TunelabError):
            parse_objectives(bad)
    objectives = [ACCURACY, PARAMS]
    assert dominates([0.9, 100], [0.8, 200], objectives) and not dominates([0.9, 300], [0.8, 200], objectives)
    assert not dominates([0.9, 100], [0.9, 100], objectives)
    points = {"a": [0.90, 1000], "b": [0.85, 100], "c": [0.84, 500], "d": [0.80, 10]}
    assert pareto_front(points, objectives) == ["a", "b", "d"]


def test_successive_halving_promotes_the_top_third_and_the_front():
    objectives = [ACCURACY, PARAMS]
    rung = {0: [0.80, 100], 1: [0.70, 100], 2: [0.75, 100], 3: [0.60, 10], 4: [0.65, 100], 5: [0.72, 100]}
    assert [key for key in rung if promoted(key, rung, objectives, 3)] == [0, 2, 3]  # the best two of six; the cheapest
    assert promoted(0, {0: [0.5, 1]}, objectives, 3)  # the first trial always goes on
    assert low_rows(1000, 3) == 333 and low_rows(12, 3) == 8


def test_dominance_needs_a_margin_beyond_seed_noise():
    def row(name, mean, sd, params, default=False):
        return {"name": name, "test_mean": mean, "test_sd": sd, "seeds": 3, "trainable-params": params,
                "hand_default": default}

    rows = [row("default-lora", 0.850, 0.01, 1000, True), row("cheaper-same", 0.845, 0.01, 500),
            row("cheaper-worse", 0.800, 0.01, 500), row("better-bigger", 0.900, 0.01, 2000),
            row("better-same-size", 0.880, 0.01, 1000)]
    # 2 * sqrt(0.01^2 / 3 * 2) = 0.0163: 0.845 is within it, 0.800 is not, 0.880 beats it by more
    assert dominance(rows) == {"default-lora": ["cheaper-same", "better-same-size"]}


@pytest.fixture
def search_spec(tiny_bert: Path, sentiment_csv: Path) -> SearchSpec:
    base = tiny_config(tiny_bert, sentiment_csv, None, "lora").model_dump(mode="json", exclude={"strategy", "output"})
    space = {family: DEFAULT_SPACE[family] for family in ("lora", "ia3", "adapter")}
    return SearchSpec(base=base, space=space, trials=8, eta=3, seed=0, reevaluate_seeds=[1], hand_defaults=["lora"])


def test_two_workers_finish_every_trial_once(search_spec: SearchSpec, tmp_path: Path, capsys):
    from rich.console import Console

    folder = tmp_path / "search"
    result = run_search(folder, search_spec, Console(), workers=2, progress=False).result
    trials = result["search_trials"]
    assert len(trials) == 8 and sorted(trial["number"] for trial in trials) == list(range(8))
    assert len({trial["name"] for trial in trials}) == 8
    assert result["trials"]["complete"] + result["trials"]["pruned"] == 8 and result["interrupted"] == 0
    for trial in trials:  # every trial trained its low rung; only the finished ones the full rows
        assert (folder / "trials" / f"{trial['name']}-n20" / "metrics.json").exists()
        full = folder / "trials" / f"{trial['name']}-n60"
        assert (full / "metrics.json").exists() == (trial["state"] == "complete")
        if trial["state"] == "complete":  # the quality is the kept epoch's validation accuracy, not the test's
            validation = json.loads((full / "metrics.json").read_text())["validation"]
            assert trial["values"][0] == validation["accuracy"] and validation["epoch"] > 0
    assert result["pareto"] and {row["name"] for row in result["evaluated"]} == {*result["pareto"], "default-lora"}
    assert set(result["dominates"]) == {"default-lora"}
    study = open_study(open_storage(folder, None), search_spec)
    assert study.user_attrs["sampler"].startswith("TPE")

    # the report, and a trial trained again on its own
    code, out, _ = run_main(["report", str(folder)], pytest.MonkeyPatch(), capsys)
    assert code == 0 and "default-lora" in out and (folder / "report.html").exists()
    assert "<svg" in (folder / "report.html").read_text()
    best = result["pareto"][0]
    code, _, err = run_main(["train", "--from-search", str(folder), "--trial", str(int(best[1:])), "--output",
                             str(tmp_path / "best"), "--quiet"], pytest.MonkeyPatch(), capsys)
    assert code == 0, err
    trained = yaml.safe_load((tmp_path / "best" / "config.yaml").read_text())
    searched = yaml.safe_load((folder / "trials" / f"{best}-n60" / "config.yaml").read_text())
    assert {key: value for key, value in trained.items() if key != "output"} == \
        {key: value for key, value in searched.items() if key != "output"}


def test_a_running_search_locks_its_folder(tmp_path: Path):
    with folder_lock(tmp_path), pytest.raises(TunelabError, match="another tunelab search is running"), \
            folder_lock(tmp_path):
        pass


def _search_command(spec: SearchSpec, folder: Path, space: Path) -> list[str]:
    base = spec.base
    return [sys.executable, "-m", "tunelab", "search", "--model", base["model"], "--data", base["data"]["source"],
            "--trials", "5", "--workers", "1", "--seeds", "1", "--defaults", "lora", "--seed", "0", "--space",
            str(space), "--output", str(folder), "--quiet",
            *[f"--set=training.{key}={value}" for key, value in base["training"].items()
              if key in ("max_length", "batch_size", "eval_batch_size", "epochs", "learning_rate")]]


def test_kill_9_mid_trial_resumes_without_losing_a_trial(search_spec: SearchSpec, tmp_path: Path):
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"families": ["lora", "ia3"]}))
    folder = tmp_path / "search"
    command = _search_command(search_spec, folder, space)
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    journal, deadline = folder / "study.journal", time.monotonic() + 120
    before: dict[int, tuple] = {}
    while time.monotonic() < deadline:  # wait for a finished trial and a running one
        time.sleep(0.3)
        if journal.exists():
            study = optuna.load_study(study_name="tunelab-search", storage=open_storage(folder, None))
            states = {trial.number: trial.state for trial in study.get_trials()}
            running = [number for number, state in states.items() if state == optuna.trial.TrialState.RUNNING]
            if running and any(state.is_finished() for state in states.values()) and \
                    list((folder / "trials").glob(".*.partial")):
                before = {trial.number: (trial.state, trial.values) for trial in study.get_trials()
                          if trial.state.is_finished()}
                break
    assert before, "the search never reached a running trial after a finished one"
    children = psutil.Process(process.pid).children(recursive=True)
    assert children  # the fork server and the trial's training process
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    _, alive = psutil.wait_procs(children, timeout=10)
    assert not alive  # nothing of the killed search goes on training and writing

    resumed = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "were interrupted and run again" in resumed.stdout
    study = optuna.load_study(study_name="tunelab-search", storage=open_storage(folder, None))
    trials = study.get_trials()
    for number, (state, values) in before.items():  # finished trials are kept as they were
        assert trials[number].state == state and trials[number].values == values
    counted = [trial for trial in trials if trial.state.is_finished() and not trial.user_attrs.get(INTERRUPTED)]
    assert len([trial for trial in counted if trial.state != optuna.trial.TrialState.FAIL]) == 5
    interrupted = [trial for trial in trials if trial.user_attrs.get(INTERRUPTED)]
    assert interrupted and all(trial.state == optuna.trial.TrialState.FAIL for trial in interrupted)
    for trial in interrupted:  # each ran again with its parameters, under its first attempt's name, and finished
        again = [other for other in counted if other.user_attrs.get("name") == trial.user_attrs.get("name")]
        assert len(again) == 1 and again[0].params == trial.params
    assert not list((folder / "trials").glob(".*.partial"))  # the interrupted run's staging was replaced


@pytest.mark.parametrize(("args", "message"), [
    (["--storage", "sqlite:///x.db"], "SQLite locks up under parallel workers"),
    (["--objectives", "trainable-params"], "--objectives takes one validation metric"),
    (["--defaults", "full-typo"], "unknown strategy 'full-typo'"),
    (["--text-column", "review"], "review"),
])
def test_bad_search_input_is_one_line(args: list[str], message: str, tiny_bert: Path, sentiment_csv: Path,
                                      tmp_path: Path, monkeypatch, capsys):
    code, _, err = run_main(["search", "--model", str(tiny_bert), "--data", str(sentiment_csv), "--trials", "2",
                             "--output", str(tmp_path / "s"), *args], monkeypatch, capsys)
    assert code == 2 and message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "s").exists()  # refused before the search folder is made


def test_from_search_input_errors(tmp_path: Path, monkeypatch, capsys):
    code, _, err = run_main(["train", "--trial", "3", "--output", str(tmp_path / "x")], monkeypatch, capsys)
    assert code == 2 and "--trial names a trial of a search" in err
    code, _, err = run_main(["report", str(tmp_path)], monkeypatch, capsys)
    assert code == 2 and "not a tunelab compare grid" in err


def _postgres_binaries() -> Path | None:
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    return versions[-1].parent if versions else None


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A PostgreSQL server of its own on a free loopback port (Debian's postgresql), stopped afterwards."""
    binaries = _postgres_binaries()
    if binaries is None:
        pytest.skip("no PostgreSQL server here (Debian: apt-get install postgresql)")
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    data = Path(tempfile.mkdtemp(prefix="tunelab-pg-"))
    if as_postgres:  # initdb refuses to run as root
        shutil.chown(data, "postgres")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    def pg(tool: str, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*as_postgres, str(binaries / tool), *args], capture_output=True, text=True,
                              timeout=120)

    started = pg("initdb", "-D", str(data / "db"), "-U", "postgres", "--auth=trust")
    if started.returncode == 0:
        started = pg("pg_ctl", "-D", str(data / "db"), "-w", "-l", str(data / "log"), "-o",
                     f"-p {port} -k {data} -c listen_addresses=127.0.0.1", "start")
    if started.returncode != 0:
        shutil.rmtree(data, ignore_errors=True)
        pytest.skip(f"PostgreSQL could not start here: {(started.stderr or started.stdout).strip()[-300:]}")
    try:
        assert pg("createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "tunelab").returncode == 0
        yield f"postgresql://postgres@127.0.0.1:{port}/tunelab"
    finally:
        pg("pg_ctl", "-D", str(data / "db"), "-m", "immediate", "stop")
        shutil.rmtree(data, ignore_errors=True)


def test_two_machines_share_one_study_in_postgresql(postgres_url: str, search_spec: SearchSpec, tmp_path: Path):
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"families": ["lora", "ia3"]}))
    commands = [[*_search_command(search_spec, tmp_path / f"machine-{index}", space), "--storage", postgres_url,
                 "--seeds", "", "--defaults", ""] for index in (1, 2)]
    workers = [subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
               for command in commands]
    for worker in workers:
        assert worker.wait(timeout=600) == 0, worker.stderr.read()[-3000:]
    study = optuna.load_study(study_name="tunelab-search", storage=postgres_url)
    finished = [trial for trial in study.get_trials() if trial.state.is_finished()]
    # 5 trials asked for; each machine checks the count before asking, so the two may overshoot by one together
    assert 5 <= len(finished) <= 6 and len({trial.number for trial in finished}) == len(finished)
    assert len({trial.user_attrs["worker"] for trial in finished}) == 2  # both machines trained trials
    names = {path.name for index in (1, 2) for path in (tmp_path / f"machine-{index}" / "trials").iterdir()}
    assert {trial.user_attrs["name"] for trial in finished} <= {name.split("-n")[0] for name in names}
