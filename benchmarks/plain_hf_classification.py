"""The baseline: fine-tune a classifier (or with `--regression`, a regressor) with plain transformers (and peft for
LoRA), as the Hugging Face text-classification tutorial and peft's sequence-classification example do.

It deliberately does not import tunelab, so that `vs_plain.py` and `regression.py` measure tunelab against what a
user would write by hand from the docs. The data are CSV files with columns `text` and `label`; the script writes
one JSON object with its timings, test accuracy (or Pearson correlation) and peak resident memory. Regression is
the tutorial's own recipe for it: one output, so that transformers' model computes the MSE on the raw targets.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import numpy as np
import torch
from datasets import load_dataset
from peft import LoraConfig, TaskType, get_peft_model
from scipy.stats import pearsonr
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    EvalPrediction,
    Trainer,
    TrainingArguments,
    set_seed,
)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", required=True, help="local Hugging Face model folder")
    parser.add_argument("--train", required=True, help="CSV with columns text,label")
    parser.add_argument("--validation", required=True, help="CSV with columns text,label")
    parser.add_argument("--test", required=True, help="CSV with columns text,label")
    parser.add_argument("--epochs", type=float, default=3)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--lora-rank", type=int, default=0, help="> 0: LoRA (peft) on the query and value "
                                                                 "projections, alpha 2*rank, no dropout; 0: full")
    parser.add_argument("--regression", action="store_true", help="numeric labels: one output, MSE, Pearson")
    parser.add_argument("--bf16", action="store_true", help="TrainingArguments(bf16=True): the flag a user who knows "
                                                            "it sets")
    parser.add_argument("--output-dir", required=True, help="Trainer checkpoints")
    parser.add_argument("--result", required=True, help="JSON file to write the measurements to")
    return parser.parse_args()


def accuracy(prediction: EvalPrediction) -> dict[str, float]:
    """Accuracy with numpy: the tutorial uses `evaluate`, which is not installed here."""
    logits, labels = prediction
    return {"accuracy": float((np.argmax(logits, axis=-1) == labels).mean())}


def pearson(prediction: EvalPrediction) -> dict[str, float]:
    outputs, targets = prediction
    return {"pearson": float(pearsonr(outputs[:, 0], targets).statistic)}


def main() -> None:
    start = time.perf_counter()
    args = parse_args()
    data = load_dataset("csv", data_files={"train": args.train, "validation": args.validation, "test": args.test})
    labels = sorted(set(data["train"]["label"]))
    label2id = {label: index for index, label in enumerate(labels)}
    id2label = {index: label for label, index in label2id.items()}
    metric = "pearson" if args.regression else "accuracy"

    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)

    def preprocess(batch: dict[str, list]) -> dict[str, list]:
        encoded = tokenizer(batch["text"], truncation=True, max_length=args.max_length)
        encoded["labels"] = ([float(value) for value in batch["label"]] if args.regression
                             else [label2id[label] for label in batch["label"]])
        return encoded

    # The string `label` column gives way to integer `labels`: datasets would cast ints back into a string column.
    tokenized = data.map(preprocess, batched=True, remove_columns=["label"])
    set_seed(args.seed)  # seed the new head's initialisation too, as tunelab does; the Trainer seeds only later
    model = (AutoModelForSequenceClassification.from_pretrained(args.model_dir, num_labels=1) if args.regression
             else AutoModelForSequenceClassification.from_pretrained(args.model_dir, num_labels=len(labels),
                                                                     id2label=id2label, label2id=label2id))
    if args.lora_rank > 0:  # as the peft sequence-classification example does; the classifier trains fully
        config = LoraConfig(task_type=TaskType.SEQ_CLS, r=args.lora_rank, lora_alpha=2 * args.lora_rank,
                            lora_dropout=0.0, target_modules=["query", "value"])
        model = get_peft_model(model, config)
    training_args = TrainingArguments(
        output_dir=args.output_dir,
        learning_rate=args.lr,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=64,
        num_train_epochs=args.epochs,
        weight_decay=0.01,
        eval_strategy="epoch",
        save_strategy="epoch",
        load_best_model_at_end=True,
        metric_for_best_model=metric,
        save_total_limit=1,
        seed=args.seed,
        report_to="none",
        bf16=args.bf16,
        use_cpu=args.bf16 and not torch.cuda.is_available(),  # what the Trainer's error asks for bf16 on a CPU
    )
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=tokenized["train"],
        eval_dataset=tokenized["validation"],
        processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer=tokenizer),
        compute_metrics=pearson if args.regression else accuracy,
    )
    train_start = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - train_start
    test = trainer.evaluate(tokenized["test"], metric_key_prefix="test")
    result = {
        "train_s": round(train_s, 3),
        "total_s": round(time.perf_counter() - start, 3),
        f"test_{metric}": test[f"test_{metric}"],
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,  # Linux reports KiB
        "train_examples": len(tokenized["train"]),
        "validation_examples": len(tokenized["validation"]),
        "test_examples": len(tokenized["test"]),
    }
    Path(args.result).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
