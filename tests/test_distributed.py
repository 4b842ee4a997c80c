"""`tunelab train --nproc 2`: two CPU processes (torchrun, DDP over gloo on loopback) train as one process does with
the same global batch, rank 0 alone writing the run; what can be refused is refused before the launch, and an error
inside the processes reaches the user as one line."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from tiny import assert_trained_alike, train_cli

from tunelab.cli.launch import launch
from tunelab.engines import trap
from tunelab.runs import METRICS_FILE
from tunelab.strategies.catalog import CATALOG


@pytest.mark.parametrize("strategy", ["lora", "full"])
def test_two_processes_train_as_one_with_the_same_global_batch(strategy: str, bert_without_dropout: Path,
                                                              sentiment_csv: Path, tmp_path: Path,
                                                              one_process_run: Callable[[str], Path]):
    two = train_cli(bert_without_dropout, sentiment_csv, tmp_path / "two", strategy, "--nproc", "2")
    assert two.returncode == 0, two.stderr[-3000:]
    assert_trained_alike(one_process_run(strategy), tmp_path / "two", two.stdout)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["two"]  # no staging left behind


@pytest.mark.parametrize(("extra", "message"), [
    (["--batch-size", "5"], "--batch-size 5 does not split over 2 processes"),
    (["--text-column", "review"], "review"),  # raised inside the processes: shown once, as one line
])
def test_errors_of_a_multi_process_run_are_one_line(extra: list[str], message: str, bert_without_dropout: Path,
                                                    sentiment_csv: Path, tmp_path: Path):
    run = train_cli(bert_without_dropout, sentiment_csv, tmp_path / "run", "lora", "--nproc", "2", *extra)
    assert run.returncode == 2 and message in run.stderr, run.stderr[-3000:]
    assert "Traceback" not in run.stderr and len(run.stderr.strip().splitlines()) == 1
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(("ending", "printed", "cause"), [
    ("raise RuntimeError('Connection closed by peer')", [], "RuntimeError: Connection closed by peer"),
    ("os.kill(os.getpid(), signal.SIGKILL)", [], "process 1 was killed by signal 9"),
    ("print('LookupError: a line the run printed', file=sys.stderr); raise KeyError('text')",
     ["LookupError: a line the run printed"], "KeyError: 'text'"),
])
def test_a_crashed_process_is_named_with_what_ended_it(ending: str, printed: list[str], cause: str, tmp_path: Path,
                                                      capfd: pytest.CaptureFixture):
    """A crash (no one-line error of ours) is told by its exception or signal, not torchrun's pages of report; what
    the run printed on its way still shows, and is not taken for the cause."""
    script = tmp_path / "crash.py"
    script.write_text(f"import os, signal, sys\nif os.environ['RANK'] == '1':\n    {ending}\n")
    code = launch([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone",
                   str(script)])
    *shown, told = capfd.readouterr().err.strip().splitlines()
    assert code == 1 and told == (f"error: a training process failed: {cause} (torchrun exit code 1); run with "
                                  f"--nproc 1 to see its traceback"), told
    assert shown == printed  # no traceback, nothing of torchrun's report


@pytest.mark.parametrize("engine", ["ddp", "fsdp", pytest.param("deepspeed-zero3", marks=pytest.mark.skipif(
    importlib.util.find_spec("deepspeed") is None, reason="the deepspeed extra is not installed"))])
def test_every_catalogue_strategy_trains_under_two_processes(engine: str, bert_without_dropout: Path,
                                                            tiny_llama_lm: Path, sentiment_csv: Path, tmp_path: Path):
    """One torchrun launch trains every strategy in turn (the prompt-based ones on the causal LM, AdapterFusion on
    two adapter runs): none needs refusing under DDP; under FSDP2 (accelerate's FSDP path taken on CPUs, as on GPUs)
    and ZeRO-3, which split the weights, every strategy but the pairs known to fail (refused before launch, tested
    in test_engines.py)."""
    here = Path(__file__).parent
    launch = [str(here / "fsdp_on_cpu.py")] if engine == "fsdp" else []
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          *launch, str(here / "ddp_catalog.py"), str(bert_without_dropout), str(tiny_llama_lm),
                          str(sentiment_csv), str(tmp_path / "runs"), engine],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    trained = {path.name for path in (tmp_path / "runs").iterdir() if (path / METRICS_FILE).exists()}
    assert trained == {name for name in CATALOG if trap(name, engine) is None} | {"adapter-b"}
    assert engine == "ddp" or trained < {*CATALOG, "adapter-b"}
