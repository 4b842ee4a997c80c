"""Precision (fp32, bf16/fp16 autocast) and length-grouped training batches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from tiny import load_splits, run_main, tiny_config, write_table

from tunelab import api, precision
from tunelab.batching import LengthBucketSampler
from tunelab.errors import TunelabError
from tunelab.predict import Predictor
from tunelab.strategies.registry import configure
from tunelab.task_catalog import recipe_for
from tunelab.training.trainer import build_trainer, training_arguments


@pytest.fixture
def no_native_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(precision.CPU_BF16_ENV, "0")


def test_cpu_bf16_is_read_from_the_cpu_flags(tmp_path: Path) -> None:
    with_bf16, without, missing = tmp_path / "a", tmp_path / "b", tmp_path / "none"
    with_bf16.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_bf16\n")
    without.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f\nbugs\t: avx512_bf16-lookalike\n")
    assert precision.cpu_has_bf16(with_bf16)
    assert not precision.cpu_has_bf16(without)
    assert not precision.cpu_has_bf16(missing)


def test_auto_is_bf16_only_where_the_cpu_computes_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(precision.CPU_BF16_ENV)  # the suite sets it; without it the flags decide
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: True)
    assert precision.resolve_precision("auto", "cpu") == "bf16"
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: False)
    assert precision.resolve_precision("auto", "cpu") == "fp32"
    assert precision.resolve_precision("bf16", "cpu") == "bf16"  # asked for: emulated, slow, but it runs
    assert precision.resolve_precision("fp32", "cpu") == "fp32"


def test_the_environment_overrides_the_cpu_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: False)
    monkeypatch.setenv(precision.CPU_BF16_ENV, "1")
    assert precision.resolve_precision("auto", "cpu") == "bf16"
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: True)
    monkeypatch.setenv(precision.CPU_BF16_ENV, "0")
    assert precision.resolve_precision("auto", "cpu") == "fp32"
    monkeypatch.setenv(precision.CPU_BF16_ENV, "yes")
    with pytest.raises(TunelabError, match="TUNELAB_CPU_BF16='yes': set it to 1 .* or 0"):
        precision.resolve_precision("auto", "cpu")


def test_fp16_on_a_cpu_and_unknown_precisions_are_refused() -> None:
    with pytest.raises(TunelabError, match="fp16 needs a CUDA GPU; on a CPU use --precision bf16 or fp32"):
        precision.resolve_precision("fp16", "cpu")
    with pytest.raises(TunelabError, match="unknown precision 'half'; use one of auto, fp32, bf16, fp16"):
        precision.resolve_precision("half", "cpu")  # type: ignore[arg-type]


def test_in_precision_autocasts_the_forward_and_returns_fp32(tiny_bert: Path, sentiment_csv: Path) -> None:
    config = tiny_config(tiny_bert, sentiment_csv, None, "full")
    splits, labels = load_splits(config)
    model, tokenizer = recipe_for("classification").build(config, configure(config.strategy), labels)
    model.eval()
    texts = splits.test["text"].tolist()
    seen: list[torch.dtype] = []
    linear = next(module for module in model.backbone.modules() if isinstance(module, torch.nn.Linear))
    linear.register_forward_hook(lambda module, args, output: seen.append(output.dtype))
    fp32 = Predictor(model, tokenizer, labels, 16).logits(texts)
    assert precision.in_precision(model, "fp32") is model and "forward" not in vars(model)
    bf16 = Predictor(precision.in_precision(model, "bf16"), tokenizer, labels, 16).logits(texts)
    assert seen == [torch.float32, torch.bfloat16]  # the backbone's matmuls ran in bf16 ...
    assert bf16.dtype == np.float32  # ... and the logits came back in fp32
    assert np.abs(bf16 - fp32).max() < 0.1 and not np.array_equal(bf16, fp32)


def test_training_arguments_carry_the_runs_precision(tiny_bert: Path, sentiment_csv: Path, tmp_path: Path,
                                                     no_native_bf16: None) -> None:
    for requested, bf16 in (("auto", False), ("fp32", False), ("bf16", True)):
        config = tiny_config(tiny_bert, sentiment_csv, None, "full", precision=requested)
        args = training_arguments(config, configure(config.strategy, config.training), tmp_path, False, "accuracy")
        assert (args.bf16, args.fp16) == (bf16, False)


def test_a_bf16_run_records_it_and_predicts(tiny_bert: Path, sentiment_csv: Path, tmp_path: Path,
                                            no_native_bf16: None) -> None:
    config = tiny_config(tiny_bert, sentiment_csv, tmp_path / "bf16", "lora", precision="bf16")
    result = api.train(config, progress=False)
    assert result.metrics["training"]["precision"] == "bf16"
    assert 0.0 <= result.metrics["test"]["accuracy"] <= 1.0
    fp32 = api.predict(result.path, ["a fine film"], precision="fp32")[0]["probabilities"]
    bf16 = api.predict(result.path, ["a fine film"], precision="bf16")[0]["probabilities"]
    assert fp32.keys() == bf16.keys()
    assert max(abs(fp32[label] - bf16[label]) for label in fp32) < 0.05


def test_cli_refuses_fp16_on_a_cpu_in_one_line(bert_full, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture) -> None:
    if torch.cuda.is_available():
        pytest.skip("fp16 runs on a GPU")
    code, out, err = run_main(["predict", str(bert_full.path), "fine", "--precision", "fp16"], monkeypatch, capsys)
    assert code == 2 and "Traceback" not in err
    assert err.strip() == "error: --precision fp16 needs a CUDA GPU; on a CPU use --precision bf16 or fp32"


def _batches(order: list[int], batch_size: int) -> list[list[int]]:
    return [order[start:start + batch_size] for start in range(0, len(order), batch_size)]


def test_length_buckets_cover_every_example_in_batches_of_similar_length() -> None:
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 120, size=1003).tolist()
    sampler = LengthBucketSampler(lengths, batch_size=32, seed=0, bucket_batches=8)
    order = list(sampler)
    assert sorted(order) == list(range(1003)) and len(sampler) == 1003
    batches = _batches(order, 32)
    assert len(batches[-1]) == 1003 % 32  # the short batch comes last, where a DataLoader cuts it

    def padding(order: list[int]) -> float:
        cut = [np.asarray(lengths)[batch] for batch in _batches(order, 32)]
        return 1 - sum(batch.sum() for batch in cut) / sum(batch.max() * len(batch) for batch in cut)

    assert padding(order) < 0.1 < 0.3 < padding(rng.permutation(1003).tolist())
    longest = [max(lengths[i] for i in batch) for batch in batches[:-1]]
    assert longest != sorted(longest) and longest != sorted(longest, reverse=True)  # batch order is shuffled


def test_length_buckets_follow_the_seed_and_the_epoch_alone() -> None:
    sampler = LengthBucketSampler(list(range(100)), batch_size=8, seed=3)
    first = list(sampler)
    torch.manual_seed(7)  # torch's generator plays no part: a run resumed mid-epoch sees the same order
    assert list(sampler) == first
    sampler.set_epoch(1)
    second = list(sampler)
    assert second != first and sorted(second) == sorted(first)
    assert list(LengthBucketSampler(list(range(100)), batch_size=8, seed=4)) != first


def _sampler(config, tmp_path: Path) -> torch.utils.data.Sampler:
    """The training sampler the Trainer builds for a config's training split."""
    from tunelab.recipes.classification import RECIPE
    from tunelab.tasks.inputs import input_encoder
    from tunelab.training.trainer import encode_examples

    prepared = RECIPE.prepare(config)
    strategy = configure(config.strategy, config.training)
    model, tokenizer = RECIPE.build(config, strategy, prepared.targets)
    train = encode_examples(input_encoder(model, tokenizer, config.training.max_length), prepared.splits.train,
                            prepared.targets.encode(prepared.splits.train["label"].tolist(), "train"))
    args = training_arguments(config, strategy, tmp_path, False, "accuracy")
    return build_trainer(model, args, train, train, None, None, config.training.group_by_length)._get_train_sampler()


def test_the_trainer_groups_token_ids_by_length_when_it_saves_padding(tiny_bert: Path, sentiment_csv: Path,
                                                                      tmp_path: Path) -> None:
    """The tests' texts are all six tokens long: auto leaves their order random; texts of 1 to 40 words are
    grouped; on and off do as told."""
    varied = write_table(pd.DataFrame({"text": [" ".join(["good" if i % 2 else "bad"] * (1 + i % 40))
                                                for i in range(120)],
                                       "label": ["positive" if i % 2 else "negative" for i in range(120)]}),
                         tmp_path / "varied.csv")
    expected = {(sentiment_csv, "auto"): torch.utils.data.RandomSampler, (sentiment_csv, "on"): LengthBucketSampler,
                (varied, "auto"): LengthBucketSampler, (varied, "off"): torch.utils.data.RandomSampler}
    for (data, grouping), kind in expected.items():
        config = tiny_config(tiny_bert, data, None, "full", group_by_length=grouping, max_length=48)
        assert type(_sampler(config, tmp_path)) is kind, (data.name, grouping)


def test_auto_groups_only_the_strategies_measured_to_keep_their_accuracy() -> None:
    from tunelab.strategies.catalog import CATALOG
    from tunelab.training.trainer import length_grouping

    assert [name for name, row in CATALOG.items() if row.groups_by_length] == ["full"]
    assert length_grouping("auto", "full") == "auto"
    assert length_grouping("auto", "lora") == "off"  # LoRA lost about 2 accuracy points in grouped batches
    assert length_grouping("on", "lora") == "on" and length_grouping("off", "full") == "off"
