"""`tunelab export --merge`: LoRA and IA3 folded into the base weights, written as a plain transformers folder
plus the head (and with `--onnx` as ONNX), matching the run's logits; strategies that cannot merge are refused and
nothing is written."""

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from tiny import TrainedRun, tiny_config, train_recording
from transformers import AutoModel, AutoTokenizer

from tunelab.api import load_predictor
from tunelab.assets.models import resolve_model
from tunelab.errors import TunelabError
from tunelab.export import CHECK_TEXTS, EXPORT_FILE, MERGE_TOLERANCE, ONNX_FILE, export_merged
from tunelab.modeling import pool


@pytest.fixture(scope="module", params=[("bert", "lora"), ("bert", "ia3"), ("llama", "lora")])
def trained(request: pytest.FixtureRequest, tiny_bert: Path, tiny_llama: Path, sentiment_csv: Path,
            runs_dir: Path) -> TrainedRun:
    model, strategy = request.param
    model_dir = {"bert": tiny_bert, "llama": tiny_llama}[model]
    return train_recording(tiny_config(model_dir, sentiment_csv, runs_dir / f"export-{model}-{strategy}", strategy,
                                       epochs=2))


def test_the_merged_export_predicts_what_the_run_does(trained: TrainedRun, tmp_path: Path):
    report = export_merged(trained.path, tmp_path / "merged")
    assert report["max_logit_difference"] <= MERGE_TOLERANCE
    assert set(report["latency_ms_per_example"]) == {"base", "merged", "unmerged"}
    exported = load_predictor(tmp_path / "merged")
    texts = CHECK_TEXTS + ["good great film", "awful"]
    np.testing.assert_allclose(exported.logits(texts), trained.predictor.logits(texts), atol=MERGE_TOLERANCE, rtol=0)


def test_the_export_is_a_plain_transformers_model(trained: TrainedRun, tmp_path: Path):
    """No peft, no tunelab: AutoModel + the pooling from 1_Pooling + the head's two tensors give the logits."""
    export_merged(trained.path, tmp_path / "merged")
    folder = tmp_path / "merged"
    backbone = AutoModel.from_pretrained(folder).eval()
    assert not any("lora" in name or "ia3" in name for name, _ in backbone.named_parameters())
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.padding_side = "right"
    head = load_file(str(folder / "head.safetensors"))
    batch = tokenizer(["good great film", "awful"], padding=True, return_tensors="pt")
    pooling = resolve_model(str(folder)).pooling
    assert pooling == trained.predictor.model.pooling
    with torch.no_grad():
        vectors = pool(backbone(**batch).last_hidden_state, batch["attention_mask"], pooling)
        logits = vectors @ head["weight"].T + head["bias"]
    np.testing.assert_allclose(logits.numpy(), trained.predictor.logits(["good great film", "awful"]),
                               atol=MERGE_TOLERANCE, rtol=0)


@pytest.mark.parametrize("strategy", ["prefix", "adapter"])
def test_strategies_that_cannot_merge_are_refused(tiny_bert: Path, sentiment_csv: Path, tmp_path: Path,
                                                  strategy: str):
    run = train_recording(tiny_config(tiny_bert, sentiment_csv, tmp_path / "run", strategy, epochs=1))
    with pytest.raises(TunelabError, match=rf"^{strategy} cannot be merged: .*; lora and ia3 merge$"):
        export_merged(run.path, tmp_path / "merged")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["run"]


def test_an_export_is_never_overwritten_by_accident(trained: TrainedRun, tmp_path: Path):
    target = tmp_path / "merged"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    with pytest.raises(TunelabError, match="exists and is not a tunelab export; refusing to replace it"):
        export_merged(trained.path, target, overwrite=True)
    with pytest.raises(TunelabError, match="already exists: choose another --output or pass --overwrite"):
        export_merged(trained.path, target)
    assert [path.name for path in target.iterdir()] == ["notes.txt"]
    export_merged(trained.path, tmp_path / "again")
    export_merged(trained.path, tmp_path / "again", overwrite=True)
    assert (tmp_path / "again" / EXPORT_FILE).exists()


def test_the_onnx_export_gives_the_runs_logits_in_onnxruntime(trained: TrainedRun, tmp_path: Path):
    """The whole classifier as ONNX, with batch and sequence length free: texts of other lengths and counts than
    the export saw give the run's logits."""
    import onnxruntime

    report = export_merged(trained.path, tmp_path / "onnx", onnx=True)
    assert report["onnx_max_logit_difference"] <= MERGE_TOLERANCE
    assert report["latency_ms_per_example"]["onnx"] > 0
    session = onnxruntime.InferenceSession(str(tmp_path / "onnx" / ONNX_FILE), providers=["CPUExecutionProvider"])
    texts = ["good great film", "awful", "a film", "the film was good and then it was not good at all"]
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "onnx")
    inputs = tokenizer(texts, truncation=True, max_length=16, padding=True, return_tensors="np")
    logits = session.run(["logits"], {name: inputs[name].astype(np.int64) for name in ("input_ids", "attention_mask")})
    np.testing.assert_allclose(logits[0], trained.predictor.logits(texts), atol=MERGE_TOLERANCE, rtol=0)


def test_onnx_without_its_libraries_is_one_line(bert_full, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import builtins

    real_import = builtins.__import__

    def without_onnxruntime(name: str, *args, **kwargs):
        if name == "onnxruntime":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without_onnxruntime)
    with pytest.raises(TunelabError, match=r"--onnx needs onnxruntime and onnxscript: pip install 'tunelab\[onnx\]'"):
        export_merged(bert_full.path, tmp_path / "onnx", onnx=True)
    assert not (tmp_path / "onnx").exists()
