"""Zero-shot template and label-word candidates for a dataset, with and without contextual calibration.

How tunelab's default template for movie-snippets was chosen: every candidate is scored with the same model on
the validation split (where a default should be chosen) and the test split (what the README quotes), raw and
calibrated (Zhao et al. 2021); results go to benchmarks/results/prompt_templates.json.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from common import log, machine, main_for, write_result

NAME = "prompt_templates"
# (template, label words); the chat-format candidate speaks to SmolLM2-Instruct the way it was tuned.
CANDIDATES = [
    ("Review: {text}\nSentiment: {label}", {"negative": ["negative"], "positive": ["positive"]}),
    ("Review: {text}\nSentiment: {label}", {"negative": ["negative", "bad"], "positive": ["positive", "good"]}),
    ("{text} Overall, it was a {label}", {"negative": ["bad"], "positive": ["great"]}),
    ("{text} It was {label}", {"negative": ["terrible"], "positive": ["great"]}),
    ("Movie review: {text}\nThe sentiment of this review is {label}",
     {"negative": ["negative"], "positive": ["positive"]}),
    ("Review: {text}\nIs this review positive or negative? Answer: {label}",
     {"negative": ["negative"], "positive": ["positive"]}),
    ("<|im_start|>user\nIs this movie review positive or negative?\n{text}<|im_end|>\n<|im_start|>assistant\n"
     "{label}", {"negative": ["Negative"], "positive": ["Positive"]}),
]


def score(template: str, words: dict, settings: dict[str, Any]) -> dict[str, Any]:
    """Raw and calibrated accuracy of one candidate on each split, and its content-free label probabilities."""
    import transformers

    from tunelab import build_config
    from tunelab.predict import Predictor
    from tunelab.prompting.model import calibrated
    from tunelab.recipes.classification import RECIPE
    from tunelab.strategies.registry import configure
    from tunelab.tasks.classification import classification_metrics

    transformers.logging.set_verbosity_error()
    config = build_config({"model": settings["model"], "strategy": {"name": "zero-shot"},
                           "data": {"source": settings["data"], "limit_eval": settings["limit_eval"]},
                           "prompt": {"template": template, "verbalizer": words}})
    prepared = RECIPE.prepare(config)
    splits, label_map = prepared.splits, prepared.targets
    model, tokenizer = RECIPE.build(prepared.config, configure(config.strategy), label_map)
    bias = model.content_free_probabilities()
    row: dict[str, Any] = {"template": template, "verbalizer": words,
                           "content_free_probabilities": dict(zip(label_map.labels, bias.tolist(), strict=True))}
    for split in settings["splits"]:
        examples = getattr(splits, split)
        label_ids = np.array(label_map.encode(examples["label"].tolist(), split))
        start = time.perf_counter()
        raw = Predictor(model, tokenizer, label_map, config.training.max_length).logits(examples)
        row[split] = {"examples": len(label_ids), "ms_per_example": 1000 * (time.perf_counter() - start) / len(raw),
                      "accuracy": classification_metrics(raw, label_ids, label_map)["accuracy"],
                      "accuracy_calibrated": classification_metrics(calibrated(torch.from_numpy(raw), bias).numpy(),
                                                                    label_ids, label_map)["accuracy"]}
    return row


def run_benchmark(repeats: int = 1, quick: bool = False, keep: bool = False, model: str = "smollm2",
                  data: str = "movie-snippets", splits: str = "validation,test") -> dict[str, Any]:
    """`repeats` is unused: scoring is deterministic."""
    settings = {"model": model, "data": data, "splits": splits.split(","), "limit_eval": 50 if quick else None}
    results = []
    for template, words in CANDIDATES[:2] if quick else CANDIDATES:
        results.append(score(template, words, settings))
        log(f"{NAME}: {template!r} {words}: " + ", ".join(
            f"{split} {results[-1][split]['accuracy']:.4f} (calibrated {results[-1][split]['accuracy_calibrated']:.4f})"
            for split in settings["splits"]))
    chosen = max(results, key=lambda row: row[settings["splits"][0]]["accuracy"])
    result = {"benchmark": NAME, "quick": quick, "settings": settings, "machine": machine(),
              "best_on_first_split": chosen["template"], "candidates": results}
    path = write_result(NAME, result, quick)
    log(f"{NAME}: wrote {path}")
    return result


if __name__ == "__main__":
    main_for(run_benchmark, __doc__.splitlines()[0], 1, "2 candidates, 50 examples per split", extra={
        "--model": {"default": "smollm2"}, "--data": {"default": "movie-snippets"},
        "--splits": {"default": "validation,test", "help": "comma-separated; the first one chooses"}})
