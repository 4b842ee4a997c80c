"""Run directories: never overwritten by accident, never left half-written, replaced only when complete."""

import errno
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny import TrainedRun, run_main, tiny_config
from transformers import TrainerCallback

from tunelab import api
from tunelab.errors import TunelabError
from tunelab.recipes import base
from tunelab.recipes.classification import ClassificationRecipe
from tunelab.recipes.runs import load_run
from tunelab.runs import MANIFEST_FILE, StagedRun, staging_folder


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
    (existing_run / MANIFEST_FILE).unlink()  # a run written before manifests: the delta is checked as it loads
    delta = load_file(str(existing_run / "delta.safetensors"))
    save_file({**delta, "head.2.weight": torch.zeros(1)}, str(existing_run / "delta.safetensors"))
    with pytest.raises(TunelabError, match=r"delta.safetensors does not fit this model .*head\.2\.weight"):
        load_run(existing_run)
    save_file({"head.1.weight": delta["head.1.weight"]}, str(existing_run / "delta.safetensors"))
    with pytest.raises(TunelabError, match=r"delta.safetensors does not fit this model .*head\.1\.bias"):
        load_run(existing_run)


def test_every_file_of_a_run_is_in_its_manifest(existing_run: Path):
    listed = json.loads((existing_run / MANIFEST_FILE).read_text())["files"]
    on_disk = {name for name in _snapshot(existing_run) if name != MANIFEST_FILE}
    assert set(listed) == on_disk and "delta.safetensors" in listed
    assert all(len(entry["sha256"]) == 64 and entry["bytes"] > 0 for entry in listed.values())


@pytest.mark.parametrize("damage", ["truncated", "altered", "missing"])
def test_a_damaged_run_is_refused_naming_the_file(damage: str, existing_run: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture):
    delta = existing_run / "delta.safetensors"
    data = delta.read_bytes()
    if damage == "truncated":
        delta.write_bytes(data[:len(data) // 2])
    elif damage == "altered":
        delta.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    else:
        delta.unlink()
    expected = {"truncated": rf"is truncated \({len(data) // 2} of {len(data)} bytes\)",
                "altered": "has changed since the run was written", "missing": "is missing"}[damage]
    with pytest.raises(TunelabError, match=rf"delta.safetensors {expected} \(checked against manifest.json\)"):
        load_run(existing_run)
    code, _, err = run_main(["predict", str(existing_run), "a good film"], monkeypatch, capsys)
    assert code == 2 and "delta.safetensors" in err and err.count("\n") == 1


def test_a_second_writer_to_one_output_is_refused(tmp_path: Path, tiny_bert: Path, sentiment_csv: Path):
    output = tmp_path / "runs" / "run"
    with StagedRun(output, overwrite=False):
        with pytest.raises(TunelabError, match=rf"another process is writing {output} \(process {os.getpid()} on "):
            api.train(_probe_config(tiny_bert, sentiment_csv, output), progress=False)
        assert staging_folder(output).is_dir()  # the first writer's folder is left alone
    api.train(_probe_config(tiny_bert, sentiment_csv, output), progress=False)  # the lock went with its writer
    assert _siblings(output) == ["run"]


def test_a_run_committed_meanwhile_is_not_replaced(tmp_path: Path, existing_run: Path):
    late = StagedRun(tmp_path / "late", overwrite=False)
    shutil.copytree(existing_run, tmp_path / "late")  # another process commits first
    with late, pytest.raises(TunelabError, match="another process wrote .*late while this one ran"):
        late.commit()
    assert (tmp_path / "late" / "delta.safetensors").exists()


def _disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_keeps_the_previous_run(existing_run: Path, tiny_bert: Path, sentiment_csv: Path,
                                            monkeypatch: pytest.MonkeyPatch):
    before = _snapshot(existing_run)
    monkeypatch.setattr("tunelab.runs.write_manifest", _disk_full)  # the very last write before the rename
    with pytest.raises(TunelabError, match=r"^the disk is full: writing .*run failed; free some space and run the "
                                           r"same command again$"):
        api.train(_probe_config(tiny_bert, sentiment_csv, existing_run), overwrite=True, progress=False)
    assert _snapshot(existing_run) == before and _siblings(existing_run) == ["run"]


class FillsTheDisk(TrainerCallback):
    """The disk fills up at step 5, after the checkpoint of step 4."""

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 5:
            _disk_full()


def test_a_full_disk_keeps_a_resumable_staged_run(tmp_path: Path, tiny_bert: Path, sentiment_csv: Path,
                                                  monkeypatch: pytest.MonkeyPatch):
    output = tmp_path / "run"
    config = tiny_config(tiny_bert, sentiment_csv, output, "lora", epochs=2, checkpoint_every=2)
    build = base.build_trainer
    with monkeypatch.context() as patch:
        patch.setattr(base, "build_trainer",
                      lambda *args, **kwargs: _with_callback(build(*args, **kwargs), FillsTheDisk()))
        with pytest.raises(TunelabError, match="the disk is full: .*; the run so far is kept in .* and resumes"):
            api.train(config, progress=False)
    assert (staging_folder(output) / "checkpoints" / "checkpoint-4").is_dir()
    said = []
    api.train(config, progress=False, announce=said.append)
    assert "resuming the interrupted run from step 4" in said and (output / MANIFEST_FILE).exists()


def _with_callback(trainer, callback):
    trainer.add_callback(callback)
    return trainer


@pytest.fixture
def small_disk(tmp_path: Path):
    """A real 8 MB filesystem (tmpfs); skipped where this user may not mount one."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small filesystem here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=True)


def test_a_really_full_disk(small_disk: Path, existing_run: Path, tiny_bert: Path, sentiment_csv: Path,
                            monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture):
    run = Path(shutil.copytree(existing_run, small_disk / "run"))
    before = _snapshot(run)
    free = shutil.disk_usage(small_disk).free
    (small_disk / "filler").write_bytes(b"\0" * (free - 8192))  # room for a few small files, not for a run
    code, _, err = run_main(["train", "--model", str(tiny_bert), "--data", str(sentiment_csv), "--strategy", "full",
                             "--epochs", "1", "--max-length", "16", "--batch-size", "8", "--overwrite", "--quiet",
                             "--output", str(run)], monkeypatch, capsys)
    assert code == 2 and err.startswith("error: the disk is full") and err.count("\n") == 1
    assert _snapshot(run) == before and sorted(path.name for path in small_disk.iterdir()) == ["filler", "run"]
    load_run(run)  # still whole, checksums and all
