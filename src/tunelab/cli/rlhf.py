"""The RLHF stages: SFT, reward model, PPO, DPO, the judge and the whole pipeline."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from tunelab.cli.app import app, console
from tunelab.cli.options import (
    PRECISION_HELP,
    quiet_libraries,
    run_config,
)
from tunelab.errors import TunelabError

CHECKPOINT_HELP = "a resumable checkpoint every N steps: a killed run resumes when the same command runs again"
RESTART_HELP = "discard an interrupted run's checkpoints (of --checkpoint-every) and start over"
PPO_ONE_PROCESS = "tunelab's PPO loop samples, scores and steps one policy in one process"
NPROC_HELP = ("training processes on this machine (torchrun, DDP: gloo on CPU, nccl on GPUs); --batch-size stays the "
              "global batch")

rlhf_app = typer.Typer(help="RLHF: supervised fine-tuning, a reward model from preference pairs, PPO, DPO beside "
                            "it, the whole pipeline on a preset, and a judge of the policies.",
                       no_args_is_help=True)
app.add_typer(rlhf_app, name="rlhf")

def _launch_stage(output: Path, batch_size: int, nproc: int, restart: bool, checkpoint_every: int | None) -> str:
    """Under torchrun when asked (an interrupted run discarded before the processes start); the stage's resume
    mode."""
    from tunelab.cli.launch import relaunch

    if restart and not checkpoint_every:
        raise TunelabError("--restart discards the checkpoints of --checkpoint-every N: pass it too")
    if nproc > 1:
        relaunch(batch_size, nproc, restart=output if restart else None)
    return "restart" if restart else "auto"


def _print_judgement(judged: dict[str, Any], target_kl: float | None) -> None:
    table = Table(title=f"policies on {next(iter(judged.values()))['prompts']} held-out prompts (same sampling seed)")
    for column in ("policy", "mean reward", "KL to SFT", "SFT perplexity", "VADER", "VADER win vs SFT"):
        table.add_column(column, justify="left" if column == "policy" else "right")
    for name, row in judged.items():
        win = "-" if row["vader_win_rate"] is None else f"{row['vader_win_rate']:.0%}"
        table.add_row(name.upper(), f"{row['reward']:+.3f}", f"{row['kl']:.2f}", f"{row['reference_perplexity']:.1f}",
                      f"{row['vader']:+.3f}", win)
    console.print(table)
    if target_kl is not None:
        console.print(f"KL in nats per response, summed over its tokens; PPO's target: {target_kl:g}")
    for name, row in judged.items():
        console.print(f"[bold]{name.upper()}[/bold]: {escape(row['samples'][0])}")


@rlhf_app.command("sft")
def rlhf_sft(
    output: Annotated[Path, typer.Option(help="run directory to create")],
    model: Annotated[str, typer.Option(help="a causal LM (smollm2, a folder, a hub id)")] = "smollm2",
    data: Annotated[str, typer.Option(help="movie-sentiment (the training snippets), or a file of text, messages, "
                                           "or prompt + completion")] = "movie-sentiment",
    strategy: Annotated[str, typer.Option(help="full, lora or ia3")] = "lora",
    limit_train: Annotated[int | None, typer.Option(min=1, help="train on the first N examples")] = None,
    limit_eval: Annotated[int, typer.Option(min=1, help="held-out loss on the first N held-out examples (an LM's "
                                                        "full-vocabulary pass is slow on a CPU)")] = 256,
    epochs: Annotated[float | None, typer.Option(help="passes over the data (default: the strategy's)")] = None,
    lr: Annotated[float | None, typer.Option(help="peak learning rate (default: the strategy's)")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="examples per step")] = 8,
    max_length: Annotated[int, typer.Option(min=1, help="tokens per example")] = 64,
    seed: Annotated[int, typer.Option(help="seed of the data order and a file's held-out split")] = 42,
    option: Annotated[list[str] | None, typer.Option(help="strategy option KEY=VALUE (repeatable)")] = None,
    precision: Annotated[str, typer.Option(help=PRECISION_HELP)] = "auto",
    overwrite: Annotated[bool, typer.Option(help="replace an existing run directory")] = False,
    quiet: Annotated[bool, typer.Option(help="no progress bars")] = False,
    nproc: Annotated[int, typer.Option(min=1, help=NPROC_HELP)] = 1,
    checkpoint_every: Annotated[int | None, typer.Option(min=1, help=CHECKPOINT_HELP)] = None,
    restart: Annotated[bool, typer.Option(help=RESTART_HELP)] = False,
) -> None:
    """Supervised fine-tuning of a causal LM (TRL SFTTrainer); held-out loss and perplexity before and after."""
    from tunelab.ranks import is_main
    from tunelab.rlhf.data import stage_splits
    from tunelab.rlhf.sft import train_sft

    config = run_config(None, {"model": model, "task": "generation", "data": data, "strategy": strategy,
                            "output": output, "epochs": epochs, "lr": lr, "batch_size": batch_size,
                            "max_length": max_length, "seed": seed, "limit_train": limit_train,
                            "limit_eval": limit_eval, "precision": precision,
                            "checkpoint_every": checkpoint_every}, None, option, None, None)
    mode = _launch_stage(output, batch_size, nproc, restart, checkpoint_every)
    train, test = stage_splits(data, "sft", seed=seed)
    quiet_libraries()
    metrics = train_sft(config, train.iloc[:limit_train], test.iloc[:limit_eval], overwrite,
                        progress=not quiet and is_main(), resume=mode)
    if not is_main():  # under torchrun: the first process prints
        return
    test, base = metrics["test"], metrics["base_test"]
    console.print(f"sft {strategy} on {escape(data)}: {metrics['train_examples']} examples; held-out loss "
                  f"{base['loss']:.3f} -> {test['loss']:.3f} (perplexity {base['perplexity']:.1f} -> "
                  f"{test['perplexity']:.1f})")
    console.print(f"run saved to [bold]{escape(str(output))}[/bold]")


@rlhf_app.command("ppo")
def rlhf_ppo(
    output: Annotated[Path, typer.Option(help="run directory to create")],
    policy: Annotated[Path, typer.Option(help="the SFT run to start from (`tunelab rlhf sft`)")],
    reward: Annotated[Path, typer.Option(help="the reward model run (`tunelab rlhf reward`)")],
    prompts: Annotated[str, typer.Option(help="movie-sentiment (first words of snippets), or a file with a prompt "
                                              "column")] = "movie-sentiment",
    iterations: Annotated[int, typer.Option(min=1, help="PPO iterations")] = 60,
    rollout_size: Annotated[int, typer.Option(min=1, help="prompts per iteration")] = 16,
    max_new_tokens: Annotated[int, typer.Option(min=1, help="response length")] = 24,
    lr: Annotated[float, typer.Option(min=0.0, help="learning rate of the LoRA delta (the value head's: 1e-3)")]
    = 5e-4,
    target_kl: Annotated[float, typer.Option(min=0.0, help="the adaptive KL controller's target (nats per "
                                                           "response)")] = 6.0,
    min_kl_coef: Annotated[float, typer.Option(min=0.0, help="the KL coefficient's floor (0: Ziegler et al.'s "
                                                             "controller, free to fall)")] = 0.2,
    limit_eval: Annotated[int, typer.Option(min=1, help="held-out prompts to score before and after")] = 64,
    seed: Annotated[int, typer.Option(help="seed of sampling and the prompt order")] = 42,
    overwrite: Annotated[bool, typer.Option(help="replace an existing run directory")] = False,
    quiet: Annotated[bool, typer.Option(help="no progress display")] = False,
) -> None:
    """PPO against the reward model, with a per-token KL penalty to the SFT policy (Ziegler et al. 2019)."""
    from tunelab.cli.launch import single_process
    from tunelab.rlhf.data import stage_splits
    from tunelab.rlhf.ppo import PPOSettings
    from tunelab.rlhf.ppo_train import train_ppo
    from tunelab.rlhf.reward import require_reward_run
    from tunelab.runs import require_run

    single_process("rlhf ppo", PPO_ONE_PROCESS)
    require_run(policy)  # before the prompts load: a typo should not wait for data
    require_reward_run(reward)
    settings = PPOSettings(iterations=iterations, rollout_size=rollout_size, max_new_tokens=max_new_tokens,
                           learning_rate=lr, target_kl=target_kl, min_kl_coef=min_kl_coef, seed=seed)
    train, test = stage_splits(prompts, "ppo", seed=seed)
    quiet_libraries()
    metrics = train_ppo(settings, policy, reward, train["prompt"].tolist(), test["prompt"][:limit_eval].tolist(),
                        output, overwrite, progress=not quiet, announce=console.print)
    console.print(f"PPO: {iterations} iterations of {rollout_size} prompts")
    _print_judgement({"sft": metrics["sft_test"], "ppo": metrics["test"]}, target_kl)
    console.print(f"run saved to [bold]{escape(str(output))}[/bold]")


@rlhf_app.command("reward")
def rlhf_reward(
    output: Annotated[Path, typer.Option(help="run directory to create")],
    model: Annotated[str, typer.Option(help="a sequence-classification backbone (minilm, a folder, a hub id)")]
    = "minilm",
    data: Annotated[str, typer.Option(help="movie-sentiment (pairs of human-rated snippets), or a file of chosen, "
                                           "rejected (and prompt) columns")] = "movie-sentiment",
    epochs: Annotated[float, typer.Option(min=0.01, help="passes over the training pairs")] = 2.0,
    lr: Annotated[float, typer.Option(min=0.0, help="peak learning rate")] = 3e-5,
    batch_size: Annotated[int, typer.Option(min=1, help="pairs per step")] = 16,
    max_length: Annotated[int, typer.Option(min=1, help="tokens per text; longer ones are truncated")] = 128,
    seed: Annotated[int, typer.Option(help="seed of the new head, the data order and a file's held-out split")] = 42,
    precision: Annotated[str, typer.Option(help=PRECISION_HELP)] = "auto",
    overwrite: Annotated[bool, typer.Option(help="replace an existing run directory")] = False,
    quiet: Annotated[bool, typer.Option(help="no progress bars")] = False,
    nproc: Annotated[int, typer.Option(min=1, help=NPROC_HELP)] = 1,
    checkpoint_every: Annotated[int | None, typer.Option(min=1, help=CHECKPOINT_HELP)] = None,
    restart: Annotated[bool, typer.Option(help=RESTART_HELP)] = False,
) -> None:
    """Train a reward model on preference pairs (TRL RewardTrainer) and report its pairwise accuracy on held-out
    pairs."""
    from tunelab.ranks import is_main
    from tunelab.rlhf.data import stage_splits
    from tunelab.rlhf.reward import RewardSettings, train_reward_model

    settings = RewardSettings(model=model, data=data, epochs=epochs, learning_rate=lr, batch_size=batch_size,
                              max_length=max_length, seed=seed, precision=precision, checkpoint_every=checkpoint_every)
    mode = _launch_stage(output, batch_size, nproc, restart, checkpoint_every)
    train_pairs, test_pairs = stage_splits(data, "reward", test_share=0.1, seed=seed)
    quiet_libraries()
    metrics = train_reward_model(settings, train_pairs, test_pairs, output, overwrite,
                                 progress=not quiet and is_main(), resume=mode)
    if not is_main():
        return
    table = Table(title=f"reward model {model} on {data}: {metrics['train_pairs']} training pairs")
    for column in ("held-out pairs", "pairwise accuracy", "mean margin", "loss"):
        table.add_column(column, justify="right")
    for name, row in (("untrained", metrics["untrained_test"]), ("trained", metrics["test"])):
        table.add_row(f"{row['pairs']} ({name})", f"{row['pairwise_accuracy']:.3f}", f"{row['mean_margin']:+.3f}",
                      f"{row['loss']:.3f}")
    console.print(table)
    console.print(f"run saved to [bold]{escape(str(output))}[/bold]")


@rlhf_app.command("dpo")
def rlhf_dpo(
    output: Annotated[Path, typer.Option(help="run directory to create")],
    policy: Annotated[Path, typer.Option(help="the SFT run to start from (`tunelab rlhf sft`)")],
    data: Annotated[str, typer.Option(help="movie-sentiment (pairs of human-rated snippets), or a file of chosen, "
                                           "rejected (and prompt) columns")] = "movie-sentiment",
    beta: Annotated[float, typer.Option(min=0.0, help="pull towards the SFT policy (higher: stay closer)")] = 0.1,
    epochs: Annotated[float, typer.Option(min=0.01, help="passes over the training pairs")] = 1.0,
    lr: Annotated[float, typer.Option(min=0.0, help="peak learning rate of the LoRA delta")] = 5e-4,
    batch_size: Annotated[int, typer.Option(min=1, help="pairs per step")] = 8,
    max_length: Annotated[int, typer.Option(min=1, help="tokens per prompt + answer")] = 64,
    limit_eval: Annotated[int, typer.Option(min=1, help="held-out pairs to evaluate on")] = 200,
    seed: Annotated[int, typer.Option(help="seed of the data order and a file's held-out split")] = 42,
    precision: Annotated[str, typer.Option(help=PRECISION_HELP)] = "auto",
    overwrite: Annotated[bool, typer.Option(help="replace an existing run directory")] = False,
    quiet: Annotated[bool, typer.Option(help="no progress bars")] = False,
    nproc: Annotated[int, typer.Option(min=1, help=NPROC_HELP)] = 1,
    checkpoint_every: Annotated[int | None, typer.Option(min=1, help=CHECKPOINT_HELP)] = None,
    restart: Annotated[bool, typer.Option(help=RESTART_HELP)] = False,
) -> None:
    """Direct preference optimisation of the SFT policy (TRL DPOTrainer, LoRA; the reference is the SFT policy)."""
    from tunelab.ranks import is_main
    from tunelab.rlhf.data import stage_splits
    from tunelab.rlhf.dpo import DPOSettings, train_dpo
    from tunelab.runs import require_run

    require_run(policy)
    mode = _launch_stage(output, batch_size, nproc, restart, checkpoint_every)
    settings = DPOSettings(data=data, beta=beta, epochs=epochs, learning_rate=lr, batch_size=batch_size,
                           max_length=max_length, seed=seed, precision=precision, checkpoint_every=checkpoint_every)
    train_pairs, test_pairs = stage_splits(data, "dpo", test_share=0.1, seed=seed)
    quiet_libraries()
    metrics = train_dpo(settings, policy, train_pairs, test_pairs.iloc[:limit_eval], output, overwrite,
                        progress=not quiet and is_main(), resume=mode)
    if not is_main():
        return
    test = metrics["test"]
    console.print(f"dpo on {escape(data)}: {metrics['train_pairs']} training pairs; on {test['pairs']} held-out "
                  f"pairs: DPO loss {test['loss']:.3f} (log 2 = 0.693 at the start), preference accuracy "
                  f"{test['preference_accuracy']:.3f}, reward margin {test['reward_margin']:+.3f}")
    console.print(f"run saved to [bold]{escape(str(output))}[/bold]")


@rlhf_app.command("judge")
def rlhf_judge(
    runs: Annotated[list[Path], typer.Argument(help="PPO and DPO runs trained from the same SFT run")],
    reward: Annotated[Path, typer.Option(help="the reward model run that scores the samples")],
    prompts: Annotated[str, typer.Option(help="movie-sentiment (the held-out first words), or a file with a prompt "
                                              "column (every row)")] = "movie-sentiment",
    limit: Annotated[int, typer.Option(min=1, help="prompts every policy answers (the first N)")] = 256,
    max_new_tokens: Annotated[int, typer.Option(min=1, help="response length")] = 24,
    seed: Annotated[int, typer.Option(help="the sampling seed, the same for every policy")] = 42,
) -> None:
    """Judge policies against their SFT policy: reward, KL, SFT's perplexity of their samples, VADER win rate."""
    from tunelab.rlhf.data import load_movie_sentiment, load_stage_data
    from tunelab.rlhf.evaluation import evaluate_policies
    from tunelab.rlhf.policy import read_policy_settings
    from tunelab.rlhf.reward import require_reward_run, reward_function

    sft_run = Path(read_policy_settings(runs[0])["sft_run"])  # evaluate_policies checks that the others share it
    require_reward_run(reward)
    names = [run.name for run in runs]
    if len(set(names)) < len(names) or "sft" in names:
        raise TunelabError("give runs with distinct folder names other than 'sft': they name the policies")
    table = load_movie_sentiment().prompts_test if prompts == "movie-sentiment" else load_stage_data(prompts, "ppo")
    quiet_libraries()
    judged = evaluate_policies(sft_run, dict(zip(names, runs, strict=True)), reward_function(reward),
                               table["prompt"][:limit].tolist(), max_new_tokens, seed)
    _print_judgement(judged, None)


@rlhf_app.command("pipeline")
def rlhf_pipeline(
    output: Annotated[Path, typer.Option(help="folder for the stages' runs and the report")],
    preset: Annotated[str, typer.Option(help="the embedded task: movie-sentiment")] = "movie-sentiment",
    policy_model: Annotated[str | None, typer.Option(help="the causal LM to align [default: smollm2]")] = None,
    reward_model: Annotated[str | None, typer.Option(help="the reward model's backbone [default: minilm]")] = None,
    sft_examples: Annotated[int | None, typer.Option(min=1, help="SFT's training snippets [default: 1000]")] = None,
    ppo_iterations: Annotated[int | None, typer.Option(min=1, help="PPO iterations of 16 prompts [default: 60]")]
    = None,
    dpo_pairs: Annotated[int | None, typer.Option(min=1, help="DPO's training pairs [default: 1000]")] = None,
    judge_prompts: Annotated[int | None, typer.Option(min=1, help="held-out prompts every policy answers "
                                                                  "[default: 256]")] = None,
    precision: Annotated[str | None, typer.Option(help=f"SFT's, the reward model's and DPO's: {PRECISION_HELP} "
                                                      "[default: auto]")] = None,
    quiet: Annotated[bool, typer.Option(help="no progress bars")] = False,
) -> None:
    """SFT, reward model, PPO and DPO on a preset, then every policy judged on the same held-out prompts. Running
    the same command again resumes after the last finished stage."""
    from tunelab.cli.launch import single_process
    from tunelab.rlhf.pipeline import PipelineSettings, run_pipeline

    single_process("rlhf pipeline", f"its PPO stage does: {PPO_ONE_PROCESS}")

    given = {"preset": preset, "policy_model": policy_model, "reward_model": reward_model,
             "sft_examples": sft_examples, "dpo_pairs": dpo_pairs, "judge_prompts": judge_prompts,
             "precision": precision}
    settings = PipelineSettings(**{key: value for key, value in given.items() if value is not None})
    if ppo_iterations is not None:
        settings.ppo = settings.ppo.model_copy(update={"iterations": ppo_iterations})
    quiet_libraries()
    report = run_pipeline(settings, output, progress=not quiet, announce=console.print)
    stages = report["stages"]
    console.print(f"SFT held-out perplexity {stages['sft']['base_test']['perplexity']:.1f} -> "
                  f"{stages['sft']['test']['perplexity']:.1f}; reward model pairwise accuracy "
                  f"{stages['reward']['test']['pairwise_accuracy']:.3f} on {stages['reward']['test']['pairs']} "
                  f"held-out human-rated pairs; DPO preference accuracy "
                  f"{stages['dpo']['test']['preference_accuracy']:.3f}")
    _print_judgement(report["policies"], report["target_kl"])
    console.print(f"report saved to [bold]{escape(str(output / 'report.json'))}[/bold]; PPO's training curves: "
                  f"[bold]{escape(str(output / 'ppo_curves.svg'))}[/bold]")

