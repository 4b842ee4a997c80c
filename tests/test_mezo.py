"""MeZO: the SPSA step against the gradient it estimates, a LoRA perturbed in place and set back exactly, every call
counted once within the budget, a killed run resumed to the same weights, and a LoRA run read back to predict."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.numpy import load_file
from tiny import sentiment_frame

from tunelab import api, build_config
from tunelab.api import load_language_model
from tunelab.blackbox.endpoints import Budget, InProcess
from tunelab.blackbox.mezo import MeZO, MeZOSettings, assign, flatten
from tunelab.blackbox.prompts import LabelPrompts, Shots
from tunelab.blackbox.run import evaluate, run_blackbox
from tunelab.errors import TunelabError
from tunelab.serve.app import create_app
from tunelab.serve.models import ServedModels
from tunelab.task_catalog import recipe_for

PROMPTS = LabelPrompts.build("{text} It was {label}", None, ["negative", "positive"])
LORA = MeZOSettings("lora", rank=4, learning_rate=1e-3, epsilon=1e-2, eval_every=2, patience=0)


class Metered(InProcess):
    """The model in this process, each real call recorded; the call numbered `fail_at` raises (a kill)."""

    def __init__(self, model, tokenizer, fail_at: int | None = None):
        super().__init__(model, tokenizer)
        self.made, self.fail_at = 0, fail_at

    def _score(self, prompts, continuations, soft_prompt, soft_lengths=None):
        self.made += 1
        if self.made == self.fail_at:
            raise KeyboardInterrupt
        return super()._score(prompts, continuations, soft_prompt, soft_lengths)


@pytest.fixture
def fresh_lm(tiny_llama_lm: Path):
    """A new copy of the tiny LM each time: a LoRA is applied to it in place."""
    return lambda fail_at=None: Metered(*load_language_model(str(tiny_llama_lm)), fail_at=fail_at)


def shots(n: int = 8) -> Shots:
    return PROMPTS.shots(sentiment_frame(n))


def drawn_direction(mezo: MeZO, rng: np.random.Generator, size: int) -> np.ndarray:
    """The z the next step of a state with `rng` draws, regenerated from its seed as the step does."""
    seed = int(copy.deepcopy(rng).integers(2**63 - 1))
    z = [torch.empty(tensor.shape) for tensor in mezo.target.tensors]
    assign(z, np.zeros(size, dtype=np.float32), seed, 1.0)
    return flatten(z)


def differentiable_loss(endpoint: InProcess, data: Shots) -> torch.Tensor:
    """The cross-entropy `LabelPrompts.measure` computes, by autograd: each label is one word of one token."""
    words = [endpoint.tokenizer(word, add_special_tokens=False)["input_ids"] for word in PROMPTS.continuations]
    assert all(len(word) == 1 for word in words)
    rows = []
    for prompt in data.prompts:
        ids = torch.tensor([endpoint.tokenizer(prompt, add_special_tokens=False)["input_ids"]])
        rows.append(endpoint.model.backbone(input_ids=ids).logits[0, -1].log_softmax(-1)[[w[0] for w in words]])
    return -torch.stack(rows).log_softmax(-1)[torch.arange(len(data.targets)), torch.tensor(data.targets)].mean()


def test_the_spsa_step_moves_along_z_by_the_directional_derivative(fresh_lm):
    endpoint = fresh_lm()
    mezo = MeZO(endpoint, PROMPTS, MeZOSettings("lora", rank=4, learning_rate=1e-3, epsilon=1e-3))
    data, state = shots(), mezo.start()
    state.theta = state.theta + np.random.default_rng(1).normal(0, 0.05, state.theta.shape).astype(np.float32)
    assign(mezo.target.tensors, state.theta)  # B away from 0, so that every LoRA value matters
    for parameter in endpoint.model.parameters():
        parameter.requires_grad_(parameter.data_ptr() in {tensor.data_ptr() for tensor in mezo.target.tensors})
    differentiable_loss(endpoint, data).backward()
    gradient = flatten([parameter.grad for parameter in endpoint.model.parameters() if parameter.grad is not None])
    z = drawn_direction(mezo, state.rng, state.theta.size)
    before = state.theta.copy()
    mezo.step(state, data)
    estimate = float(gradient @ z)  # what the two-sided difference tends to as epsilon falls
    np.testing.assert_allclose(state.theta - before, -1e-3 * estimate * z, rtol=0.02, atol=1e-6)
    assert endpoint.usage.calls == endpoint.made == 2


def test_the_step_on_a_quadratic_is_the_two_sided_difference_and_descends():
    """A loss known in closed form (the soft-prompt target, its loss replaced): the step is exactly
    -lr * (L(theta + eps z) - L(theta - eps z)) / (2 eps) * z, and many steps reach the minimum."""
    from test_blackbox import HIDDEN, Counting

    mezo = MeZO(Counting(Budget()), PROMPTS, MeZOSettings(virtual_tokens=2, learning_rate=0.05, epsilon=1e-3))
    target = np.full(2 * HIDDEN, 0.5, dtype=np.float32)
    loss = lambda theta: float(((theta - target) ** 2).sum())  # noqa: E731
    mezo.target.loss = lambda data: (loss(flatten(mezo.target.tensors)), 0.0)
    state = mezo.start()
    state.theta = np.zeros_like(state.theta)
    z = drawn_direction(mezo, state.rng, state.theta.size)
    change = (loss(1e-3 * z) - loss(-1e-3 * z)) / 2e-3
    mezo.step(state, None)
    np.testing.assert_allclose(state.theta, -0.05 * change * z, rtol=1e-4, atol=1e-7)
    for _ in range(300):
        mezo.step(state, None)
    assert loss(state.theta) < 0.1 * loss(np.zeros_like(target))


def test_perturbations_leave_the_lora_bit_identical_when_the_update_is_zero(fresh_lm):
    endpoint = fresh_lm()
    base = {name: value.clone() for name, value in endpoint.model.state_dict().items()}
    mezo = MeZO(endpoint, PROMPTS, MeZOSettings("lora", rank=4, learning_rate=0.0, epsilon=0.1))
    state = mezo.start()
    before = [tensor.clone() for tensor in mezo.target.tensors]
    for _ in range(3):
        mezo.step(state, shots())
    assert all(torch.equal(tensor, kept) for tensor, kept in zip(mezo.target.tensors, before, strict=True))
    assert endpoint.usage.calls == endpoint.made == 6 and endpoint.usage.cached == 0  # ± asked of moved weights
    for name, value in endpoint.model.state_dict().items():  # the base weights are never touched
        if "lora_" not in name:
            assert torch.equal(value, base[name.replace("base_model.model.", "").replace(".base_layer", "")])


def test_mezo_lora_lowers_the_training_loss(fresh_lm):
    endpoint = fresh_lm()
    mezo = MeZO(endpoint, PROMPTS, LORA)
    data, state = shots(16), mezo.start()
    start = mezo.target.loss(data)[0]
    for _ in range(30):
        mezo.step(state, data)
    assert mezo.target.loss(data)[0] < start - 0.1
    assert endpoint.usage.calls == endpoint.made == 62


def lora_config(tiny_llama_lm: Path, sentiment_csv: Path, output: Path):
    return build_config({"model": str(tiny_llama_lm), "task": "classification", "strategy": {"name": "zero-shot"},
                         "data": {"source": str(sentiment_csv), "shots": 2},
                         "prompt": {"template": "{text} It was {label}"}, "output": str(output)})


def test_a_lora_run_counts_every_call_within_its_budget_and_resumes_a_kill_to_the_same_weights(
        fresh_lm, tiny_llama_lm: Path, sentiment_csv: Path, tmp_path: Path):
    budget = 3 * (2 * LORA.eval_every + 1) + 4  # three rounds, and too little left for a fourth
    whole = fresh_lm()
    path, metrics = run_blackbox(lora_config(tiny_llama_lm, sentiment_csv, tmp_path / "whole"), whole, LORA, budget)
    searched = json.loads((path / "resources.json").read_text())["search"]["calls"]
    assert searched == metrics["curve"][-1]["calls"] == 15 and metrics["generations"] == 3
    assert whole.made == searched + json.loads((path / "resources.json").read_text())["evaluation"]["calls"]

    config = lora_config(tiny_llama_lm, sentiment_csv, tmp_path / "killed")
    with pytest.raises(KeyboardInterrupt):  # dies on the third call of the second round
        run_blackbox(config, fresh_lm(fail_at=8), LORA, budget)
    assert json.loads((tmp_path / ".killed.search" / "calls.json").read_text())["calls"] == 7
    resumed = fresh_lm()
    path, metrics = run_blackbox(config, resumed, LORA, budget)
    calls = json.loads((path / "resources.json").read_text())["search"]["calls"]
    assert calls == 7 + 10 <= budget  # the calls before the kill once, the cut round again, then the third
    assert metrics["generations"] == 3 and [point["steps"] for point in metrics["curve"]] == [2, 4, 6]
    adapters = [load_file(str(run / "adapter" / "adapter_model.safetensors")) for run in (tmp_path / "whole", path)]
    assert adapters[0].keys() == adapters[1].keys()
    assert all(np.array_equal(adapters[0][key], adapters[1][key]) for key in adapters[0])


def test_a_lora_run_reloads_predicts_and_serves_as_it_was_scored(fresh_lm, tiny_llama_lm: Path, sentiment_csv: Path,
                                                                tmp_path: Path):
    config = lora_config(tiny_llama_lm, sentiment_csv, tmp_path / "lora")
    settings = MeZOSettings("lora", rank=4, learning_rate=0.05, epsilon=1e-2, eval_every=2, patience=0)
    path, metrics = run_blackbox(config, fresh_lm(), settings, budget=10)
    assert {file.name for file in path.iterdir()} == {"blackbox.yaml", "metrics.json", "resources.json", "adapter",
                                                      "search_curve.png", "manifest.json"}
    assert (path / "adapter" / "adapter_config.json").exists()  # PEFT's own format
    assert api.evaluate(path)["accuracy"] == pytest.approx(metrics["test"]["accuracy"])  # the adapter reloaded
    base = InProcess(*load_language_model(str(tiny_llama_lm)))
    test_rows = recipe_for("classification").prepare(config).splits.test
    assert evaluate(MeZO(base, PROMPTS, MeZOSettings()), None, test_rows) == metrics["zero_shot"]["accuracy"]
    texts = ["good great fine nice", "awful bad poor ugly"]
    local = api.predict(path, texts)
    untrained = np.exp(PROMPTS.ask(base, PROMPTS.prompts(pd.DataFrame({"text": texts}))))
    assert not np.allclose(untrained, [list(row["probabilities"].values()) for row in local], atol=1e-4)
    models = ServedModels("fp32")
    models.load([f"mezo={path}"])
    with TestClient(create_app(models)) as client:
        answer = client.post("/v1/predict", json={"model": "mezo", "inputs": texts})
        assert answer.status_code == 200, answer.text
        for row, expected in zip(answer.json()["data"], local, strict=True):
            assert row["probabilities"] == pytest.approx(expected["probabilities"], abs=1e-5)


def test_a_lora_is_refused_where_the_weights_are_out_of_reach():
    from test_blackbox import Counting

    endpoint = Counting(Budget())
    with pytest.raises(TunelabError, match="mezo --tune lora perturbs the model's weights"):
        MeZO(endpoint, PROMPTS, LORA)
    with pytest.raises(TunelabError, match="unknown --tune 'prefix'"):
        MeZOSettings("prefix")
    assert endpoint.usage.calls == 0


def test_the_command_trains_a_lora(tiny_llama_lm: Path, sentiment_csv: Path, tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture):
    from tiny import run_main

    code, out, err = run_main(["blackbox", "--method", "mezo", "--tune", "lora", "--rank", "2", "--target-modules",
                               "q_proj,k_proj", "--model", str(tiny_llama_lm), "--data", str(sentiment_csv),
                               "--shots", "2", "--budget", "7", "--eval-every", "1", "--output",
                               str(tmp_path / "run")], monkeypatch, capsys)
    assert code == 0, err
    assert "trained LoRA (adapter/)" in out
    adapter = json.loads((tmp_path / "run" / "adapter" / "adapter_config.json").read_text())
    assert adapter["r"] == 2 and sorted(adapter["target_modules"]) == ["k_proj", "q_proj"]
    assert json.loads((tmp_path / "run" / "resources.json").read_text())["search"]["calls"] == 6  # two rounds of 3
