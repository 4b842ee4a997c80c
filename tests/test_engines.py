"""`tunelab train --distributed ENGINE`: every strategy x engine pair is allowed or refused with its reason before
anything launches; the shipped configs load into the Trainer's arguments; an engine this machine cannot run is
refused as one line; DeepSpeed ZeRO-2 (where installed: it runs on CPUs over gloo) trains as one process does."""

from __future__ import annotations

import importlib.util
import json
import re
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from tiny import assert_trained_alike, fsdp_on_cpu, train_cli
from transformers import TrainingArguments

from tunelab import api, build_config
from tunelab.engines import AVOIDED, ENGINES, STATES, TRAPS, check_engine, check_pair, pair_table, read_config
from tunelab.errors import TunelabError
from tunelab.recipes.runs import rebuilt
from tunelab.runs import METRICS_FILE
from tunelab.strategies.catalog import CATALOG
from tunelab.strategies.registry import configure
from tunelab.task_catalog import recipe_for
from tunelab.training.trainer import check_engaged

HAS_DEEPSPEED = importlib.util.find_spec("deepspeed") is not None


@pytest.mark.parametrize("checkpointing", [False, True])
def test_every_catalogue_strategy_and_engine_is_allowed_or_refused_with_its_reason(checkpointing: bool):
    table = pair_table(checkpointing)
    assert set(table) == set(CATALOG) and all(set(row) == set(ENGINES) for row in table.values())
    for strategy, row in table.items():
        for engine, trap in row.items():
            if trap is None:
                check_pair(strategy, engine, checkpointing)
                continue
            with pytest.raises(TunelabError) as refused:
                check_pair(strategy, engine, checkpointing)
            message = str(refused.value)
            assert trap.reason in message and trap.instead in message and "\n" not in message
    refused = {(strategy, engine) for strategy, row in table.items() for engine, trap in row.items() if trap}
    assert {("prompt-tuning", "deepspeed-zero3"), ("p-tuning", "deepspeed-zero3")} <= refused
    assert (("prefix", "ddp") in refused) == checkpointing  # prefix is refused only with checkpointing, anywhere
    assert not any(strategy == "lora" for strategy, _ in refused)
    assert TRAPS and AVOIDED


def test_engine_rows_say_what_they_shard_and_ship_a_config_that_says_the_same():
    assert ENGINES["ddp"].shards == () and ENGINES["deepspeed-zero2"].shards == ("gradients", "optimizer")
    assert ENGINES["deepspeed-zero3"].shards == ENGINES["fsdp"].shards == STATES
    assert read_config(ENGINES["fsdp"])["fsdp_version"] == 2  # FSDP1 refuses layers of frozen and trainable weights
    for stage in (2, 3):
        config = read_config(ENGINES[f"deepspeed-zero{stage}"])
        assert config["zero_optimization"]["stage"] == stage
        assert config["train_micro_batch_size_per_gpu"] == "auto"  # the Trainer fills it from --batch-size


def test_the_fsdp2_config_loads_into_the_trainer_arguments(tmp_path: Path):
    """The Trainer reads it as FSDP2, wrapping the model's own transformer layers."""
    keywords = ENGINES["fsdp"].trainer_arguments(["BertLayer"], 32)
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", **keywords)
    assert args.fsdp_plugin_args["fsdp_version"] == 2
    assert args.fsdp_plugin_args["transformer_cls_names_to_wrap"] == "BertLayer"
    assert args.fsdp_plugin_args["reshard_after_forward"] is True


@pytest.mark.skipif(not HAS_DEEPSPEED, reason="the deepspeed extra is not installed")
@pytest.mark.parametrize("stage", [2, 3])
def test_the_deepspeed_configs_load_into_the_trainer_arguments(stage: int, tmp_path: Path):
    keywords = ENGINES[f"deepspeed-zero{stage}"].trainer_arguments(["BertLayer"], 32)
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, report_to="none", **keywords)
    config = args.hf_deepspeed_config
    assert config.get_value("zero_optimization.stage") == stage and config.is_zero3() == (stage == 3)
    assert config.get_value("train_micro_batch_size_per_gpu") == 4  # an "auto" the Trainer filled
    assert config.get_value("zero_optimization.reduce_bucket_size") == 32**2  # one tunelab filled from the model


def test_refusals_name_the_engine_and_what_works_instead(monkeypatch: pytest.MonkeyPatch):
    def refusal(engine: str, strategy: str = "lora", processes: int = 2) -> str:
        with pytest.raises(TunelabError) as refused:
            check_engine(engine, strategy, processes)
        return str(refused.value)

    assert "give --nproc 2 or more" in refusal("deepspeed-zero2", processes=1)
    assert "fsdp needs GPUs" in refusal("fsdp") and "use --distributed ddp or deepspeed-zero2/3" in refusal("fsdp")
    assert "known failure" in refusal("deepspeed-zero3", "prompt-tuning")  # the pair's own reason comes first
    check_engine("ddp", "prefix", 1)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    assert "pip install 'tunelab[deepspeed]'" in refusal("deepspeed-zero2")


def test_a_trainer_that_fell_back_to_ddp_is_refused(monkeypatch: pytest.MonkeyPatch):
    """accelerate maps FSDP only for accelerators: elsewhere the Trainer would train plain DDP without a word."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(TunelabError, match="would run fsdp as plain DDP"):
        check_engaged(SimpleNamespace(is_fsdp_enabled=False), "fsdp")
    check_engaged(SimpleNamespace(is_deepspeed_enabled=True), "deepspeed-zero2")


@pytest.mark.parametrize(("strategy", "extra", "message"), [
    ("lora", ["--nproc", "2", "--distributed", "fsdp"], "fsdp needs GPUs"),
    ("prefix", ["--set", "training.gradient_checkpointing=true"], "prefix under ddp with gradient checkpointing is a "
                                                                  "known failure"),
    ("prompt-tuning", ["--nproc", "2", "--distributed", "deepspeed-zero3"], "prompt-tuning under deepspeed-zero3 is a "
                                                                            "known failure"),
])
def test_refused_engines_are_one_line_exit_2_and_write_nothing(strategy: str, extra: list[str], message: str,
                                                               tiny_bert: Path, sentiment_csv: Path, tmp_path: Path):
    run = train_cli(tiny_bert, sentiment_csv, tmp_path / "run", strategy, *extra)
    assert run.returncode == 2 and message in run.stderr, run.stderr[-3000:]
    assert "Traceback" not in run.stderr and len(run.stderr.strip().splitlines()) == 1
    assert not list(tmp_path.iterdir())


def test_gradient_checkpointing_keeps_the_loss_curve(bert_without_dropout: Path, sentiment_csv: Path, tmp_path: Path):
    """Recomputing the activations in the backward pass gives the same gradients (tunelab's checkpointing is
    non-reentrant, so frozen weights and DDP take it)."""
    curves = []
    for checkpointing in (False, True):
        config = build_config({"model": str(bert_without_dropout), "data": {"source": str(sentiment_csv)},
                               "strategy": {"name": "lora"}, "output": str(tmp_path / str(checkpointing)),
                               "training": {"max_length": 16, "batch_size": 8, "epochs": 1, "logging_steps": 1,
                                            "precision": "fp32", "gradient_checkpointing": checkpointing}})
        curves.append([loss for _, loss in api.train(config, progress=False).metrics["loss_curve"]])
    assert curves[1] == pytest.approx(curves[0], abs=1e-6) and len(curves[0]) == 8


@pytest.mark.skipif(not HAS_DEEPSPEED, reason="the deepspeed extra is not installed")
@pytest.mark.parametrize(("stage", "strategy"), [(2, "lora"), (3, "lora")])  # ZeRO-3 `full`: the catalogue test
def test_deepspeed_on_two_processes_trains_as_one(stage: int, strategy: str, bert_without_dropout: Path,
                                                  sentiment_csv: Path, tmp_path: Path,
                                                  one_process_run: Callable[[str], Path]):
    """ZeRO-2 splits the optimizer state and gradients over two gloo processes, ZeRO-3 the weights too (gathered
    whole after training, for rank 0 to evaluate and save); the loss curve, the scores and the saved delta are the
    single process's."""
    two = train_cli(bert_without_dropout, sentiment_csv, tmp_path / "two", strategy, "--nproc", "2",
                    "--distributed", f"deepspeed-zero{stage}")
    assert two.returncode == 0, two.stderr[-3000:]
    assert_trained_alike(one_process_run(strategy), tmp_path / "two", two.stdout)
    assert json.loads((tmp_path / "two" / METRICS_FILE).read_text())["train_examples"] == 60


@pytest.mark.parametrize("strategy", ["lora", "full"])
def test_fsdp2_on_two_processes_trains_as_one(strategy: str, bert_without_dropout: Path, sentiment_csv: Path,
                                              tmp_path: Path, one_process_run: Callable[[str], Path]):
    """FSDP2 splits the weights over two processes (accelerate's FSDP path, taken on CPUs here as on GPUs): the
    Trainer restores the best epoch from FSDP's own checkpoints, the weights are gathered whole for rank 0, and the
    loss curve, the scores and the saved delta are the single process's."""
    two = train_cli(bert_without_dropout, sentiment_csv, tmp_path / "two", strategy, "--distributed", "fsdp",
                    launch=fsdp_on_cpu())
    assert two.returncode == 0, two.stderr[-3000:]
    assert_trained_alike(one_process_run(strategy), tmp_path / "two", two.stdout)


@pytest.mark.skipif(not HAS_DEEPSPEED, reason="the deepspeed extra is not installed")
def test_deepspeed_zero3_generates_as_one_process(tiny_llama_lm: Path, chat_jsonl: Path, tmp_path: Path):
    """A generation run scores its test answers while the weights are still split (every process generates in
    step), then rank 0 alone rebuilds them whole, to time and save: the scores and the loss curve are one
    process's."""
    extra = ["--task", "generation", "--limit-train", "40", "--set", "generation.rouge_examples=4",
             "--set", "generation.max_new_tokens=4"]  # 10 full batches an epoch: DDP pads a partial one
    one = train_cli(tiny_llama_lm, chat_jsonl, tmp_path / "one", "lora", *extra)
    two = train_cli(tiny_llama_lm, chat_jsonl, tmp_path / "two", "lora", *extra, "--nproc", "2",
                    "--distributed", "deepspeed-zero3")
    assert one.returncode == 0 and two.returncode == 0, two.stderr[-3000:]
    metrics = [json.loads((tmp_path / run / METRICS_FILE).read_text()) for run in ("one", "two")]
    np.testing.assert_allclose(metrics[1]["loss_curve"], metrics[0]["loss_curve"], rtol=0, atol=1e-4)
    for scores in ("test", "base_test"):  # perplexities near 1e6: relative
        assert metrics[1][scores] == pytest.approx(metrics[0][scores], rel=1e-5, abs=1e-4)


def test_a_model_rebuilt_from_gathered_weights_takes_every_trained_tensor_and_nothing_else(
        tiny_bert: Path, sentiment_csv: Path, tmp_path: Path):
    """Rank 0 rebuilds a split model from the gathered tensors: a trained tensor missing, or one the model does not
    have, is an error rather than a run saved with some weights left at their initial values."""
    config = build_config({"model": str(tiny_bert), "data": {"source": str(sentiment_csv)},
                           "strategy": {"name": "lora"}, "output": str(tmp_path / "run")})
    recipe, strategy = recipe_for("classification"), configure(config.strategy, config.training)
    prepared = recipe.prepare(config)
    model, _ = recipe.build(prepared.config, strategy, prepared.targets)
    trained = {name: parameter.detach() + 1 for name, parameter in model.named_parameters() if parameter.requires_grad}
    whole = rebuilt(recipe, prepared.config, strategy, prepared.targets, trained)
    assert all(torch.equal(dict(whole.named_parameters())[name], tensor) for name, tensor in trained.items())
    first = next(iter(trained))
    with pytest.raises(TunelabError, match=f"missing \\['{re.escape(first)}'\\]"):
        rebuilt(recipe, prepared.config, strategy, prepared.targets, {k: v for k, v in trained.items() if k != first})
    with pytest.raises(TunelabError, match="unexpected \\['head.nope'\\]"):
        rebuilt(recipe, prepared.config, strategy, prepared.targets, {**trained, "head.nope": torch.zeros(1)})
