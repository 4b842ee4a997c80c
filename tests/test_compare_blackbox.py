"""Black-box cells in `tunelab compare`: a `tunelab blackbox` process per cell beside the trained ones, on the same
data, seed and labelled examples; read back into the report with the calls they made; resumed and refused as a
grid's other cells are; bad black-box settings are one line before anything is written."""

from __future__ import annotations

import json
import re
import shlex
import shutil
from pathlib import Path

import pandas as pd
import pytest
from test_compare import QUIET, tunelab
from tiny import open_in_chromium

from tunelab.compare.claims import check_claims
from tunelab.compare.executors import train_in_process
from tunelab.compare.grid import CELLS, CONFIGS, GRID_FILE, Cell, GridSpec, cell_job, prepare_folder, run_grid
from tunelab.compare.page import REPORT_FILE, summary_rows
from tunelab.compare.plots import all_plots
from tunelab.compare.results import CELL_COLUMNS, SEARCH_COLUMNS, load_grid, summarise
from tunelab.errors import TunelabError

SEARCHES_NONE = pd.DataFrame(columns=list(SEARCH_COLUMNS))
BUDGET = 20  # two rounds of the prompt search (9 calls each) after its first two


def test_a_blackbox_cell_is_the_blackbox_command_on_the_grids_data_seed_and_examples(tmp_path: Path):
    """Training size 64 over 2 labels is 32 shots per label; the prompt model, the data's columns, the test limit,
    the template and the label words pass as `tunelab blackbox` flags; the command line is kept in configs/."""
    base = {"model": "minilm", "data": {"source": "my.csv", "text_column": "review", "limit_eval": 100},
            "prompt": {"template": "{text} It was {label}", "verbalizer": {"negative": [" bad", " awful"],
                                                                          "positive": " good"}}}
    spec = GridSpec(base=base, strategies=["lora", "blackbox:bbt"], train_sizes=[64], seeds=[7],
                    prompt_model="smollm2", blackbox_budget=500)
    cell = Cell("blackbox:bbt", 64, 7)
    job = cell_job(tmp_path, spec, cell, labels=2)
    output = str(tmp_path / CELLS / "blackbox-bbt-n64-s7")
    assert job.arguments() == ["blackbox", "--method", "bbt", "--model", "smollm2", "--data", "my.csv",
                               "--text-column", "review", "--label-column", "label", "--shots", "32", "--seed", "7",
                               "--limit-eval", "100", "--budget", "500", "--template", "{text} It was {label}",
                               "--output", output, "--verbalizer", "negative= bad, awful", "--verbalizer",
                               "positive= good"]
    assert job.config_path == tmp_path / CONFIGS / "blackbox-bbt-n64-s7.sh"
    assert shlex.split(job.record()) == ["tunelab", *job.arguments()]
    assert (job.config.data.shots, job.config.model, str(job.config.output)) == (32, "smollm2", output)
    trained = cell_job(tmp_path, spec, Cell("lora", 64, 7))
    assert trained.arguments() == ["train", str(tmp_path / CONFIGS / "lora-n64-s7.yaml"), "--quiet"]


@pytest.mark.parametrize(("changes", "message"), [
    ({"strategies": ["lora", "blackbox:grips"]}, "unknown black-box method 'blackbox:grips'; choose blackbox:bbt, "
                                                 "blackbox:search, blackbox:mezo"),
    ({"blackbox_budget": 100}, "--blackbox-budget is for black-box cells: name one of blackbox:bbt, "
                               "blackbox:search, blackbox:mezo in --strategies"),
    ({"strategies": ["blackbox:search"], "base": {"task": "generation"}}, "compare measures classification grids"),
    ({"strategies": ["blackbox:search"], "base": {"data": {"test_size": 20}}},
     "black-box cells split the data as `tunelab blackbox` does, which has no data.test_size"),
])
def test_bad_blackbox_grids_fail_before_anything_is_written(tmp_path: Path, changes: dict, message: str):
    with pytest.raises(TunelabError, match=re.escape(message)):
        run_grid(tmp_path / "grid", GridSpec(**{"strategies": ["lora"], "train_sizes": [64], "seeds": [1],
                                                **changes}), QUIET)
    assert not (tmp_path / "grid").exists()


@pytest.fixture(scope="module")
def grid_args(tmp_path_factory: pytest.TempPathFactory, tiny_bert: Path, tiny_llama_lm: Path,
              sentiment_csv: Path) -> list[str]:
    """A trained strategy on the tiny BERT and the prompt search on the tiny causal LM, 8 examples (4 per label:
    the validation split holds 4 of each), one seed."""
    folder = tmp_path_factory.mktemp("compare-blackbox") / "grid"
    return ["compare", "--model", str(tiny_bert), "--prompt-model", str(tiny_llama_lm), "--data", str(sentiment_csv),
            "--strategies", "linear-probe,blackbox:search", "--train-sizes", "8", "--seeds", "1", "--seed", "3",
            "--epochs", "2", "--min-steps", "0", "--max-length", "16", "--batch-size", "8", "--blackbox-budget",
            str(BUDGET), "--output", str(folder), "--quiet"]


@pytest.fixture(scope="module")
def mixed_grid(grid_args: list[str]) -> tuple[Path, str]:
    code, printed = tunelab(*grid_args)
    assert code == 0, printed
    return Path(grid_args[grid_args.index("--output") + 1]), printed


def _cell_files(folder: Path, name: str) -> tuple[dict, dict]:
    return tuple(json.loads((folder / CELLS / name / file).read_text()) for file in ("metrics.json", "resources.json"))


def test_a_grid_runs_trained_and_blackbox_cells_and_reports_both(mixed_grid, tiny_bert: Path, tiny_llama_lm: Path):
    folder, printed = mixed_grid
    assert "2 runs trained, 0 already finished, 0 failed" in printed
    metrics, resources = _cell_files(folder, "blackbox-search-n8-s3")
    assert metrics["method"] == "search" and metrics["shots"] == 4
    assert 0 < resources["search"]["calls"] <= BUDGET
    trained, _ = _cell_files(folder, "linear-probe-n8-s3")
    rows = load_grid(folder).cells.set_index("strategy")
    assert rows.loc["blackbox:search", "accuracy"] == metrics["test"]["accuracy"]
    assert rows.loc["blackbox:search", "calls"] == resources["search"]["calls"]
    assert rows.loc["blackbox:search", "train_s"] == resources["search"]["wall_s"]
    assert (rows.loc["blackbox:search", "model"], rows.loc["blackbox:search", "family"]) == (str(tiny_llama_lm),
                                                                                          "black-box")
    assert rows.loc["blackbox:search", "train_examples"] == 8  # 4 shots of each of 2 labels
    assert rows.loc["linear-probe", "accuracy"] == trained["test"]["accuracy"]
    assert rows.loc["linear-probe", "model"] == str(tiny_bert)
    table = {row[0].split(" (")[0]: row for row in summary_rows(summarise(load_grid(folder).cells))}
    calls = resources["search"]["calls"]
    assert table["blackbox:search"][3] == f"{metrics['test']['accuracy']:.3f}"
    assert table["blackbox:search"][6] == f"{calls} calls, {resources['search']['wall_s']:.1f} s"
    assert table["blackbox:search"][4:6] == ["-", "-"] and table["blackbox:search"][7:] == ["-", "-", "-"]
    assert table["linear-probe"][3] == f"{trained['test']['accuracy']:.3f}" and "calls" not in table["linear-probe"][6]
    assert re.search(rf"blackbox:search .* {calls} calls, ", printed)  # the terminal's table
    assert "done blackbox:search n=8 seed 3: accuracy" in printed
    page = (folder / REPORT_FILE).read_text(encoding="utf-8")
    assert f"{calls} calls" in page and "Black-box cells (blackbox:METHOD) train no weights" in page
    assert page.count("<svg") == 6 and 'aria-label="Black-box searches against calls"' in page
    searched = load_grid(folder).searches
    assert searched["calls"].tolist() == [point["calls"] for point in metrics["curve"]]
    assert set(searched["strategy"]) == {"blackbox:search"} and searched["calls"].max() <= calls


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium (.ci/run installs it)")
def test_the_page_with_blackbox_rows_renders_in_headless_chromium(mixed_grid, tmp_path: Path):
    folder, _ = mixed_grid
    dom, console, colours = open_in_chromium(folder / REPORT_FILE, tmp_path)
    assert console == [] and colours > 100
    assert "blackbox:search" in dom and dom.count("<svg") == 6


def test_blackbox_cells_take_no_part_in_claims_or_recommendations(mixed_grid):
    folder, _ = mixed_grid
    summary = summarise(load_grid(folder).cells)
    assert all("blackbox:" not in claim.evidence for claim in check_claims(summary))
    code, printed = tunelab("recommend", "--from", str(folder))
    assert code == 0, printed
    assert "blackbox:" not in printed


def test_resume_skips_finished_blackbox_cells_and_refuses_other_blackbox_settings(mixed_grid, grid_args):
    folder, _ = mixed_grid
    cell = folder / CELLS / "blackbox-search-n8-s3"
    before, _ = _cell_files(folder, cell.name)
    written = (cell / "metrics.json").stat().st_mtime_ns
    code, printed = tunelab(*grid_args)
    assert code == 0 and "0 runs trained, 2 already finished, 0 failed" in printed, printed
    assert (cell / "metrics.json").stat().st_mtime_ns == written  # not run again
    shutil.rmtree(cell)
    code, printed = tunelab(*grid_args)
    assert code == 0 and "1 runs trained, 1 already finished, 0 failed" in printed, printed
    assert _cell_files(folder, cell.name)[0]["test"] == before["test"]  # the same search, the same seed
    stored = (folder / GRID_FILE).read_text(encoding="utf-8")
    budget = grid_args.index("--blackbox-budget") + 1
    for changed, message in ((["--blackbox-budget", "7"], "other blackbox budget"),
                             (["--strategies", "linear-probe,blackbox:bbt"], "other strategies")):
        flag = grid_args.index(changed[0])
        args = [*grid_args[:flag], *changed, *grid_args[flag + 2:]]
        code, printed = tunelab(*args)
        assert code == 2 and f"holds a grid with {message}; repeat its settings" in printed, printed
    assert (folder / GRID_FILE).read_text(encoding="utf-8") == stored and grid_args[budget] == str(BUDGET)


@pytest.mark.parametrize(("args", "message"), [
    (["--strategies", "lora,blackbox:grips"], "error: unknown black-box method 'blackbox:grips'"),
    (["--strategies", "lora", "--blackbox-budget", "50"], "error: --blackbox-budget is for black-box cells"),
    (["--strategies", "blackbox:search", "--train-sizes", "8,12"],
     "error: --train-sizes 12: a black-box cell takes 12 // 2 labels = 6 examples per label for its search and as "
     "many again for validation; the data has room for 1 to 4 (sizes 2 to 8)"),
    (["--strategies", "blackbox:search", "--train-sizes", "1"], "error: --train-sizes 1: a black-box cell takes 1 // "
                                                                 "2 labels = 0 examples per label"),
    (["--strategies", "blackbox:mezo", "--set", "data.split_seed=3"], "error: black-box cells split the data as "
                                                                      "`tunelab blackbox` does, which has no "
                                                                      "data.split_seed"),
])
def test_bad_blackbox_input_is_one_line_and_writes_nothing(tmp_path: Path, tiny_llama_lm: Path, sentiment_csv: Path,
                                                           args: list[str], message: str):
    folder = tmp_path / "grid"
    code, printed = tunelab("compare", "--model", str(tiny_llama_lm), "--data", str(sentiment_csv), "--output",
                            str(folder), "--train-sizes", "8", "--quiet", *args)
    assert code == 2 and printed.startswith(message) and printed.count("error:") == 1, printed
    assert not folder.exists()


def test_a_blackbox_cell_refused_by_its_model_is_one_line_from_its_log(tmp_path: Path, tiny_bert: Path,
                                                                        sentiment_csv: Path):
    """bbt on an encoder: `tunelab blackbox` refuses it (exit 2, so the grid tries the method no more) and its
    one-line reason comes back from the cell's log."""
    spec = GridSpec(base={"model": str(tiny_bert), "data": {"source": str(sentiment_csv)}},
                    strategies=["blackbox:bbt"], train_sizes=[8], seeds=[1], blackbox_budget=5)
    prepare_folder(tmp_path, spec)
    code, reason = train_in_process(cell_job(tmp_path, spec, Cell("blackbox:bbt", 8, 1), labels=2))
    assert code == 2 and "needs a causal LM" in reason and "\n" not in reason, reason
    assert not (tmp_path / CELLS / "blackbox-bbt-n8-s1").exists()


def test_a_grid_of_blackbox_cells_alone_plots_what_it_measured():
    """No trained weights: no parameters, memory or storage to plot (their log scales would have nothing on them)."""
    cells = pd.DataFrame([{"strategy": "blackbox:bbt", "model": "smollm2", "family": "black-box", "train_size": size,
                           "seed": 1, "train_examples": size, "accuracy": 0.8, "train_s": 3.0, "learned": True,
                           "calls": 100} for size in (16, 32)], columns=list(CELL_COLUMNS))
    assert list(all_plots(summarise(cells), SEARCHES_NONE)) == ["Accuracy against training-set size",
                                                                 "Training time"]


def test_blackbox_searches_are_drawn_against_their_calls_beside_trained_strategies():
    """One thin line per seed of each search, its test accuracy where it ended, a trained strategy's test accuracy
    as a dashed line at the same size; sizes without searches are not drawn."""
    cells = pd.DataFrame([{"strategy": strategy, "model": "m", "family": family, "train_size": 32, "seed": seed,
                           "train_examples": 32, "accuracy": 0.8, "train_s": 3.0, "learned": True,
                           "trainable_parameters": parameters, "calls": calls,
                           **({"delta_bytes": 4000, "full_copy_bytes": 10**8, "peak_memory_bytes": 10**9}
                              if parameters else {})}
                          for strategy, family, parameters, calls in (("blackbox:bbt", "black-box", None, 42),
                                                                      ("soft-template", "prompt-based", 1000, None))
                          for seed in (1, 2)], columns=list(CELL_COLUMNS))
    searches = pd.DataFrame([{"strategy": "blackbox:bbt", "train_size": 32, "seed": seed, "calls": calls,
                              "validation_accuracy": accuracy}
                             for seed in (1, 2) for calls, accuracy in ((21, 0.6), (42, 0.7 + seed / 100))],
                            columns=list(SEARCH_COLUMNS))
    plots = all_plots(summarise(cells), searches)
    assert list(plots)[-1] == "Black-box searches against calls"
    figure = plots["Black-box searches against calls"]
    assert figure.count('id="line2d_') >= 2 + 1 + 1  # two seeds' lines, the test star, the trained strategy's line
