"""The whole RLHF pipeline on tiny random models and a made-up rated-snippet preset: every stage runs, the report
judges SFT, PPO and DPO on the same prompts, and running the same command again resumes instead of retraining."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from tiny import WORDS, run_main

from tunelab.errors import TunelabError
from tunelab.rlhf import pipeline
from tunelab.rlhf.data import movie_sentiment
from tunelab.rlhf.dpo import DPOSettings
from tunelab.rlhf.ppo import PPOSettings
from tunelab.rlhf.reward import RewardSettings


def rated_snippets(n: int = 120) -> pd.DataFrame:
    """Snippets of five words, rated -3 (all negative words) to +3 (all positive words) by their share of each."""
    rows = []
    for index in range(n):
        positives = index % 6
        words = WORDS["positive"][:positives] + WORDS["negative"][:5 - positives]
        rows.append({"text": " ".join(words), "rating": -3.0 + 6.0 * positives / 5 + 0.01 * (index % 7)})
    return pd.DataFrame(rows)


@pytest.fixture
def tiny_settings(tiny_llama_lm: Path, tiny_bert: Path, monkeypatch: pytest.MonkeyPatch) -> pipeline.PipelineSettings:
    monkeypatch.setattr(pipeline, "load_movie_sentiment",
                        lambda: movie_sentiment(rated_snippets(), train_pairs=24, test_pairs=6, prompt_words=2))
    return pipeline.PipelineSettings(
        policy_model=str(tiny_llama_lm), reward_model=str(tiny_bert), sft_examples=16, sft_held_out=4,
        reward=RewardSettings(epochs=1, max_length=16, batch_size=8),
        ppo=PPOSettings(iterations=2, rollout_size=4, minibatch_size=2, ppo_epochs=1, max_new_tokens=4),
        dpo=DPOSettings(max_length=16, batch_size=4), dpo_held_out=4, judge_prompts=4)


def test_the_pipeline_runs_every_stage_and_judges_the_policies(tiny_settings, tmp_path: Path):
    lines: list[str] = []
    report = pipeline.run_pipeline(tiny_settings, tmp_path / "rlhf", progress=False, announce=lines.append)

    assert {path.name for path in (tmp_path / "rlhf").iterdir()} == {
        "sft", "reward", "ppo", "dpo", "pipeline.yaml", "seconds.json", "report.json", "ppo_curves.svg"}
    assert list(report["policies"]) == ["sft", "ppo", "dpo"]
    sft, ppo = report["policies"]["sft"], report["policies"]["ppo"]
    assert sft["kl"] == pytest.approx(0.0, abs=1e-5) and sft["vader_win_rate"] is None
    assert 0.0 <= ppo["vader_win_rate"] <= 1.0 and ppo["prompts"] == 4 and ppo["reference_perplexity"] > 1
    assert set(report["seconds"]) == {"sft", "reward", "ppo", "dpo", "judge"}
    assert json.loads((tmp_path / "rlhf" / "report.json").read_text())["policies"]["dpo"]["prompts"] == 4
    assert lines[0] == "[1/5] sft" and lines[-1].startswith("[5/5] judging")
    curves = (tmp_path / "rlhf" / "ppo_curves.svg").read_text()
    assert curves.startswith("<svg") and "explained variance" in curves and curves.count("<path") > 3


def test_running_it_again_resumes_after_the_finished_stages(tiny_settings, tmp_path: Path):
    output = tmp_path / "rlhf"
    pipeline.run_pipeline(tiny_settings, output, progress=False, announce=lambda line: None)
    shutil.rmtree(output / "dpo")  # as if interrupted during DPO: its run was never committed
    adapter = (output / "ppo" / "adapter" / "adapter_model.safetensors").stat().st_mtime_ns
    lines: list[str] = []

    pipeline.run_pipeline(tiny_settings, output, progress=False, announce=lines.append)

    assert lines[:3] == ["[1/5] sft: finished earlier, kept", "[2/5] reward: finished earlier, kept",
                         "[3/5] ppo: finished earlier, kept"]
    assert lines[3] == "[4/5] dpo" and (output / "dpo" / "policy.yaml").exists()
    assert (output / "ppo" / "adapter" / "adapter_model.safetensors").stat().st_mtime_ns == adapter


def test_resuming_with_other_settings_is_refused(tiny_settings, tmp_path: Path):
    output = tmp_path / "rlhf"
    output.mkdir()
    (output / "pipeline.yaml").write_text("preset: movie-sentiment\nsft_examples: 5\n")
    with pytest.raises(TunelabError, match="holds a pipeline with other .*sft examples.*repeat its settings"):
        pipeline.run_pipeline(tiny_settings, output, progress=False)


def test_an_unknown_preset_is_refused_before_anything_is_written(tmp_path: Path):
    with pytest.raises(TunelabError, match="unknown preset 'imdb'; presets: movie-sentiment"):
        pipeline.run_pipeline(pipeline.PipelineSettings(preset="imdb"), tmp_path / "rlhf")
    assert not (tmp_path / "rlhf").exists()


def test_the_stages_runs_serve_generate_judge_and_dpo_from_the_cli(tiny_settings, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture):
    output = tmp_path / "rlhf"
    pipeline.run_pipeline(tiny_settings, output, progress=False, announce=lambda line: None)
    prompts = tmp_path / "prompts.csv"
    prompts.write_text("prompt\n" + "".join(f"good {word}\n" for word in WORDS["neutral"]))
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"chosen": "good great fine", "rejected": "bad awful poor"}) + "\n"
                             for _ in range(20)))

    for run in ("ppo", "dpo"):
        code, stdout, stderr = run_main(["generate", str(output / run), "good", "--continue",
                                         "--max-new-tokens", "3"], monkeypatch, capsys)
        assert code == 0 and stdout.startswith("good "), stderr
    code, stdout, stderr = run_main(["rlhf", "judge", str(output / "ppo"), str(output / "dpo"), "--reward",
                                     str(output / "reward"), "--prompts", str(prompts), "--limit", "3",
                                     "--max-new-tokens", "4"], monkeypatch, capsys)
    assert code == 0, stderr
    flat = " ".join(stdout.split())
    assert "policies on 3 held-out prompts" in flat and "VADER win vs SFT" in flat
    assert all(f"│ {name} " in stdout for name in ("SFT", "PPO", "DPO"))
    code, _, stderr = run_main(["eval", str(output / "sft")], monkeypatch, capsys)
    assert code == 2 and "is an `rlhf sft` run of the movie-sentiment preset: its held-out loss is in" in stderr
    code, stdout, stderr = run_main(["rlhf", "dpo", "--policy", str(output / "sft"), "--data", str(pairs),
                                     "--output", str(tmp_path / "dpo2"), "--max-length", "16", "--epochs", "2",
                                     "--quiet"], monkeypatch, capsys)
    assert code == 0, stderr
    assert "dpo on" in stdout and "18 training pairs" in stdout and (tmp_path / "dpo2" / "policy.yaml").exists()


def test_the_pipeline_command_prints_the_judged_table(tiny_settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture):
    class TinyDefaults(pipeline.PipelineSettings):  # what the command has no options for
        reward: RewardSettings = tiny_settings.reward
        ppo: PPOSettings = tiny_settings.ppo
        dpo: DPOSettings = tiny_settings.dpo
        sft_held_out: int = 4
        dpo_held_out: int = 4

    monkeypatch.setattr(pipeline, "PipelineSettings", TinyDefaults)
    args = ["rlhf", "pipeline", "--output", str(tmp_path / "rlhf"), "--policy-model", tiny_settings.policy_model,
            "--reward-model", tiny_settings.reward_model, "--sft-examples", "16", "--judge-prompts", "4",
            "--ppo-iterations", "1", "--quiet"]

    code, stdout, stderr = run_main(args, monkeypatch, capsys)

    assert code == 0, stderr
    flat = " ".join(stdout.split())
    assert flat.startswith("[1/5] sft [2/5] reward [3/5] ppo [4/5] dpo [5/5] judging")
    assert "reward model pairwise accuracy" in flat and "policies on 4 held-out prompts" in flat
    assert "KL in nats per response, summed over its tokens; PPO's target: 6" in flat
    assert len(json.loads((tmp_path / "rlhf" / "report.json").read_text())["stages"]["ppo"]["iterations"]) == 1
