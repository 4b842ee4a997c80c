"""The library entry points that the CLI wraps: train a run, evaluate it, predict with it. Each task's part is its
recipe (`tunelab.recipes`); these add what is not a task's: merged exports, RLHF policies, the zero-shot check."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import RenderableType

from tunelab.assets.models import resolve_model
from tunelab.blackbox.endpoints import InProcess
from tunelab.blackbox.found import FoundPrompt, is_blackbox_run
from tunelab.config import Precision, RunConfig, StrategyConfig
from tunelab.errors import TunelabError
from tunelab.export import is_export, load_export
from tunelab.modeling import load_causal_lm, load_tokenizer
from tunelab.recipes.base import refuse_context
from tunelab.recipes.generation import Generator
from tunelab.recipes.runs import RunResult, evaluate_run, load_run, train_run
from tunelab.runs import read_run_config, require_run
from tunelab.strategies.registry import configure
from tunelab.task_catalog import recipe_for
from tunelab.tasks.generation import CausalLM, generate
from tunelab.training.memory import inference_memory
from tunelab.training.resume import Resume
from tunelab.training.trainer import best_device

__all__ = ["RunResult", "evaluate", "generate_text", "load_generator", "load_language_model", "load_predictor",
           "predict", "run_task", "train", "zero_shot"]


def train(config: RunConfig, overwrite: bool = False, progress: bool = True,
          announce: Callable[[RenderableType], None] | None = None, resume: Resume = "auto") -> RunResult:
    """Train `config.strategy` on `config.data` and write a complete run directory to `config.output`;
    `announce` (e.g. `rich.console.Console().print`) receives the data checks and a warning if the run did not
    learn, which `result.metrics["learned"]` also says. With `training.checkpoint_every`, a run interrupted before
    its end resumes from its last checkpoint when called again (`resume`: auto, require or restart)."""
    return train_run(config, overwrite, progress, announce, resume)


def evaluate(run_dir: Path, source: str | None = None, text_column: str = "text", label_column: str = "label",
             limit: int | None = None, precision: Precision = "auto", batch_size: int | None = None) -> dict[str, Any]:
    """Metrics of a trained run on a dataset: its own test split by default, else every row of `source`; computed
    in `precision` (auto: bf16 where this machine computes it natively, else fp32), in batches of `batch_size`
    (default: the run's evaluation batch). A black-box run asks its model in this process, as the search found to."""
    if is_blackbox_run(run_dir):
        return _evaluate_blackbox(run_dir, source, text_column, label_column, limit)
    return evaluate_run(run_dir, source, text_column, label_column, limit, precision, batch_size)


def _evaluate_blackbox(run_dir: Path, source: str | None, text_column: str, label_column: str,
                       limit: int | None) -> dict[str, Any]:
    found = FoundPrompt(run_dir)
    recipe = recipe_for("classification")
    if source is None:
        examples, name = recipe.test_examples(found.config), f"{found.config.data.source} (test split)"
    else:
        examples, name = recipe.read_examples(found.config, None, source, text_column, label_column), source
    examples = examples.iloc[:limit] if limit is not None else examples
    return found.score(examples, blackbox_endpoint(found), name)


def blackbox_endpoint(found: FoundPrompt) -> InProcess:
    """A black-box run's base model in this process, with the LoRA its search trained where it trained one."""
    model, tokenizer = load_language_model(found.config.model)
    return InProcess(found.adapt(model), tokenizer)


def zero_shot(config: RunConfig) -> dict[str, Any]:
    """Test-split metrics of the pre-trained language model asked through the config's template and label
    words, without writing a run (`train` with strategy zero-shot writes one)."""
    config = config.model_copy(update={"strategy": StrategyConfig(name="zero-shot")})
    recipe = recipe_for("classification")
    prepared = recipe.prepare(config)
    model, tokenizer = recipe.build(prepared.config, configure(config.strategy), prepared.targets)
    return recipe.score(recipe.predictor(model, tokenizer, prepared.targets, prepared.config), prepared.splits.test,
                        "test split")


def run_task(run_dir: Path) -> str:
    """The task of a run directory, of a merged export or of a black-box run (classifiers both)."""
    if is_export(run_dir) or is_blackbox_run(run_dir):
        return "classification"
    require_run(run_dir)
    return read_run_config(run_dir).task


def load_predictor(run_dir: Path, precision: Precision = "auto", batch_size: int | None = None) -> Any:
    """A trained run, or a merged export of one (`tunelab export --merge`), ready to predict in `precision`, in
    batches of `batch_size` (default: the run's evaluation batch): its task's predictor (`Predictor`, `Tagger`,
    `Answerer` or `Generator`)."""
    if is_export(run_dir):
        return load_export(run_dir, precision)
    return load_run(run_dir, precision, batch_size).predictor()


def predict(run_dir: Path, inputs: list[str], context: str | None = None, precision: Precision = "auto",
            batch_size: int | None = None) -> list[dict[str, Any]]:
    """One JSON-ready record per input: a label with every label's probability, a value, the entities with their
    character spans, the answer to a question about `context`, or a generated answer; in batches of `batch_size`
    (default: the run's evaluation batch; running out of memory is one line with a batch that would fit). A
    black-box run asks its model in this process, as the search found to."""
    if is_blackbox_run(run_dir):
        found = FoundPrompt(run_dir)
        refuse_context(context, "classification")
        return found.predict(inputs, blackbox_endpoint(found))
    predictor = load_predictor(run_dir, precision, batch_size)
    size = getattr(predictor, "batch_size", None) or read_run_config(run_dir).training.eval_batch_size  # a Generator's
    with inference_memory(size, "--batch-size"):
        return recipe_for(run_task(run_dir)).predict(predictor, inputs, context)


def load_generator(run_dir: Path, purpose: str = "generate") -> tuple[CausalLM, Any]:
    """The causal LM of a generation run (`train --task generation`, `rlhf sft`) or of a PPO/DPO policy run, and its
    tokenizer, the model on the fastest device there is; `purpose` names the command in the error for any other run."""
    from tunelab.rlhf.policy import is_policy_run, load_policy

    if is_policy_run(run_dir):
        policy = load_policy(run_dir)
        return policy.model.to(best_device()), policy.tokenizer
    task = run_task(run_dir)
    if task != "generation":
        raise TunelabError(f"{run_dir} is a {task} run; {purpose} needs one trained with --task generation or an "
                           f"RLHF run")
    generator: Generator = load_predictor(run_dir)
    return generator.model, generator.tokenizer


def load_language_model(model: str) -> tuple[CausalLM, Any]:
    """A causal LM by name (packaged, a folder or a hub id), bare, as generation and scoring read it, on the fastest
    device there is, with its tokenizer."""
    spec = resolve_model(model)
    return CausalLM(load_causal_lm(spec)).eval().to(best_device()), load_tokenizer(spec)


def generate_text(run_dir: Path, prompt: str, max_new_tokens: int = 64, temperature: float = 0.0,
                  seed: int = 0, continuation: bool = False) -> str:
    """The answer of a generation run's model to one prompt (greedy at temperature 0); with `continuation`, the
    text that follows the prompt, without the chat template."""
    model, tokenizer = load_generator(run_dir)
    return generate(model, tokenizer, prompt, max_new_tokens, temperature, seed, continuation)
