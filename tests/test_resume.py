"""Resuming `train`: a run interrupted after a checkpoint ends exactly where an uninterrupted one does."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file
from tiny import generation_config, run_main, tiny_config
from transformers import TrainerCallback

from tunelab import api
from tunelab.errors import TunelabError
from tunelab.recipes import base
from tunelab.runs import CHECKPOINTS, MANIFEST_FILE, staging_folder
from tunelab.training.resume import RESUME_FILE


class Interrupt(TrainerCallback):
    """Ctrl-C at an optimizer step, as a user (or a dying machine) would."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt


def _interrupt_at(step: int, monkeypatch: pytest.MonkeyPatch) -> None:
    def with_interrupt(*args, **kwargs):
        trainer = build(*args, **kwargs)
        trainer.add_callback(Interrupt(step))
        return trainer

    build = base.build_trainer
    monkeypatch.setattr(base, "build_trainer", with_interrupt)


def _tensors(run: Path) -> dict:
    return {name: tensor for path in sorted(run.rglob("*.safetensors")) if CHECKPOINTS not in path.parts
            for name, tensor in load_file(str(path)).items()}


def _same_run(resumed: api.RunResult, whole: api.RunResult) -> None:
    assert resumed.metrics == whole.metrics  # test and validation metrics, the loss curve: all of it, exactly
    expected = _tensors(whole.path)
    assert expected and _tensors(resumed.path).keys() == expected.keys()
    assert all(_tensors(resumed.path)[name].equal(tensor) for name, tensor in expected.items())


CASES = {
    "lora": lambda tiny_bert, tiny_llama_lm, csv, jsonl, out: tiny_config(tiny_bert, csv, out, "lora", epochs=3),
    "full, length-grouped batches": lambda tiny_bert, tiny_llama_lm, csv, jsonl, out: tiny_config(
        tiny_bert, csv, out, "full", epochs=3, group_by_length="on"),
    "generation": lambda tiny_bert, tiny_llama_lm, csv, jsonl, out: generation_config(tiny_llama_lm, jsonl, out,
                                                                                       epochs=2),
    # the rank allocator's scores are outside the model: the checkpoint carries them, or the ranks would differ
    "adalora": lambda tiny_bert, tiny_llama_lm, csv, jsonl, out: tiny_config(
        tiny_bert, csv, out, "adalora", {"init_r": 6, "target_r": 2}, epochs=8, learning_rate=2e-2),
}


@pytest.mark.parametrize("case", CASES)
def test_an_interrupted_run_resumes_to_the_uninterrupted_result(case: str, tiny_bert: Path, tiny_llama_lm: Path,
                                                                sentiment_csv: Path, writing_jsonl: Path,
                                                                tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    def config(output: Path):
        made = CASES[case](tiny_bert, tiny_llama_lm, sentiment_csv, writing_jsonl, output)
        return made.model_copy(update={"training": made.training.model_copy(update={"checkpoint_every": 3})})

    whole = api.train(config(tmp_path / "whole"), progress=False)
    steps = whole.metrics["training"]["optimizer_steps"]
    with monkeypatch.context() as patch:
        _interrupt_at(steps // 2 + 1, patch)  # mid-run, past a checkpoint (every 3 steps, and each epoch's)
        with pytest.raises(KeyboardInterrupt):
            api.train(config(tmp_path / "resumed"), progress=False)
    staged = staging_folder(tmp_path / "resumed")
    assert not (tmp_path / "resumed").exists() and (staged / RESUME_FILE).exists()
    said = []
    resumed = api.train(config(tmp_path / "resumed"), progress=False, announce=said.append)
    per_epoch = steps // int(whole.metrics["training"]["epochs"])
    saved = max(step for step in range(1, steps // 2 + 1) if step % 3 == 0 or step % per_epoch == 0)
    assert f"resuming the interrupted run from step {saved}" in said
    _same_run(resumed, whole)
    assert not staged.exists() and not (resumed.path / RESUME_FILE).exists()
    assert not (resumed.path / CHECKPOINTS).exists()


def test_resume_refuses_other_settings_then_restart_discards(tiny_bert: Path, sentiment_csv: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch):
    output = tmp_path / "run"
    config = tiny_config(tiny_bert, sentiment_csv, output, "lora", epochs=2, checkpoint_every=2)
    with monkeypatch.context() as patch:
        _interrupt_at(5, patch)
        with pytest.raises(KeyboardInterrupt):
            api.train(config, progress=False)
    other = tiny_config(tiny_bert, sentiment_csv, output, "lora", epochs=2, checkpoint_every=2, learning_rate=0.05)
    with pytest.raises(TunelabError, match=r"other settings: training.learning_rate \(0.02 then, 0.05 now\); .*"
                                           r"--restart"):
        api.train(other, progress=False)
    assert (staging_folder(output) / CHECKPOINTS / "checkpoint-4").is_dir()  # refused, and kept for the right run
    said = []
    api.train(other, progress=False, announce=said.append, resume="restart")
    assert not any("resuming" in str(line) for line in said) and (output / MANIFEST_FILE).exists()


def test_resume_required_without_an_interrupted_run(tiny_bert: Path, sentiment_csv: Path, tmp_path: Path):
    config = tiny_config(tiny_bert, sentiment_csv, tmp_path / "run", "lora", epochs=1, checkpoint_every=2)
    with pytest.raises(TunelabError, match="there is no interrupted run of .* to resume; leave out --resume"):
        api.train(config, progress=False, resume="require")
    assert list(tmp_path.iterdir()) == []


def test_cli_resume_flags_are_checked(tiny_bert: Path, sentiment_csv: Path, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture):
    common = ["train", "--model", str(tiny_bert), "--data", str(sentiment_csv), "--output", str(tmp_path / "run")]
    code, _, err = run_main([*common, "--resume"], monkeypatch, capsys)
    assert code == 2 and "pass it too" in err and err.count("\n") == 1
    code, _, err = run_main([*common, "--checkpoint-every", "2", "--resume", "--restart"], monkeypatch, capsys)
    assert code == 2 and "contradict" in err
    assert list(tmp_path.iterdir()) == []


def _train_command(tiny_bert: Path, data: Path, output: Path) -> list[str]:
    return [sys.executable, "-m", "tunelab", "train", "--model", str(tiny_bert), "--data", str(data), "--strategy",
            "lora", "--epochs", "40", "--lr", "0.02", "--batch-size", "8", "--max-length", "16",
            "--checkpoint-every", "5", "--quiet", "--output", str(output)]


def test_kill_9_then_the_same_command_resumes(tiny_bert: Path, sentiment_csv: Path, tmp_path: Path):
    """SIGKILL, no chance to clean up: the next run of the same command finds the checkpoint and ends as a whole
    run does."""
    whole = subprocess.run(_train_command(tiny_bert, sentiment_csv, tmp_path / "whole"), capture_output=True,
                           text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"}, timeout=300)
    assert whole.returncode == 0, whole.stderr
    output = tmp_path / "killed"
    process = subprocess.Popen(_train_command(tiny_bert, sentiment_csv, output), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    checkpoints = staging_folder(output) / CHECKPOINTS
    deadline = time.monotonic() + 120
    while not list(checkpoints.glob("checkpoint-*/trainer_state.json")) and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not output.exists()  # nothing half-written is visible
    again = subprocess.run(_train_command(tiny_bert, sentiment_csv, output), capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 0, again.stderr
    assert "resuming the interrupted run from step" in again.stdout
    whole_metrics, resumed_metrics = ((tmp_path / name / "metrics.json").read_text() for name in ("whole", "killed"))
    assert resumed_metrics == whole_metrics
    assert not staging_folder(output).exists()


def _interrupt_trl_at(module: object, step: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C inside a TRL stage: its trainer passes through `quiet_when_asked`, which now adds the interrupt."""
    quiet = module.quiet_when_asked

    def with_interrupt(trainer):
        trainer.add_callback(Interrupt(step))
        return quiet(trainer)

    monkeypatch.setattr(module, "quiet_when_asked", with_interrupt)


def test_an_interrupted_sft_stage_resumes_to_the_uninterrupted_result(tiny_llama_lm: Path, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch):
    from test_rlhf_sft import PAIRS, _config

    from tunelab.rlhf import sft

    def stage(output: Path) -> dict:
        return sft.train_sft(_config(tiny_llama_lm, output, checkpoint_every=2), PAIRS.iloc[:40], PAIRS.iloc[40:],
                             progress=False)

    whole = stage(tmp_path / "whole")
    with monkeypatch.context() as patch:
        _interrupt_trl_at(sft, 8, patch)
        with pytest.raises(KeyboardInterrupt):
            stage(tmp_path / "resumed")
    assert (staging_folder(tmp_path / "resumed") / CHECKPOINTS / "checkpoint-6").is_dir()
    assert stage(tmp_path / "resumed") == whole
    assert _tensors(tmp_path / "resumed").keys() == _tensors(tmp_path / "whole").keys()
    assert all(tensor.equal(_tensors(tmp_path / "whole")[name]) for name, tensor in
               _tensors(tmp_path / "resumed").items())
    assert not staging_folder(tmp_path / "resumed").exists() and not (tmp_path / "resumed" / CHECKPOINTS).exists()


def test_an_interrupted_dpo_stage_resumes_and_refuses_other_settings(tiny_llama_lm: Path, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch):
    from test_rlhf_dpo import PAIRS
    from test_rlhf_sft import TEXT, _config

    from tunelab.rlhf import dpo
    from tunelab.rlhf.sft import train_sft

    train_sft(_config(tiny_llama_lm, tmp_path / "sft", epochs=1), TEXT.iloc[:40], TEXT.iloc[40:], progress=False)
    settings = dpo.DPOSettings(epochs=2, learning_rate=5e-3, batch_size=4, max_length=16, checkpoint_every=3)

    def stage(output: Path, chosen: dpo.DPOSettings = settings) -> dict:
        return dpo.train_dpo(chosen, tmp_path / "sft", PAIRS, PAIRS.iloc[:4], output, progress=False)

    whole = stage(tmp_path / "whole")
    with monkeypatch.context() as patch:
        _interrupt_trl_at(dpo, 5, patch)
        with pytest.raises(KeyboardInterrupt):
            stage(tmp_path / "resumed")
    with pytest.raises(TunelabError, match=r"other settings: beta \(0.1 then, 0.2 now\)"):
        stage(tmp_path / "resumed", settings.model_copy(update={"beta": 0.2}))
    assert stage(tmp_path / "resumed") == whole


def test_a_run_resumed_from_an_epochs_checkpoint_logs_the_same_losses(tiny_bert: Path, sentiment_csv: Path,
                                                                      tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The newest checkpoint may be an epoch's, off the every-N grid: the loss is logged there too, so the first log
    after the resume averages the same steps as the uninterrupted run's."""
    def config(output: Path):
        return tiny_config(tiny_bert, sentiment_csv, output, "lora", epochs=3, checkpoint_every=5)

    whole = api.train(config(tmp_path / "whole"), progress=False)
    per_epoch = whole.metrics["training"]["optimizer_steps"] // 3
    assert per_epoch % 5  # the epoch's checkpoint is not one of the every-5 ones
    with monkeypatch.context() as patch:
        _interrupt_at(per_epoch + 1, patch)
        with pytest.raises(KeyboardInterrupt):
            api.train(config(tmp_path / "resumed"), progress=False)
    said = []
    resumed = api.train(config(tmp_path / "resumed"), progress=False, announce=said.append)
    assert f"resuming the interrupted run from step {per_epoch}" in said
    _same_run(resumed, whole)


def test_adalora_checkpoints_carry_its_rank_allocator(tiny_bert: Path, sentiment_csv: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch):
    """AdaLoRA's smoothed sensitivities live outside the model: each checkpoint holds them, and a resumed run's
    allocator starts from them rather than from zeros."""
    import torch

    from tunelab.strategies.adalora import ALLOCATOR_FILE, RankAllocation

    config = tiny_config(tiny_bert, sentiment_csv, tmp_path / "run", "adalora", {"init_r": 6, "target_r": 2},
                         epochs=8, learning_rate=2e-2, checkpoint_every=3)
    with monkeypatch.context() as patch:
        _interrupt_at(20, patch)
        with pytest.raises(KeyboardInterrupt):
            api.train(config, progress=False)
    saved = torch.load(staging_folder(tmp_path / "run") / CHECKPOINTS / "checkpoint-18" / ALLOCATOR_FILE,
                       weights_only=True)["exp_avg_ipt"]
    assert saved and all(scores.abs().sum() > 0 for scores in saved.values())
    seen: dict = {}
    begin = RankAllocation.on_train_begin

    def recording(self, args, state, control, **kwargs):
        begin(self, args, state, control, **kwargs)
        seen.update(self.backbone.base_model.rankallocator.exp_avg_ipt)

    monkeypatch.setattr(RankAllocation, "on_train_begin", recording)
    api.train(config, progress=False)
    assert seen.keys() == saved.keys() and all(seen[name].equal(scores) for name, scores in saved.items())
