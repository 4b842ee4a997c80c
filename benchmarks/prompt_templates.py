"""Zero-shot template and label-word candidates for a dataset, with and without contextual calibration.

How tunelab's default template for movie-snippets was chosen: every candidate is scored on the same test split
with the same model, raw and calibrated (Zhao et al. 2021), and the table is written as JSON.

    python benchmarks/prompt_templates.py --model smollm2 --data movie-snippets --output benchmarks/results/x.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--data", default="movie-snippets")
    parser.add_argument("--limit-eval", type=int, default=None, help="score only the first N test examples")
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/prompt_templates.json"))
    args = parser.parse_args()

    import transformers

    from tunelab import build_config
    from tunelab.api import load_splits
    from tunelab.predict import Predictor
    from tunelab.prompting.model import calibrated
    from tunelab.runs import build_classifier
    from tunelab.tasks.classification import classification_metrics

    transformers.logging.set_verbosity_error()
    results = []
    for template, words in CANDIDATES:
        config = build_config({"model": args.model, "strategy": {"name": "zero-shot"},
                               "data": {"source": args.data, "limit_eval": args.limit_eval},
                               "prompt": {"template": template, "verbalizer": words}})
        splits, label_map = load_splits(config)
        model, tokenizer = build_classifier(config, label_map)
        label_ids = np.array(label_map.encode(splits.test["label"].tolist(), "test"))
        start = time.perf_counter()
        raw = Predictor(model, tokenizer, label_map, config.training.max_length).logits(splits.test)
        seconds = time.perf_counter() - start
        bias = model.content_free_probabilities()
        calibrated_logits = calibrated(torch.from_numpy(raw), bias).numpy()
        row = {"template": template, "verbalizer": words, "examples": len(label_ids),
               "accuracy": classification_metrics(raw, label_ids, label_map)["accuracy"],
               "accuracy_calibrated": classification_metrics(calibrated_logits, label_ids, label_map)["accuracy"],
               "content_free_probabilities": dict(zip(label_map.labels, bias.tolist(), strict=True)),
               "ms_per_example": 1000 * seconds / len(label_ids)}
        results.append(row)
        print(json.dumps(row))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"model": args.model, "data": args.data, "candidates": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
