"""Run directories: never overwritten by accident, never left half-written, replaced only when complete."""

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny import TrainedRun, tiny_config

from tunelab import api
from tunelab.errors import TunelabError
from tunelab.recipes.classification import ClassificationRecipe
from tunelab.recipes.runs import load_run


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def _siblings(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.parent.iterdir())


@pytest.fixture
def existing_run(bert_probe: TrainedRun, tmp_path: Path) -> Path:
    """A private copy of a finished run, in a folder of its own."""
    return Path(shutil.copytree(bert_probe.path, tmp_path / "runs" / "run"))


def _probe_config(tiny_bert: Path, data: Path, output: Path, **training):
    return tiny_config(tiny_bert, data, output, "linear-probe", epochs=2, **training)


def test_existing_output_is_refused_and_untouched(existing_run: Path, tiny_bert: Path, sentiment_csv: Path):
    before = _snapshot(existing_run)
    with pytest.raises(TunelabError, match="already exists: choose another --output or pass --overwrite"):
        api.train(_probe_config(tiny_bert, sentiment_csv, existing_run), progress=False)
    assert _snapshot(existing_run) == before
    assert _siblings(existing_run) == ["run"]


def test_failing_run_leaves_nothing_behind(tmp_path: Path, tiny_bert: Path, sentiment_csv: Path):
    output = tmp_path / "runs" / "bad"
    config = _probe_config(tiny_bert, sentiment_csv, output).model_copy(deep=True)
    config.data.label_column = "sentiment"
    with pytest.raises(TunelabError, match="no label column 'sentiment'"):
        api.train(config, progress=False)
    assert not output.exists()
    assert not (output.parent / ".bad.partial").exists()
    assert not output.parent.exists() or _siblings(output) == []


def test_crash_during_training_removes_the_staging_folder(tmp_path: Path, tiny_bert: Path, sentiment_csv: Path,
                                                          monkeypatch: pytest.MonkeyPatch):
    output = tmp_path / "runs" / "crash"
    output.parent.mkdir()

    def crash(*args, **kwargs):
        assert (output.parent / ".crash.partial").is_dir()  # work happens in the staging folder
        raise RuntimeError("out of memory, say")

    monkeypatch.setattr(ClassificationRecipe, "fit", crash)
    with pytest.raises(RuntimeError, match="out of memory"):
        api.train(_probe_config(tiny_bert, sentiment_csv, output), progress=False)
    assert _siblings(output) == []


def test_overwrite_replaces_the_run(existing_run: Path, tiny_bert: Path, sentiment_csv: Path):
    old_config = (existing_run / "config.yaml").read_text()
    result = api.train(_probe_config(tiny_bert, sentiment_csv, existing_run, seed=7), overwrite=True, progress=False)
    assert result.path == existing_run
    new_config = (existing_run / "config.yaml").read_text()
    assert new_config != old_config and "seed: 7" in new_config
    assert {"metrics.json", "resources.json", "labels.json", "delta.safetensors"} <= set(_snapshot(existing_run))
    assert _siblings(existing_run) == ["run"]  # no .run.partial, no .run.replaced
    assert load_run(existing_run).config.training.seed == 7


def test_failed_overwrite_keeps_the_old_run(existing_run: Path, tiny_bert: Path, sentiment_csv: Path,
                                            monkeypatch: pytest.MonkeyPatch):
    before = _snapshot(existing_run)
    def killed(*args, **kwargs):
        raise RuntimeError("killed")

    monkeypatch.setattr(ClassificationRecipe, "fit", killed)
    with pytest.raises(RuntimeError, match="killed"):
        api.train(_probe_config(tiny_bert, sentiment_csv, existing_run), overwrite=True, progress=False)
    assert _snapshot(existing_run) == before
    assert _siblings(existing_run) == ["run"]


def test_overwrite_refuses_a_folder_that_is_not_a_run(tmp_path: Path, tiny_bert: Path, sentiment_csv: Path):
    precious = tmp_path / "thesis"
    precious.mkdir()
    (precious / "chapter1.tex").write_text("\\section{Intro}")
    with pytest.raises(TunelabError, match="is not a tunelab run; refusing to replace it"):
        api.train(_probe_config(tiny_bert, sentiment_csv, precious), overwrite=True, progress=False)
    assert _snapshot(precious) == {"chapter1.tex": b"\\section{Intro}"}


def test_leftovers_of_an_earlier_crash_are_cleared(tmp_path: Path, tiny_bert: Path, sentiment_csv: Path):
    output = tmp_path / "run"
    stale = tmp_path / ".run.partial"
    stale.mkdir()
    (stale / "half-written.bin").write_bytes(b"\0" * 10)
    api.train(_probe_config(tiny_bert, sentiment_csv, output), progress=False)
    assert not (output / "half-written.bin").exists()
    assert _siblings(output) == ["run"]


def test_no_output_is_an_error(tiny_bert: Path, sentiment_csv: Path):
    with pytest.raises(TunelabError, match="no output directory"):
        api.train(_probe_config(tiny_bert, sentiment_csv, None), progress=False)


def test_load_run_on_a_folder_that_is_not_a_run(tmp_path: Path):
    with pytest.raises(TunelabError, match="is not a tunelab run directory"):
        load_run(tmp_path)
    with pytest.raises(TunelabError, match="is not a tunelab run directory"):
        api.evaluate(tmp_path / "missing")


def test_delta_that_does_not_fit_is_refused(existing_run: Path):
    delta = load_file(str(existing_run / "delta.safetensors"))
    save_file({**delta, "head.2.weight": torch.zeros(1)}, str(existing_run / "delta.safetensors"))
    with pytest.raises(TunelabError, match=r"delta.safetensors does not fit this model .*head\.2\.weight"):
        load_run(existing_run)
    save_file({"head.1.weight": delta["head.1.weight"]}, str(existing_run / "delta.safetensors"))
    with pytest.raises(TunelabError, match=r"delta.safetensors does not fit this model .*head\.1\.bias"):
        load_run(existing_run)
