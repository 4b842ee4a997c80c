"""`tunelab compare` and `tunelab report`: the grid's plan and budget, resuming, failures, the summary over seeds,
the claims' verdicts on hand-made numbers, and the HTML page as a browser renders it."""

from __future__ import annotations

import io
import json
import math
import re
import shutil
import sys
from concurrent.futures import Future
from contextlib import nullcontext, redirect_stderr, redirect_stdout
from pathlib import Path

import pandas as pd
import pytest
from rich.console import Console
from tiny import open_in_chromium

from tunelab.compare import executors, grid
from tunelab.compare.claims import NOISE_FLOOR, check_claims, noise
from tunelab.compare.executors import Job, train_in_process
from tunelab.compare.grid import (
    CELLS,
    GRID_FILE,
    Cell,
    GridSpec,
    cell_config,
    cell_epochs,
    cell_job,
    plan,
    run_grid,
)
from tunelab.compare.page import REPORT_FILE, summary_rows
from tunelab.compare.results import CELL_COLUMNS, load_grid, summarise
from tunelab.errors import TunelabError

QUIET = Console(quiet=True)


# --- plan and budget -------------------------------------------------------------------------------------------


def test_plan_is_seed_major_and_names_every_cell():
    spec = GridSpec(strategies=["full", "lora"], train_sizes=[64, 512], seeds=[1, 2])
    cells = plan(spec)
    assert [cell.name for cell in cells[:4]] == ["full-n64-s1", "lora-n64-s1", "full-n512-s1", "lora-n512-s1"]
    assert len(cells) == 8 and cells[4].seed == 2


@pytest.mark.parametrize(("strategy", "size", "epochs", "min_steps", "expected"), [
    ("full", 512, None, 50, 4.0),  # 16 steps an epoch: 3 default epochs make 48 < 50 steps
    ("full", 2000, None, 50, 3.0),  # 63 steps an epoch: the default stands
    ("full", 64, None, 50, 25.0),  # 2 steps an epoch
    ("linear-probe", 64, None, 50, 30.0),  # its own default is already more
    ("lora", 64, 5, 0, 5.0),  # the grid's epochs, no minimum
])
def test_cell_epochs_reach_the_minimum_steps(strategy, size, epochs, min_steps, expected):
    spec = GridSpec(strategies=[strategy], train_sizes=[size], seeds=[1], epochs=epochs, min_steps=min_steps)
    assert cell_epochs(spec, Cell(strategy, size, 1), batch_size=32) == expected


def test_cell_config_sets_size_validation_cap_seed_and_output(tmp_path: Path):
    spec = GridSpec(base={"training": {"batch_size": 16}}, strategies=["lora"], train_sizes=[64], seeds=[7],
                    min_steps=40)
    config = cell_config(spec, Cell("lora", 64, 7), tmp_path)
    assert (config.strategy.name, config.data.limit_train, config.data.limit_validation) == ("lora", 64, 64)
    assert config.training.seed == 7 and config.training.epochs == 10.0  # 4 steps an epoch at batch 16
    assert config.output == tmp_path / CELLS / "lora-n64-s7"


def test_a_zero_shot_cell_has_no_epochs_to_budget(tmp_path: Path):
    spec = GridSpec(strategies=["zero-shot"], train_sizes=[64], seeds=[1], min_steps=50)
    assert cell_config(spec, Cell("zero-shot", 64, 1), tmp_path).training.epochs is None


@pytest.mark.parametrize(("changes", "message"), [
    ({"strategies": ["lora-typo"]}, "unknown strategy 'lora-typo'"),
    ({"train_sizes": []}, "compare: no train sizes given"),
    ({"train_sizes": [0, 64]}, "--train-sizes must be positive"),
    ({"base": {"task": "generation"}}, "compare measures classification grids"),
])
def test_bad_grids_fail_before_anything_is_written(tmp_path: Path, changes: dict, message: str):
    with pytest.raises(TunelabError, match=re.escape(message)):
        run_grid(tmp_path / "grid", GridSpec(**{"strategies": ["full"], "train_sizes": [64], "seeds": [1],
                                                **changes}), QUIET)
    assert not (tmp_path / "grid").exists()


def test_a_folder_that_is_not_a_grid_is_refused(tmp_path: Path):
    (tmp_path / "notes.txt").write_text("mine", encoding="utf-8")
    with pytest.raises(TunelabError, match="exists and is not a tunelab compare grid"):
        run_grid(tmp_path, GridSpec(strategies=["full"], train_sizes=[64], seeds=[1]), QUIET)
    assert [path.name for path in tmp_path.iterdir()] == ["notes.txt"]


@pytest.mark.parametrize(("exit_code", "attempts"), [(2, ["full-n8-s1", "lora-n8-s1"]),  # refused: once each
                                                     (1, ["full-n8-s1", "lora-n8-s1", "full-n16-s1", "lora-n16-s1"])])
def test_a_refused_strategy_is_tried_once_a_crash_costs_only_its_cell(tmp_path: Path, monkeypatch, exit_code: int,
                                                                        attempts: list[str]):
    tried = []

    class Failing:
        def capacity(self) -> int:
            return 1

        def describe(self) -> str:
            return ""

        def submit(self, job: Job) -> Future:
            tried.append(Path(job.config.output).name)
            future = Future()
            future.set_result((exit_code, f"reason {exit_code}"))
            return future

    monkeypatch.setattr(grid, "open_executor", lambda choice: nullcontext(Failing()))
    spec = GridSpec(strategies=["full", "lora"], train_sizes=[8, 16], seeds=[1])
    outcome = run_grid(tmp_path / "grid", spec, QUIET, progress=False)
    assert tried == attempts
    assert outcome.failed == {cell.name: f"reason {exit_code}" for cell in plan(spec)}
    assert json.loads((tmp_path / "grid" / "failures.json").read_text()) == outcome.failed


def test_an_interrupted_grid_says_how_to_resume(tmp_path: Path, monkeypatch):
    def interrupt(*args) -> tuple[int, str]:
        raise KeyboardInterrupt

    monkeypatch.setattr(executors, "train_in_process", interrupt)
    with pytest.raises(TunelabError, match="interrupted with 0 of 2 cells finished; run the same command again"):
        run_grid(tmp_path / "grid", GridSpec(strategies=["full"], train_sizes=[8, 16], seeds=[1]), QUIET)


# --- a real grid on the tiny model -----------------------------------------------------------------------------


def tunelab(*args: str) -> tuple[int, str]:
    """`tunelab ARGS...` in-process through the console script's entry point: (exit code, all it printed)."""
    from tunelab import cli

    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, redirect_stdout(printed), redirect_stderr(printed):
        patch.setattr(sys, "argv", ["tunelab", *args])
        with pytest.raises(SystemExit) as exited:
            cli.main()
    return exited.value.code or 0, " ".join(printed.getvalue().split())


@pytest.fixture(scope="module")
def grid_args(tmp_path_factory: pytest.TempPathFactory, tiny_bert: Path, sentiment_csv: Path) -> list[str]:
    folder = tmp_path_factory.mktemp("compare") / "grid"
    return ["compare", "--model", str(tiny_bert), "--data", str(sentiment_csv), "--strategies", "linear-probe,lora,pet",
            "--train-sizes", "16,32", "--seeds", "1", "--seed", "1", "--epochs", "2", "--min-steps", "0",
            "--max-length", "16", "--batch-size", "8", "--output", str(folder), "--quiet"]


def test_a_cell_runs_in_its_own_process_with_the_grids_environment_as_it_is_now(tmp_path: Path, tiny_bert: Path,
                                                                                 monkeypatch):
    """The fork server keeps the environment it started with; a cell gets the grid's current one (here: where
    the embedded data is cached), and a refused cell's one-line reason comes back from its log."""
    folder = tmp_path / "grid"
    base = {"model": str(tiny_bert), "data": {"source": "tweets3", "limit_eval": 16},
            "training": {"epochs": 1, "max_length": 16, "batch_size": 8, "min_steps": 0}}
    spec = GridSpec(base=base, strategies=["lora", "pet"], train_sizes=[16], seeds=[1])
    grid.prepare_folder(folder, spec)
    monkeypatch.setenv("TUNELAB_HOME", str(tmp_path / "first"))
    code, reason = train_in_process(cell_job(folder, spec, Cell("pet", 16, 1)))  # starts the server if none runs yet
    assert code == 2 and "has no trained masked-LM head" in reason and "\n" not in reason
    monkeypatch.setenv("TUNELAB_HOME", str(tmp_path / "second"))
    assert train_in_process(cell_job(folder, spec, Cell("lora", 16, 1))) == (0, "")
    assert (folder / CELLS / "lora-n16-s1" / "metrics.json").exists()
    assert list((tmp_path / "second" / "data").iterdir())  # tweets3 was cached where the grid's environment says


@pytest.fixture(scope="module")
def tiny_grid(grid_args: list[str]) -> tuple[Path, str]:
    code, printed = tunelab(*grid_args)
    assert code == 0, printed
    return Path(grid_args[grid_args.index("--output") + 1]), printed


def test_grid_trains_every_cell_as_a_run_and_reports_refused_ones(tiny_grid):
    folder, printed = tiny_grid
    assert "4 runs trained, 0 already finished, 2 failed" in printed
    assert "failed pet-n16-s1, pet-n32-s1: " in printed and "has no trained masked-LM head" in printed
    assert not (folder / CELLS / "pet-n16-s1").exists()
    results = load_grid(folder)
    assert len(results.cells) == 4 and results.planned == 6
    assert results.cells.set_index(["strategy", "train_size"])["train_examples"].to_dict() == {
        ("linear-probe", 16): 16, ("lora", 16): 16, ("linear-probe", 32): 32, ("lora", 32): 32}
    assert set(results.failures) == {"pet-n16-s1", "pet-n32-s1"}
    assert f"report: {folder / REPORT_FILE}" in printed and "the article's claims, measured" in printed


def test_grid_resumes_only_what_is_missing_and_refuses_other_settings(tiny_grid, grid_args):
    folder, _ = tiny_grid
    shutil.rmtree(folder / CELLS / "lora-n32-s1")
    (folder / CELLS / ".linear-probe-n99-s1.partial").mkdir()  # what a killed run leaves behind
    code, printed = tunelab(*grid_args)
    assert code == 0 and "1 runs trained, 3 already finished, 2 failed" in printed
    code, printed = tunelab(*grid_args, "--seeds", "2", "--train-sizes", "16")
    assert code == 2 and "holds a grid with other train sizes, seeds; repeat its settings" in printed
    assert "seeds:\n- 1\n" in (folder / GRID_FILE).read_text(encoding="utf-8")  # untouched


def test_recommend_from_a_grid_uses_what_it_measured(tiny_grid):
    folder, _ = tiny_grid
    code, printed = tunelab("recommend", "--from", str(folder))
    assert code == 0, printed
    assert re.search(r"measured with \S+tiny-bert\S* at 32 labels: accuracy", printed)  # the grid's largest size
    assert re.search(r"best measured accuracy at 32 labels", printed)


def test_a_grid_of_two_models_runs_the_prompt_based_strategies_on_the_prompt_model(tmp_path: Path, tiny_bert: Path,
                                                                                     tiny_llama_lm: Path,
                                                                                     sentiment_csv: Path):
    folder = tmp_path / "two"
    code, printed = tunelab("compare", "--model", str(tiny_bert), "--prompt-model", str(tiny_llama_lm), "--data",
                            str(sentiment_csv), "--strategies", "full,zero-shot,pet", "--train-sizes", "16",
                            "--seeds", "1", "--epochs", "1", "--min-steps", "0", "--max-length", "16",
                            "--batch-size", "8", "--output", str(folder), "--quiet")
    assert code == 0 and "0 failed" in printed, printed
    results = load_grid(folder)
    models = dict(zip(results.cells["strategy"], results.cells["model"], strict=True))
    assert models == {"full": str(tiny_bert), "zero-shot": str(tiny_llama_lm), "pet": str(tiny_llama_lm)}
    labels = [row[0] for row in summary_rows(summarise(results.cells))]
    # rows name their model in a grid of two
    assert labels == [f"full ({tiny_bert})", f"zero-shot ({tiny_llama_lm})", f"pet ({tiny_llama_lm})"]
    verdicts = {claim.statement: (claim.verdict, claim.evidence) for claim in check_claims(summarise(results.cells))}
    verdict, evidence = verdicts["in the smallest data regime, parameter-efficient and prompt-based strategies hold "
                                 "up better than full"]
    assert verdict == "not measured" and "not the same model" in evidence
    from tunelab.compare.advisor import Situation, recommend

    advice = {entry.strategy: entry for entry in recommend(Situation(samples=16, memory_gb=8),
                                                           summarise(results.cells))}
    assert advice["pet"].trade_off.startswith(f"measured with {tiny_llama_lm} at 16 labels")
    code, printed = tunelab("recommend", "--from", str(folder))  # the grid's base model has no LM head
    assert code == 0, printed
    assert "no: pet reads the LM head" not in printed
    assert f"tunelab train --model {tiny_llama_lm} --data {sentiment_csv} --strategy pet" in printed.replace("\n", "")


# --- summary and claims on hand-made numbers -------------------------------------------------------------------


def _cells(accuracies: dict[tuple[str, int], list[float]]) -> pd.DataFrame:
    families = {"full": "full", "linear-probe": "feature extraction", "lora": "parameter-efficient",
                "adapter": "parameter-efficient", "pet": "prompt-based"}
    rows = [{"strategy": strategy, "model": "minilm", "family": families[strategy], "train_size": size, "seed": seed,
             "train_examples": size, "accuracy": accuracy, "macro_f1": accuracy, "trainable_parameters": 1000,
             "trainable_share": 0.01, "train_s": 10.0 + seed, "peak_memory_bytes": 2**30, "delta_bytes": 4096,
             "full_copy_bytes": 2**20, "latency_ms": 5.0, "learned": accuracy > 0.5}
            for (strategy, size), values in accuracies.items() for seed, accuracy in enumerate(values)]
    return pd.DataFrame(rows, columns=list(CELL_COLUMNS))  # a trained cell made no black-box calls


def test_the_summary_counts_the_runs_that_did_not_learn():
    from tunelab.compare.page import summary_rows

    rows = summary_rows(summarise(_cells({("full", 64): [0.5, 0.7, 0.8], ("lora", 64): [0.75]})))
    assert [row[2] for row in rows] == ["3 (1 did not learn)", "1"]


def test_summary_gives_mean_and_sample_std_over_seeds():
    summary = summarise(_cells({("full", 64): [0.6, 0.7, 0.8], ("lora", 64): [0.75]}))
    full = summary[summary["strategy"] == "full"].iloc[0]
    assert full["seeds"] == 3 and full["accuracy_mean"] == pytest.approx(0.7)
    assert full["accuracy_std"] == pytest.approx(0.1)  # sample std (n - 1)
    assert full["train_s_mean"] == pytest.approx(11.0)
    assert math.isnan(summary[summary["strategy"] == "lora"].iloc[0]["accuracy_std"])


def test_noise_is_two_standard_errors_with_three_seeds_else_the_floor():
    summary = summarise(_cells({("full", 64): [0.6, 0.7, 0.8], ("lora", 64): [0.7, 0.7, 0.7], ("pet", 64): [0.7]}))
    full, lora, pet = (summary[summary["strategy"] == name].iloc[0] for name in ("full", "lora", "pet"))
    assert noise(full, lora) == pytest.approx(2 * math.sqrt(0.01 / 3))
    assert noise(full, pet) == NOISE_FLOOR


def test_claims_verdicts():
    summary = summarise(_cells({
        ("full", 64): [0.60, 0.61, 0.62], ("linear-probe", 64): [0.70, 0.70, 0.71], ("lora", 64): [0.61, 0.60, 0.62],
        ("pet", 64): [0.80, 0.81, 0.79],
        ("full", 2000): [0.85, 0.85, 0.86], ("linear-probe", 2000): [0.77, 0.78, 0.78],
        ("lora", 2000): [0.85, 0.86, 0.85], ("adapter", 2000): [0.80, 0.80, 0.81],
    }))
    verdicts = {(claim.statement.split(" ")[0], claim.train_size, claim.evidence.split(" ")[0]): claim.verdict
                for claim in check_claims(summary)}
    assert verdicts[("fine-tuning", 64, "full")] == "does not hold"
    assert verdicts[("fine-tuning", 2000, "full")] == "holds"
    assert verdicts[("lora", 2000, "lora")] == "holds"
    assert verdicts[("adapter", 2000, "adapter")] == "does not hold"  # 5 points below full
    assert verdicts[("in", 64, "pet")] == "holds"
    assert verdicts[("in", 64, "lora")] == "within noise"


@pytest.mark.parametrize(("lora", "verdict"), [
    (0.835, "holds"),  # 1.5 points below: within the claim's 2
    (0.825, "within noise"),  # 2.5 points below, but one seed cannot tell 0.5 points apart
    (0.79, "does not hold"),  # 6 points below
])
def test_within_two_points_of_full_is_a_bound(lora: float, verdict: str):
    claims = check_claims(summarise(_cells({("full", 512): [0.85], ("lora", 512): [lora]})))
    assert [claim.verdict for claim in claims if claim.statement.startswith("lora comes within")] == [verdict]


def test_claims_about_missing_strategies_say_not_measured():
    claims = check_claims(summarise(_cells({("lora", 64): [0.7]})))
    assert {claim.verdict for claim in claims} == {"not measured"}


# --- the report ------------------------------------------------------------------------------------------------


def test_report_page_is_self_contained_with_every_plot(tiny_grid):
    folder, _ = tiny_grid
    page = (folder / REPORT_FILE).read_text(encoding="utf-8")
    assert page.count("<svg") == 5
    assert "<script" not in page and "<link" not in page
    assert not re.search(r"(src|href)=\"https?:", page)  # nothing to fetch
    assert "pet-n16-s1" in page and "has no trained masked-LM head" in page  # failures are shown
    assert "fine-tuning beats feature extraction" in page


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium (.ci/run installs it)")
def test_report_page_renders_in_headless_chromium_without_console_errors(tiny_grid, tmp_path: Path):
    folder, _ = tiny_grid
    assert tunelab("report", str(folder))[0] == 0
    dom, console, colours = open_in_chromium(folder / REPORT_FILE, tmp_path)
    assert dom.count("<svg") == 5 and "Accuracy against training-set size" in dom
    assert console == []
    assert colours > 100  # tables and plots drew, not a blank page


def test_the_noise_note_says_how_far_to_trust_a_grid():
    from tunelab.compare.claims import noise_note

    assert noise_note(3, None) == "3 seeds: a difference counts when it exceeds two standard errors over seeds."
    one = noise_note(1, 400)
    assert one.startswith("1 seed on 400 test examples: a difference counts when it exceeds 2 accuracy points")
    assert one.endswith("run --seeds 3 to measure the spread.")
