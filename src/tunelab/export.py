"""Export a trained run as a merged model: the delta folded into the base weights, written as a plain
transformers folder (which is also a sentence-transformers folder) plus the classification head, and on request
the whole classifier (tokens in, logits out) as ONNX.

The export is checked before it is written: the merged model's logits (and the ONNX model's, run by onnxruntime)
must match the run's within `MERGE_TOLERANCE`, and latency at batch size 1 is measured next to the base model's
and the unmerged run's, which is the claim that makes merging worth it (LoRA adds no inference latency once
merged). ONNX comes from torch's own exporter: optimum's (optimum-onnx 0.1) pins transformers below 4.58.
"""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from tunelab.assets.models import Pooling, resolve_model
from tunelab.config import Precision
from tunelab.errors import TunelabError
from tunelab.modeling import load_backbone, load_tokenizer
from tunelab.precision import in_precision, resolve_precision
from tunelab.predict import Predictor
from tunelab.recipes.runs import load_run
from tunelab.resources import latency_per_example_ms
from tunelab.runs import StagedRun, verify_manifest, write_json
from tunelab.strategies.registry import get_strategy
from tunelab.tasks.classification import LabelMap, SequenceClassifier

EXPORT_FILE = "tunelab_export.json"
HEAD_FILE = "head.safetensors"
ONNX_FILE = "model.onnx"
MERGE_TOLERANCE = 1e-4
# Texts of different lengths on which the merged and unmerged models must agree, and latency is timed.
CHECK_TEXTS = [
    "A gripping, beautifully acted film.", "Dull.",
    "The plot wanders and the jokes fall flat, but the score is lovely.",
    "I would not recommend this product to anyone who values their time or money.", "Great value, works as described.",
    "The editorial makes a careful case, yet its conclusion ignores the evidence it cites in the second paragraph.",
    "ok", "An utterly forgettable sequel that squanders a talented cast on a script nobody seems to have finished.",
]


def _sentence_transformers_files(folder: Path, pooling: Pooling, hidden_size: int) -> None:
    """modules.json and 1_Pooling/config.json: tunelab (and sentence-transformers) read the pooling from them."""
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    write_json(folder / "modules.json", modules)
    (folder / "1_Pooling").mkdir()
    write_json(folder / "1_Pooling" / "config.json", {
        "word_embedding_dimension": hidden_size, "pooling_mode_cls_token": pooling == "cls",
        "pooling_mode_mean_tokens": pooling == "mean", "pooling_mode_lasttoken": pooling == "last"})


def _latency_ms(predictor: Predictor) -> float:
    return round(latency_per_example_ms(lambda text: predictor.logits([text]), CHECK_TEXTS * 4), 3)


class _Logits(nn.Module):
    """The classifier as ONNX sees it: token ids and mask in, logits out."""

    def __init__(self, classifier: SequenceClassifier):
        super().__init__()
        self.classifier = classifier

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.classifier(input_ids=input_ids, attention_mask=attention_mask).logits


def _onnxruntime() -> Any:
    try:
        import onnxruntime
        import onnxscript  # noqa: F401  (torch's exporter needs it)
    except ImportError:
        raise TunelabError("--onnx needs onnxruntime and onnxscript: pip install 'tunelab[onnx]'") from None
    return onnxruntime


def export_onnx(model: SequenceClassifier, tokenizer: Any, max_length: int, path: Path) -> Callable[[str], np.ndarray]:
    """Write the classifier to `path` as ONNX (batch and sequence length dynamic) and return a function that runs
    onnxruntime on a batch of texts, for the checks."""
    onnxruntime = _onnxruntime()
    encode = lambda texts: tokenizer(texts, truncation=True, max_length=max_length, padding=True,  # noqa: E731
                                     return_tensors="np")
    example = encode(CHECK_TEXTS[:2])
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(_Logits(model).eval(), (torch.tensor(example["input_ids"]),
                                                  torch.tensor(example["attention_mask"])), str(path),
                          input_names=["input_ids", "attention_mask"], output_names=["logits"], dynamo=True,
                          dynamic_shapes={"input_ids": {0: batch, 1: sequence},
                                          "attention_mask": {0: batch, 1: sequence}}, verbose=False)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()  # as many threads as PyTorch, for a fair latency
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def logits(texts: list[str]) -> np.ndarray:
        inputs = encode(texts)
        return session.run(["logits"], {"input_ids": inputs["input_ids"].astype(np.int64),
                                        "attention_mask": inputs["attention_mask"].astype(np.int64)})[0]
    return logits


def export_merged(run_dir: Path, output: Path, overwrite: bool = False, onnx: bool = False) -> dict[str, Any]:
    """Fold the run's delta into the base weights and write the merged classifier to `output`; with `onnx`, also
    the classifier as `model.onnx`, checked against the run in onnxruntime."""
    staged = StagedRun(output, overwrite, marker=EXPORT_FILE, kind="tunelab export")
    if onnx:
        _onnxruntime()  # refused before anything loads
    run = load_run(run_dir, "fp32")  # the merged weights are checked against the run's outputs in fp32
    if run.config.task != "classification":
        raise TunelabError(f"{run_dir} is a {run.config.task} run; export writes classifiers (a plain model plus a "
                           f"linear head over labels) so far: use the run directory itself")
    strategy = get_strategy(run.config.strategy.name)
    if strategy.prompt_based:
        raise TunelabError(f"{strategy.name} runs classify through a template and label words, which an export "
                           f"(a plain model plus a linear head) cannot hold; use the run directory itself")
    max_length = run.config.training.max_length
    unmerged = Predictor(run.model, run.tokenizer, run.targets, max_length)
    expected, unmerged_latency = unmerged.logits(CHECK_TEXTS), _latency_ms(unmerged)
    strategy.merge(run.model)
    merged = Predictor(run.model, run.tokenizer, run.targets, max_length)
    difference = float(np.abs(merged.logits(CHECK_TEXTS) - expected).max())
    if difference > MERGE_TOLERANCE:
        raise TunelabError(f"the merged model's logits differ from the run's by {difference:.2e} "
                           f"(> {MERGE_TOLERANCE:.0e}); nothing was written")
    spec = resolve_model(run.config.model)
    base = SequenceClassifier(load_backbone(spec), len(run.targets.labels), spec.pooling)
    base.head.load_state_dict(run.model.head.state_dict())
    report = {
        "source_run": str(run_dir), "base_model": run.config.model, "strategy": strategy.name,
        "labels": run.targets.labels, "pooling": spec.pooling, "max_length": max_length,
        "max_logit_difference": difference,
        "latency_ms_per_example": {"base": _latency_ms(Predictor(base, run.tokenizer, run.targets, max_length)),
                                   "merged": _latency_ms(merged), "unmerged": unmerged_latency},
    }
    with staged:
        if onnx:
            report["onnx_max_logit_difference"], report["latency_ms_per_example"]["onnx"] = _checked_onnx(
                run.model, run.tokenizer, max_length, staged.path / ONNX_FILE, expected)
        run.model.backbone.save_pretrained(staged.path)
        run.tokenizer.save_pretrained(staged.path)
        _sentence_transformers_files(staged.path, spec.pooling, run.model.backbone.config.hidden_size)
        head = run.model.head[-1]
        save_file({"weight": head.weight.detach().contiguous(), "bias": head.bias.detach().contiguous()},
                  str(staged.path / HEAD_FILE))
        write_json(staged.path / EXPORT_FILE, report)
        staged.commit()
    return report


def _checked_onnx(model: SequenceClassifier, tokenizer: Any, max_length: int, path: Path,
                  expected: np.ndarray) -> tuple[float, float]:
    """Export to ONNX and check it against the run's logits: (max |logit difference|, latency in ms/example)."""
    logits = export_onnx(model, tokenizer, max_length, path)
    difference = float(np.abs(logits(CHECK_TEXTS) - expected).max())
    if difference > MERGE_TOLERANCE:
        raise TunelabError(f"the ONNX model's logits differ from the run's by {difference:.2e} "
                           f"(> {MERGE_TOLERANCE:.0e}); nothing was written")
    return difference, round(latency_per_example_ms(lambda text: logits([text]), CHECK_TEXTS * 4), 3)


def is_export(path: Path) -> bool:
    return (path / EXPORT_FILE).exists()


def load_export(path: Path, precision: Precision = "auto") -> Predictor:
    """A merged export as a predictor in `precision`: plain transformers backbone, pooling, and the saved head."""
    verify_manifest(path)
    report = json.loads((path / EXPORT_FILE).read_text(encoding="utf-8"))
    spec = resolve_model(str(path))
    label_map = LabelMap(report["labels"])
    model = SequenceClassifier(load_backbone(spec), len(label_map.labels), spec.pooling)
    model.head[-1].load_state_dict(load_file(str(path / HEAD_FILE)))
    return Predictor(in_precision(model.eval(), resolve_precision(precision)), load_tokenizer(spec), label_map,
                     report["max_length"])
