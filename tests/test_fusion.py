"""AdapterFusion: the fusion attention's arithmetic, a fusion run over two adapter runs that trains only the fusion
and its head and reloads, and the sources refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file
from tiny import TrainedRun, run_main, tiny_config, train_recording

from tunelab.adapters.bottleneck import Bottleneck
from tunelab.adapters.fusion import Fusion
from tunelab.recipes.runs import load_run


def test_an_untrained_fusion_with_equal_scores_adds_the_mean_of_the_adapters():
    torch.manual_seed(0)
    sources = [Bottleneck(8, 2, "relu", 1.0) for _ in range(3)]
    for source in sources:
        torch.nn.init.normal_(source.up.weight)  # not the zero start, so that each adds something
    fusion = Fusion(8, sources)
    torch.nn.init.zeros_(fusion.query.weight)  # every score 0: equal weights
    hidden = torch.randn(2, 5, 8)
    expected = hidden + torch.stack([source(hidden) for source in sources]).mean(dim=0)
    torch.testing.assert_close(fusion(hidden), expected, atol=1e-6, rtol=0)


def test_fusion_weights_follow_the_scores():
    sources = [Bottleneck(4, 2, "relu", 1.0) for _ in range(2)]
    fusion = Fusion(4, sources)
    for projection in (fusion.query, fusion.key):
        torch.nn.init.eye_(projection.weight)
    sources[1].up.bias.data.fill_(10.0)  # the second adapter's output lines up with a query of large ones
    hidden = torch.ones(1, 1, 4)
    torch.testing.assert_close(fusion(hidden), hidden + sources[1](hidden), atol=1e-4, rtol=0)


@pytest.fixture(scope="module")
def bert_adapter(tiny_bert: Path, sentiment_csv: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainedRun:
    return train_recording(tiny_config(tiny_bert, sentiment_csv, tmp_path_factory.mktemp("runs") / "adapter",
                                       "adapter"))


@pytest.fixture(scope="module")
def fused(bert_adapter: TrainedRun, bert_adapter_three: TrainedRun, tiny_bert: Path, sentiment_csv: Path,
          tmp_path_factory: pytest.TempPathFactory) -> TrainedRun:
    sources = f"{bert_adapter.path},{bert_adapter_three.path}"
    return train_recording(tiny_config(tiny_bert, sentiment_csv, tmp_path_factory.mktemp("runs") / "fused",
                                       "fusion", {"sources": sources}, epochs=8, learning_rate=1e-2))


def test_a_fusion_run_trains_the_fusion_and_head_only_and_reloads(fused: TrainedRun, bert_adapter: TrainedRun,
                                                                  bert_adapter_three: TrainedRun):
    delta = load_file(str(fused.path / "delta.safetensors"))
    assert {key.split(".")[0] for key in delta} == {"fusion", "head"}
    assert {key.split(".")[1] for key in delta if key.startswith("fusion.")} == {
        f"layer{layer}_{site}" for layer in (0, 1) for site in ("attention", "ffn")}  # houlsby sources
    loaded = load_run(fused.path)
    for source, run in zip(loaded.model.fusion_sources, (bert_adapter, bert_adapter_three), strict=True):
        saved = load_file(str(run.path / "delta.safetensors"))  # the sources did not change while fusing
        for key, value in source.state_dict().items():
            torch.testing.assert_close(value, saved[f"adapters.{key}"], atol=0, rtol=0)
    texts = ["good great film", "awful terrible", "nice"]
    reloaded = loaded.predictor().logits(texts)
    np.testing.assert_allclose(reloaded, fused.predictor.logits(texts), atol=1e-6, rtol=0)
    assert fused.metrics["test"]["accuracy"] >= 0.75  # 12 test rows of the two-word-list task
    sources = yaml.safe_load((fused.path / "config.yaml").read_text())["strategy"]["options"]["sources"]
    assert sources == [str(bert_adapter.path.resolve()), str(bert_adapter_three.path.resolve())]


@pytest.fixture(scope="module")
def llama_adapter(tiny_llama: Path, sentiment_csv: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainedRun:
    return train_recording(tiny_config(tiny_llama, sentiment_csv, tmp_path_factory.mktemp("runs") / "llama-adapter",
                                       "adapter", epochs=1))


@pytest.fixture(scope="module")
def parallel_adapter(tiny_bert: Path, sentiment_csv: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainedRun:
    return train_recording(tiny_config(tiny_bert, sentiment_csv, tmp_path_factory.mktemp("runs") / "parallel",
                                       "adapter", {"variant": "parallel"}, epochs=1))


@pytest.mark.parametrize(("sources", "message"), [
    ("{adapter}", "strategy fusion: option 'sources': fusion needs at least two source runs"),
    ("{adapter},{lora}", "fusion source {lora} was trained with lora: fusion combines bottleneck adapter runs"),
    ("{adapter},{missing}", "fusion source {missing} is not a tunelab run directory"),
    ("{adapter},{llama}", "fusion source {llama} was trained on {llama_model}, another base model than this run's"),
    ("{adapter},{parallel}", "fusion source {parallel} has parallel adapters, which sit beside a layer"),
])
def test_bad_sources_are_one_line_and_nothing_is_written(
        sources: str, message: str, bert_adapter: TrainedRun, bert_lora: TrainedRun, llama_adapter: TrainedRun,
        parallel_adapter: TrainedRun, tiny_bert: Path, sentiment_csv: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture):
    names = {"adapter": bert_adapter.path, "lora": bert_lora.path, "missing": tmp_path / "missing",
             "llama": llama_adapter.path, "parallel": parallel_adapter.path, "llama_model": llama_adapter.config.model}
    output = tmp_path / "fused"
    code, _, err = run_main(["train", "--model", str(tiny_bert), "--data", str(sentiment_csv), "--strategy", "fusion",
                             "--option", f"sources={sources.format(**names)}", "--output", str(output), "--epochs",
                             "1"], monkeypatch, capsys)
    assert code == 2 and err.startswith("error: " + message.format(**names)), err
    assert len(err.strip().splitlines()) == 1 and not output.exists()


def test_compare_all_and_the_advisor_leave_fusion_out():
    from tunelab.compare.advisor import Situation, recommend
    from tunelab.strategies.catalog import STANDALONE

    assert "fusion" not in STANDALONE and "adapter" in STANDALONE
    assert "fusion" not in {advice.strategy for advice in recommend(Situation(samples=500))}


def test_fusion_serves_a_token_task_over_sentence_adapters(bert_adapter: TrainedRun, bert_adapter_three: TrainedRun,
                                                           tiny_bert: Path, tmp_path: Path):
    from test_token_classification import people, write_conll

    from tunelab import api, build_config
    from tunelab.task_catalog import recipe_for

    data = write_conll(people(40), tmp_path / "people.conll")
    config = build_config({
        "model": str(tiny_bert), "task": "token-classification", "data": {"source": str(data)},
        "strategy": {"name": "fusion", "options": {"sources": [str(bert_adapter.path), str(bert_adapter_three.path)]}},
        "training": {"max_length": 32, "batch_size": 8, "epochs": 2, "learning_rate": 1e-2},
        "output": str(tmp_path / "ner")})
    result = api.train(config, progress=False)
    sentence = ["Anna lives in Paris."]
    in_memory = recipe_for("token-classification").predict(result.predictor, sentence, None)
    assert api.predict(result.path, sentence) == in_memory  # the reloaded run tags as the trained one did
    assert "f1" in result.metrics["test"]
