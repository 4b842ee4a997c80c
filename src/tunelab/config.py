"""The run configuration: typed, validated on construction, read from YAML with `key=value` overrides."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from tunelab.errors import TunelabError
from tunelab.task_catalog import TASKS

CONFIG_FILE = "config.yaml"  # a run directory's resolved config

SEED_MAX = 2**32 - 1  # what NumPy and scikit-learn take as a seed

Precision = Literal["auto", "fp32", "bf16", "fp16"]  # resolved for the hardware by `tunelab.precision`
Distributed = Literal["ddp", "fsdp", "deepspeed-zero2", "deepspeed-zero3"]  # `tunelab.engines` has a row for each


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Section):
    source: str = Field("movie-snippets", description="catalog name, CSV/TSV/JSONL/Parquet file, or HF dataset id")
    text_column: str = Field("text", description="column holding the input text")
    label_column: str = Field("label", description="column holding the label")
    prompt_column: str = Field("prompt", description="generation: column holding the prompt")
    completion_column: str = Field("completion", description="generation: column holding the target completion")
    messages_column: str = Field("messages", description="generation: column holding chat conversations (lists of "
                                                         "{role, content}); a source with it is chat data")
    tokens_column: str = Field("tokens", description="token-classification: column holding each sentence's words, "
                                                     "a list (JSONL, Parquet; CoNLL files have columns instead)")
    tags_column: str = Field("tags", description="token-classification: column holding each word's tag, a list")
    tag_scheme: Literal["auto", "IOB1", "IOB2", "BIOES"] = Field(
        "auto", description="token-classification: the data's tag scheme (BIO is IOB2, IOBES is BIOES); auto detects "
                            "it and reads the tags as conlleval does, a named scheme is checked strictly")
    test_size: float = Field(0.15, gt=0, description="test split: a fraction (< 1) or a count of examples")
    validation_size: float = Field(0.1, gt=0, description="validation split: a fraction (< 1) or a count")
    split_seed: int = Field(0, ge=0, le=SEED_MAX, description="seed of the split; fixed apart from the training seed")
    limit_train: int | None = Field(None, gt=0, description="use at most N training examples (stratified)")
    limit_validation: int | None = Field(None, gt=0, description="choose the best epoch on at most N validation "
                                                                 "examples (stratified); the test split stays")
    limit_eval: int | None = Field(None, gt=0, description="evaluate on at most N validation/test examples")
    shots: int | None = Field(None, gt=0, description="few-shot: train on K examples per label and validate on K "
                                                      "per label, drawn with the training seed; the test split stays")

    @field_validator("tag_scheme", mode="before")
    @classmethod
    def _scheme_name(cls, value: Any) -> Any:
        """Scheme names in any case, and their other names: BIO (IOB2) and IOBES (BIOES)."""
        if not isinstance(value, str):
            return value
        name = value.upper()
        return {"AUTO": "auto", "BIO": "IOB2", "IOBES": "BIOES"}.get(name, name)


OPTION_DEPTH = 8  # lists and mappings in a strategy option nest at most this deep


def _plain(value: Any, levels: int = OPTION_DEPTH, inside: tuple[int, ...] = ()) -> None:
    """Raise ValueError unless `value` is plain data a run can save as YAML: not nested past `levels`, and holding
    no list or mapping inside itself (a YAML alias such as `&a [*a]` builds one)."""
    if not isinstance(value, list | dict):
        return
    if id(value) in inside:
        raise ValueError("it holds itself (a YAML alias of its own list or mapping)")
    if levels == 0:
        raise ValueError(f"it nests lists or mappings more than {OPTION_DEPTH} deep")
    for item in value.values() if isinstance(value, dict) else value:
        _plain(item, levels - 1, (*inside, id(value)))


class StrategyConfig(_Section):
    name: str = Field("full", description="a strategy from `tunelab strategies`")
    options: dict[str, Any] = Field(default_factory=dict, description="strategy-specific options")

    @field_validator("options")
    @classmethod
    def _options_are_plain(cls, options: dict[str, Any]) -> dict[str, Any]:
        _plain(options)
        return options


class PromptConfig(_Section):
    """How prompt-based strategies (zero-shot, pet, soft-template) ask the language model for a label."""

    template: str | None = Field(None, description="e.g. 'Review: {text}\\nSentiment: {label}'; {label} is the slot "
                                                   "the label word fills (default: the end); default: the dataset's")
    verbalizer: dict[str, list[str] | str] | None = Field(
        None, description="label -> label words (a list, or one comma-separated string); default: each label's name")
    word_score: Literal["sum", "mean"] = Field(
        "sum", description="a multi-token word's score: the sum (its log-probability) or the mean of its tokens'")
    calibrate: bool = Field(False, description="contextual calibration (Zhao et al. 2021): divide by the label "
                                               "probabilities of content-free inputs")


class TrainingConfig(_Section):
    epochs: float | None = Field(None, gt=0, description="passes over the training data (strategy default)")
    learning_rate: float | None = Field(None, gt=0, description="peak learning rate (strategy default)")
    batch_size: int = Field(32, gt=0, description="examples per optimizer step, over all processes")
    micro_batch_size: Annotated[int, Field(gt=0)] | Literal["auto"] | None = Field(
        None, description="examples per forward and backward on one device: the batch is computed in micro-batches "
                          "whose gradients add up (gradient accumulation), so the optimisation stays the batch's; "
                          "auto: the largest that fits in memory, found by a probe before training (default: the "
                          "whole batch at once)")
    eval_batch_size: int = Field(64, gt=0, description="examples per forward when evaluating and predicting")
    max_length: int = Field(128, gt=0, description="tokens per example; longer inputs are truncated")
    weight_decay: float = Field(0.01, ge=0)
    warmup_ratio: float = Field(0.0, ge=0, lt=1)
    seed: int = Field(42, ge=0, le=SEED_MAX, description="seeds model initialisation, dropout and data order")
    min_steps: int = Field(100, ge=0, description="with the strategy's default epochs, at least this many optimizer "
                                                  "steps: small training sets get more epochs (explicit epochs stay)")
    class_weights: Literal["none", "balanced"] = Field(
        "none", description="classification: weigh each class's loss by n / (classes x its count) in the training "
                            "split (balanced), so rare classes count as much as common ones")
    select_on: Literal["auto", "accuracy", "macro-f1", "loss"] = Field(
        "auto", description="classification: the validation metric that picks the epoch kept; auto is macro-F1 when a "
                            "class has under half its even share of the training split, else accuracy")
    precision: Precision = Field(
        "auto", description="fp32, or bf16/fp16 autocast (fp32 weights and optimizer state); auto is bf16 where the "
                            "hardware computes it natively (CUDA GPUs with bf16, CPUs with avx512_bf16 or AMX), "
                            "else fp32")
    group_by_length: Literal["auto", "on", "off"] = Field(
        "auto", description="training batches of similar length (shuffled buckets, so the order still randomises): "
                            "less padding to compute; auto groups the strategies measured to keep their accuracy "
                            "(full) when random batches would be at least 20% padding")
    distributed: Distributed = Field(
        "ddp", description="how several processes (--nproc) train one model: ddp (each holds it whole), fsdp (FSDP2: "
                           "weights, gradients and optimizer state sharded; GPUs), deepspeed-zero2 (optimizer state "
                           "and gradients sharded) or deepspeed-zero3 (weights too)")
    gradient_checkpointing: bool = Field(False, description="recompute each layer's activations in the backward "
                                                            "pass instead of keeping them: less memory, more compute")
    logging_steps: int = Field(50, gt=0)
    report_to: list[str] = Field(default_factory=list, description="e.g. [tensorboard] or [mlflow]")
    keep_checkpoints: bool = Field(False, description="keep the Trainer's checkpoints (full weights and "
                                                      "optimizer state) in the run; the delta is always kept")
    checkpoint_every: int | None = Field(None, gt=0, description="a resumable checkpoint every N optimizer steps "
                                                                 "(and each epoch): a killed run resumes when the same "
                                                                 "command runs again")


class GenerationConfig(_Section):
    """How a generation run's own answers are scored, next to the loss of the reference answers."""

    rouge_examples: int = Field(64, ge=0, description="ROUGE-L of greedy answers to the first N test examples, "
                                                      "before and after training (0: loss and perplexity only)")
    max_new_tokens: int = Field(64, gt=0, description="ROUGE-L: tokens each greedy answer may take")


class QuestionAnsweringConfig(_Section):
    """How extractive question answering windows long contexts and picks an answer span (as Hugging Face's run_qa)."""

    doc_stride: int = Field(128, ge=0, description="tokens of overlap between the windows of a context longer than "
                                                   "max_length; capped at half of a window's room for context")
    n_best: int = Field(20, gt=0, description="start and end candidates per window whose spans are scored")
    max_answer_length: int = Field(30, gt=0, description="longest answer span, in tokens")
    null_threshold: float = Field(0.0, description="SQuAD 2.0: answer nothing when the null score beats the best "
                                                   "span's score by more than this")
    no_answer: bool | None = Field(None, description="may answer nothing (SQuAD 2.0); default: when the data has "
                                                     "unanswerable questions (the run saves the choice)")


class RunConfig(_Section):
    model: str = Field("minilm", description="embedded name (minilm, smollm2), local folder, or hub id")
    task: Literal[TASKS] = Field(
        "classification", description="classification or regression (a head on a sentence vector), "
                                      "token-classification (NER, tagging), question-answering (extractive spans), "
                                      "or generation (causal LM)")
    data: DataConfig = Field(default_factory=DataConfig)
    strategy: StrategyConfig = Field(default_factory=StrategyConfig)
    prompt: PromptConfig = Field(default_factory=PromptConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    qa: QuestionAnsweringConfig = Field(default_factory=QuestionAnsweringConfig)
    output: Path | None = Field(None, description="run directory")

    @field_validator("model")
    @classmethod
    def _model_not_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("model must not be empty")
        return value


def _describe(error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"])
    if first["type"] == "extra_forbidden":
        return f"config: unknown setting '{where}'; see `tunelab train --help` for the settings"
    return f"config: {where}: {first['msg']}"


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for part in parents:
        tree = tree.setdefault(part, {})
        if not isinstance(tree, dict):
            raise TunelabError(f"override {dotted}: '{part}' is not a section")
    tree[leaf] = value


def parse_override(text: str) -> tuple[str, Any]:
    """`training.epochs=2` -> ("training.epochs", 2); values are read as YAML scalars."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise TunelabError(f"override '{text}' is not key=value, e.g. training.epochs=2")
    return key.strip(), load_yaml(raw, f"override '{text}': the value")


def build_config(base: dict[str, Any] | None = None, overrides: dict[str, Any] | None = None) -> RunConfig:
    """A validated RunConfig from a nested dict plus dotted-key overrides."""
    tree = copy.deepcopy(base or {})  # overrides must not write into the caller's nested dicts
    for dotted, value in (overrides or {}).items():
        _set_dotted(tree, dotted, value)
    try:
        return RunConfig.model_validate(tree)
    except ValidationError as error:
        raise TunelabError(_describe(error)) from None


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def load_yaml(text: str, what: str) -> Any:
    """`text` read as YAML, with one-line errors that name `what` was read. Besides its own errors, PyYAML raises
    plain ones where an explicit tag cannot hold its value (`!!float abc`, `!!timestamp 2020-13-45`), and recurses
    once per level of nesting."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise TunelabError(f"{what} is not valid YAML ({_first_line(error)})") from None
    except (ValueError, TypeError, IndexError, OverflowError, AttributeError) as error:
        raise TunelabError(f"{what} is not valid YAML: a tagged value cannot be read ({_first_line(error)}); fix "
                           f"the value or drop its !!tag") from None
    except RecursionError:
        raise TunelabError(f"{what} is not valid YAML: it nests too deeply to read; flatten it") from None


def read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise TunelabError(f"config file {path} does not exist" + (" as a file" if path.exists() else ""))
    try:
        text = path.read_text(encoding="utf-8-sig")  # a byte-order mark is not part of the YAML
    except UnicodeDecodeError as error:
        raise TunelabError(f"config file {path} is not UTF-8 text (byte {error.start}): re-save it as UTF-8") from None
    tree = load_yaml(text, f"config file {path}") or {}
    if not isinstance(tree, dict):
        raise TunelabError(f"config file {path} must hold a mapping of settings")
    return tree


def to_yaml(config: RunConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
