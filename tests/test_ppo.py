"""One PPO iteration end to end on tiny random models: a LoRA policy on a Llama-shaped LM, scored by a BERT-shaped
reward model with another tokenizer. Only the LoRA and value-head weights may change; the logged statistics are
finite and the KL controller moves."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from peft import get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from tunelab.rlhf.policy import policy_lora
from tunelab.rlhf.ppo import (
    PolicyWithValue,
    PPOSettings,
    generate_rollout,
    ppo_iteration,
    ppo_optimizer,
    reference_logits,
    response_logprobs,
    response_mask,
)
from tunelab.rlhf.ppo_math import AdaptiveKLController
from tunelab.rlhf.reward import load_reward_backbone, score_texts

PROMPTS = ["the film was", "a story of", "it is a", "one of the"]


@pytest.fixture
def policy_and_tokenizer(tiny_llama_lm: Path) -> tuple[PolicyWithValue, object]:
    torch.manual_seed(0)
    lm = AutoModelForCausalLM.from_pretrained(tiny_llama_lm, dtype=torch.float32)
    return PolicyWithValue(get_peft_model(lm, policy_lora())), AutoTokenizer.from_pretrained(tiny_llama_lm)


def test_a_response_ends_at_its_first_end_of_sequence():
    eos = 102
    generated = torch.tensor([[5, eos, 7, eos], [5, 6, 7, 8], [eos, eos, eos, eos]])
    assert response_mask(generated, eos).tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]


def test_a_rollout_joins_left_padded_prompts_and_their_responses(policy_and_tokenizer):
    policy, tokenizer = policy_and_tokenizer
    rollout = generate_rollout(policy.lm, tokenizer, ["the film was", "a"], max_new_tokens=6)
    prompt = tokenizer(["the film was", "a"], add_special_tokens=False)["input_ids"]
    assert rollout.prompt_length == max(map(len, prompt)) and rollout.response_ids.shape == (2, 6)
    assert rollout.mask[1, :rollout.prompt_length].tolist() == [0] * (rollout.prompt_length - 1) + [1]  # left pad
    assert rollout.ids[1, rollout.prompt_length - 1] == prompt[1][-1]
    assert tokenizer.padding_side == "right"  # left padding was only for generation


def test_response_logprobs_read_the_token_each_position_predicts():
    logits = torch.randn(1, 5, 7)
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    expected = torch.stack([logits[0, t - 1].log_softmax(-1)[ids[0, t]] for t in (3, 4)])
    torch.testing.assert_close(response_logprobs(logits, ids, prompt_length=3)[0], expected)


def test_one_iteration_changes_only_the_lora_and_value_weights(policy_and_tokenizer, tiny_bert: Path):
    policy, tokenizer = policy_and_tokenizer
    reward_model, reward_tokenizer = load_reward_backbone(str(tiny_bert))
    reward = lambda texts: torch.from_numpy(score_texts(reward_model, reward_tokenizer, texts, 32))  # noqa: E731
    settings = PPOSettings(rollout_size=4, minibatch_size=2, ppo_epochs=2, max_new_tokens=8, learning_rate=1e-2,
                           min_kl_coef=0.0)
    before = {name: tensor.clone() for name, tensor in policy.state_dict().items()}
    trainable = {name for name, parameter in policy.named_parameters() if parameter.requires_grad}
    optimizer = ppo_optimizer(policy, settings)
    controller = AdaptiveKLController(settings.init_kl_coef, settings.target_kl, settings.kl_horizon,
                                      settings.min_kl_coef)

    stats = ppo_iteration(policy, optimizer, tokenizer, PROMPTS, reward, controller, settings)

    changed = {name for name, tensor in policy.state_dict().items() if not torch.equal(tensor, before[name])}
    assert changed and changed <= trainable
    assert all("lora_" in name or name.startswith("value_head.") for name in changed)
    assert {name for name in changed if name.startswith("value_head.")} == {"value_head.weight", "value_head.bias"}
    assert set(stats) == {"reward", "kl", "kl_coef", "entropy", "explained_variance", "clip_fraction",
                          "value_loss", "policy_loss"}
    assert all(math.isfinite(value) for name, value in stats.items() if name != "explained_variance")
    assert stats["kl_coef"] != settings.init_kl_coef  # the controller moved (KL 0 < target: it shrank)


def test_the_reference_is_the_base_without_the_delta(policy_and_tokenizer, tiny_llama_lm: Path):
    policy, tokenizer = policy_and_tokenizer
    with torch.no_grad():
        for name, parameter in policy.named_parameters():
            if "lora_B" in name:
                parameter.add_(0.5)  # make the delta non-zero
    base = AutoModelForCausalLM.from_pretrained(tiny_llama_lm, dtype=torch.float32)
    ids = tokenizer(PROMPTS[:2], return_tensors="pt", padding=True)
    reference = reference_logits(policy.lm, ids["input_ids"], ids["attention_mask"])
    expected = base(**ids).logits
    torch.testing.assert_close(reference, expected, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(policy(ids["input_ids"], ids["attention_mask"])[0], expected, atol=1e-3)


def test_a_ppo_run_starts_at_the_sft_policy_and_writes_its_delta(tiny_llama_lm: Path, tiny_bert: Path,
                                                                  tmp_path: Path):
    import json

    from tunelab.rlhf.ppo_train import train_ppo

    sft, rm = _sft_and_reward_runs(tiny_llama_lm, tiny_bert, tmp_path)
    settings = PPOSettings(iterations=2, rollout_size=4, minibatch_size=2, ppo_epochs=1, max_new_tokens=6)

    lines: list[str] = []
    metrics = train_ppo(settings, sft, rm, PROMPTS * 2, PROMPTS[:2], tmp_path / "ppo", announce=lines.append)

    assert metrics["sft_test"]["kl"] == pytest.approx(0.0, abs=1e-5)  # a fresh LoRA on the merged SFT model
    assert len(metrics["iterations"]) == 2 and metrics["test"]["prompts"] == 2
    assert {path.name for path in (tmp_path / "ppo").iterdir()} == {"adapter", "value_head.safetensors", "policy.yaml",
                                                                     "metrics.json", "resources.json", "manifest.json"}
    assert json.loads((tmp_path / "ppo" / "metrics.json").read_text())["iterations"][0]["kl_coef"] > 0
    assert [line.split(":")[0] for line in lines] == ["iteration 1/2", "iteration 2/2"]  # not a terminal: a log
    assert lines[0].startswith("iteration 1/2: PPO reward ") and " KL " in lines[0]


def _sft_and_reward_runs(tiny_llama_lm: Path, tiny_bert: Path, folder: Path) -> tuple[Path, Path]:
    import pandas as pd
    from tiny import sentiment_frame

    from tunelab.config import build_config
    from tunelab.rlhf.reward import RewardSettings, train_reward_model
    from tunelab.rlhf.sft import train_sft

    text = pd.DataFrame({"text": sentiment_frame(24)["text"]})
    sft = build_config({"model": str(tiny_llama_lm), "task": "generation", "strategy": {"name": "lora"},
                        "output": str(folder / "sft"), "training": {"max_length": 16, "epochs": 1}})
    train_sft(sft, text, text.iloc[:4], progress=False)
    pairs = pd.DataFrame({"chosen": ["good great"] * 8, "rejected": ["bad awful"] * 8})
    train_reward_model(RewardSettings(model=str(tiny_bert), epochs=1, max_length=16), pairs, pairs.iloc[:2],
                       folder / "rm", progress=False)
    return folder / "sft", folder / "rm"


def test_an_interrupted_run_resumes_from_its_checkpoint_to_the_same_weights(tiny_llama_lm: Path, tiny_bert: Path,
                                                                              tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch):
    from safetensors.torch import load_file

    from tunelab.rlhf import ppo_train
    from tunelab.rlhf.ppo_checkpoint import checkpoint_folder

    sft, rm = _sft_and_reward_runs(tiny_llama_lm, tiny_bert, tmp_path)
    settings = PPOSettings(iterations=4, rollout_size=4, minibatch_size=2, ppo_epochs=1, max_new_tokens=6,
                           checkpoint_every=2)
    run = lambda output: ppo_train.train_ppo(settings, sft, rm, PROMPTS * 2, PROMPTS[:2], output,  # noqa: E731
                                             progress=False, announce=lines.append)
    lines: list[str] = []
    whole = run(tmp_path / "whole")
    real_iteration, calls = ppo_train.ppo_iteration, []

    def interrupted_at_the_fourth(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real_iteration(*args, **kwargs)

    monkeypatch.setattr(ppo_train, "ppo_iteration", interrupted_at_the_fourth)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "cut")
    assert not (tmp_path / "cut").exists() and checkpoint_folder(tmp_path / "cut").exists()
    monkeypatch.setattr(ppo_train, "ppo_iteration", real_iteration)

    resumed = run(tmp_path / "cut")

    assert lines == ["resuming PPO from its checkpoint after iteration 2"]
    assert resumed["iterations"] == whole["iterations"] and resumed["test"] == whole["test"]
    weights = [load_file(path / "adapter" / "adapter_model.safetensors") for path in (tmp_path / "whole",
                                                                                     tmp_path / "cut")]
    assert all(torch.equal(weights[0][name], weights[1][name]) for name in weights[0])
    assert not checkpoint_folder(tmp_path / "cut").exists()


def test_a_checkpoint_of_other_settings_is_not_resumed(tiny_llama_lm: Path, tiny_bert: Path, tmp_path: Path):
    from tunelab.errors import TunelabError
    from tunelab.rlhf.ppo_checkpoint import checkpoint_folder
    from tunelab.rlhf.ppo_train import train_ppo

    sft, rm = _sft_and_reward_runs(tiny_llama_lm, tiny_bert, tmp_path)
    settings = PPOSettings(iterations=2, rollout_size=4, minibatch_size=2, ppo_epochs=1, max_new_tokens=6,
                           checkpoint_every=1)
    checkpoint_folder(tmp_path / "ppo").mkdir()
    torch.save({"identity": {"learning_rate": 1.0}}, checkpoint_folder(tmp_path / "ppo") / "state.pt")
    with pytest.raises(TunelabError, match="holds a checkpoint of a PPO run with other .*learning_rate"):
        train_ppo(settings, sft, rm, PROMPTS, PROMPTS[:2], tmp_path / "ppo", progress=False)
