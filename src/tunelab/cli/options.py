"""What several commands parse the same way: the run config from YAML, flags and overrides; lists and sizes; where
runs train."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any

import typer

from tunelab.errors import TunelabError

# CLI flag -> dotted config key; a flag left unset leaves the YAML (or default) value alone.
FLAG_KEYS = {
    "model": "model", "task": "task", "data": "data.source", "strategy": "strategy.name", "output": "output",
    "text_column": "data.text_column", "label_column": "data.label_column",
    "prompt_column": "data.prompt_column", "completion_column": "data.completion_column",
    "messages_column": "data.messages_column",
    "limit_train": "data.limit_train", "limit_eval": "data.limit_eval", "epochs": "training.epochs",
    "lr": "training.learning_rate", "batch_size": "training.batch_size", "max_length": "training.max_length",
    "seed": "training.seed", "shots": "data.shots", "tune": "strategy.options.tune", "calibrate": "prompt.calibrate",
    "min_steps": "training.min_steps", "class_weights": "training.class_weights", "select_on": "training.select_on",
    "precision": "training.precision", "group_by_length": "training.group_by_length",
    "checkpoint_every": "training.checkpoint_every", "micro_batch_size": "training.micro_batch_size",
    "eval_batch_size": "training.eval_batch_size",
    "distributed": "training.distributed",
}
TEMPLATE_HELP = "prompt-based: e.g. 'Review: {text}\\nSentiment: {label}' (\\n is a newline; default: the dataset's)"
PRECISION_HELP = ("auto (bf16 where this machine computes it natively: CUDA GPUs with bf16, CPUs with avx512_bf16 "
                  "or AMX; else fp32), fp32, bf16 or fp16 (CUDA only)")
VERBALIZER_HELP = "prompt-based: LABEL=WORDS, e.g. positive=' great, good' (repeatable; default: the label names)"


def run_config(config_file: Path | None, flags: dict[str, Any], set_: list[str] | None, option: list[str] | None,
            template: str | None, verbalizer: list[str] | None, base: dict[str, Any] | None = None) -> Any:
    """The run config: the YAML file (or `base`), then the flags that were given, then --set and --option
    overrides."""
    from tunelab.config import build_config, parse_override, read_yaml

    flags = {**flags, **batch_flags(flags.get("batch_size"), flags.get("micro_batch_size"))}
    overrides: dict[str, Any] = {FLAG_KEYS[key]: (str(value) if isinstance(value, Path) else value)
                                 for key, value in flags.items() if key in FLAG_KEYS and value is not None}
    overrides.update((f"prompt.{key}", value) for key, value in prompt_settings(template, verbalizer).items())
    overrides.update(parse_override(text) for text in set_ or [])
    overrides.update((f"strategy.options.{key}", value) for key, value in map(parse_override, option or []))
    return build_config(read_yaml(config_file) if config_file else base or {}, overrides)


def batch_flags(batch_size: int | str | None, micro_batch_size: str | None) -> dict[str, Any]:
    """`--batch-size N` or `auto`, `--micro-batch-size N` or `auto`, as numbers. `--batch-size auto` keeps the batch
    (the optimizer's, which the optimisation depends on) and finds the largest micro-batch that fits, as
    `--micro-batch-size auto` does."""
    if batch_size == "auto":
        if micro_batch_size is not None:
            raise TunelabError("--batch-size auto finds the micro-batch that fits: leave out --micro-batch-size")
        return {"batch_size": None, "micro_batch_size": "auto"}
    return {"batch_size": count_or_auto(batch_size, "--batch-size", auto=False),
            "micro_batch_size": count_or_auto(micro_batch_size, "--micro-batch-size", auto=True)}


def count_or_auto(text: int | str | None, option: str, auto: bool) -> int | str | None:
    if text is None or isinstance(text, int) or (auto and text == "auto"):
        return text
    if text.isdigit() and int(text) > 0:
        return int(text)
    raise TunelabError(f"{option} '{text}' is not a number of examples or auto")


def prompt_settings(template: str | None, verbalizer: list[str] | None) -> dict[str, Any]:
    """--template (with \\n and \\t typed as such) and --verbalizer LABEL=WORDS flags as the prompt section's keys."""
    settings: dict[str, Any] = {}
    if template is not None:
        settings["template"] = template.replace("\\n", "\n").replace("\\t", "\t")
    if verbalizer:
        settings["verbalizer"] = dict(label_words(text) for text in verbalizer)
    return settings


def label_words(text: str) -> tuple[str, str]:
    """'positive= great, good' -> ('positive', ' great, good'): the words keep their leading space."""
    label, sep, words = text.partition("=")
    if not sep or not label.strip():
        raise TunelabError(f"--verbalizer '{text}' is not LABEL=WORDS, e.g. positive=' great, good'")
    return label.strip(), words


def _not_deepspeeds_cpu_notice(record: logging.LogRecord) -> bool:
    """DeepSpeed announces on import, on every machine without a GPU, that it falls back to the CPU."""
    return not record.getMessage().startswith("Setting accelerator to CPU.")


def quiet_libraries() -> None:
    import warnings

    import transformers

    logging.getLogger("DeepSpeed").addFilter(_not_deepspeeds_cpu_notice)  # the logger DeepSpeed makes on import

    # the libraries' deprecation notices about their own defaults (TRL sets a renamed TrainingArguments field)
    warnings.filterwarnings("ignore", category=FutureWarning)

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()  # weight-loading bars; training keeps its own


def comma_list(text: str, what: str, cast: type = str) -> list:
    try:
        return [cast(item.strip()) for item in text.split(",") if item.strip()]
    except ValueError:
        raise TunelabError(f"--{what} '{text}' is not a comma-separated list, e.g. --{what} 64,512") from None



PARAMETER_UNITS = {"K": 1e3, "M": 1e6, "B": 1e9, "T": 1e12}
MEMORY_UNITS_GB = {"MB": 1e-3, "M": 1e-3, "GB": 1.0, "G": 1.0, "TB": 1e3, "T": 1e3}


def size_amount(text: str, units: dict[str, float], option: str, example: str) -> float:
    """'7B' -> 7e9 with PARAMETER_UNITS, '16GB' -> 16 with MEMORY_UNITS_GB; a bare number is taken as it is."""
    value = text.strip().upper()
    unit = max((suffix for suffix in units if value.endswith(suffix)), key=len, default="")
    try:
        return float(value.removesuffix(unit)) * units.get(unit, 1.0)
    except ValueError:
        raise TunelabError(f"{option} '{text}' is not a size; write it like {example}") from None



# Where `compare` and `search` train their runs; one run is one Ray task.
ExecutorFlag = Annotated[str, typer.Option(help="where runs train: local (processes on this machine) or ray (tasks "
                                                "on a Ray cluster; every node sees the folder at the same path)")]
AddressFlag = Annotated[str | None, typer.Option(help="--executor ray: the cluster's head as HOST:PORT, or auto "
                                                      "[default: start Ray on this machine's cores]")]
CpusFlag = Annotated[int | None, typer.Option("--cpus-per-run", min=1, help="--executor ray: CPUs each run asks "
                                              "for (its torch threads) [default: this machine's cores shared as "
                                              "locally, at most a node's]")]
GpusFlag = Annotated[float | None, typer.Option("--gpus-per-run", min=0, help="--executor ray: GPUs each run asks "
                                                "for (0.5 shares one) [default: 1 where the cluster has GPUs]")]
MemoryFlag = Annotated[str | None, typer.Option("--memory-per-run", help="--executor ray: memory each run reserves, "
                                                "e.g. 8GB [default: none reserved]")]


def executor_choice(executor: str, address: str | None, cpus: int | None, gpus: float | None,
                    memory: str | None) -> Any:
    from tunelab.compare.executors import ExecutorChoice

    memory_gb = None if memory is None else size_amount(memory, MEMORY_UNITS_GB, "--memory-per-run", "8GB")
    return ExecutorChoice(executor, address, cpus, gpus, memory_gb)
