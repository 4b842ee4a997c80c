"""One strategy's training cost, measured in this (fresh) process: median step time, delta bytes, parameters.

Called by `strategy_costs.py`, once per strategy. It builds the classifier exactly as `tunelab train` does, then
times forward + backward + fused AdamW (the Trainer's default optimizer) on the same fixed batches of
movie-snippets training texts (32 per batch, padded to the batch's longest text, at most 128 tokens), so that the
strategies differ only in what they train. `--precision bf16` runs the forward under bf16 autocast, as the Trainer
does with `bf16=True`; `--grouped` takes the batches in the order tunelab's length-grouped sampler gives.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
import transformers

from tunelab.batching import LengthBucketSampler
from tunelab.config import build_config
from tunelab.recipes.classification import RECIPE
from tunelab.strategies.base import count_parameters
from tunelab.strategies.registry import configure


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strategy", required=True)
    parser.add_argument("--steps", type=int, default=12, help="timed steps, after 2 warm-up steps")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--options", default="{}", help="strategy options as JSON (default: the strategy's own)")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--grouped", action="store_true", help="batches of similar length (LengthBucketSampler)")
    parser.add_argument("--result", required=True, help="JSON file to write")
    args = parser.parse_args()
    config = build_config({"strategy": {"name": args.strategy, "options": json.loads(args.options)},
                           "data": {"limit_train": 2000}})
    strategy = configure(config.strategy, config.training)
    prepared = RECIPE.prepare(config)
    splits, label_map = prepared.splits, prepared.targets
    transformers.set_seed(0)
    model, tokenizer = RECIPE.build(config, strategy, label_map)
    model.train()
    texts = splits.train["text"].tolist()
    labels = torch.tensor(label_map.encode(splits.train["label"].tolist(), "train"))
    if args.grouped:
        lengths = [len(ids) for ids in tokenizer(texts, truncation=True, max_length=128)["input_ids"]]
        torch.manual_seed(0)
        order = list(LengthBucketSampler(lengths, args.batch_size))
        texts, labels = [texts[index] for index in order], labels[order]
    trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]
    # What tunelab's Trainer uses on torch >= 2.8: the fused AdamW kernel, weight decay from the config.
    optimizer = torch.optim.AdamW(trainable, lr=strategy.learning_rate,
                                  weight_decay=config.training.weight_decay, fused=True)
    timings, padded_tokens = [], 0
    for step in range(args.steps + 2):
        rows = slice(step * args.batch_size, (step + 1) * args.batch_size)
        batch = tokenizer(texts[rows], truncation=True, max_length=128, padding=True, return_tensors="pt")
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16"):
            loss = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                         labels=labels[rows]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step >= 2:
            timings.append(time.perf_counter() - start)
            padded_tokens += batch["input_ids"].numel()
    with tempfile.TemporaryDirectory() as folder:
        files = strategy.save_delta(model, Path(folder))
        delta_bytes = sum(path.stat().st_size for path in files)
    trainable_count, total = count_parameters(model)
    Path(args.result).write_text(json.dumps({
        "strategy": args.strategy, "precision": args.precision, "grouped": args.grouped,
        "padded_tokens": padded_tokens, "step_s_median": statistics.median(timings),
        "step_s_mean": statistics.mean(timings), "step_s": timings,
        "delta_bytes": delta_bytes, "trainable_parameters": trainable_count, "total_parameters": total,
        "trainable_share": trainable_count / total, "torch_threads": torch.get_num_threads(),
    }, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
