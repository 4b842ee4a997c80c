"""The selection guide: the four situations of the article, each rule moving what it says, hard limits, measured
grids."""

from __future__ import annotations

import math
import shlex
from dataclasses import replace

import pandas as pd
import pytest

from tunelab.compare import advisor
from tunelab.compare.advisor import (
    CONSTRAINTS,
    RULES,
    Situation,
    estimate_training_memory_gb,
    not_runnable,
    qlora_note,
    recommend,
)
from tunelab.engines import ENGINES
from tunelab.errors import TunelabError
from tunelab.strategies.catalog import CATALOG, NAMES, STANDALONE

LAPTOP_FEW_LABELS = Situation(samples=50, gpu=False, memory_gb=8)
BIG_GPU_MANY_LABELS = Situation(samples=50_000, gpu=True, memory_gb=80, model_parameters=110e6)
MANY_TASKS = Situation(samples=2_000, tasks_to_serve=20)
SEVEN_B_ON_16_GB = Situation(samples=5_000, model_parameters=7e9, causal=True, gpu=True, memory_gb=16)
ARTICLE_SITUATIONS = {
    LAPTOP_FEW_LABELS: {"pet", "soft-template", "p-tuning"},
    BIG_GPU_MANY_LABELS: {"full"},
    MANY_TASKS: {"adapter", "lora"},
    SEVEN_B_ON_16_GB: {"lora"},
}


def grid(accuracies: dict[str, float], train_size: int = 2_000) -> pd.DataFrame:
    """A hand-made `tunelab compare` summary: one row per strategy at one training-set size."""
    return pd.DataFrame([
        {"strategy": name, "train_size": train_size, "accuracy_mean": accuracy, "accuracy_std": 0.01, "seeds": 3,
         "trainable_share": 0.0033, "train_s_mean": 41.0, "peak_memory_bytes": 1.6 * 1024**3,
         "delta_bytes": 308_000, "latency_ms": 2.5}
        for name, accuracy in accuracies.items()
    ])


MEASURED = grid({"full": 0.84, "lora": 0.85, "ia3": 0.86, "adapter": 0.78})

# rule name -> a situation (and measured grid) where it applies; the test below fails when a rule has none
RULE_EXAMPLES: dict[str, tuple[Situation, pd.DataFrame | None]] = {
    "few-labels": (LAPTOP_FEW_LABELS, None),
    "hundreds-of-labels": (Situation(samples=500), None),
    "thousands-of-labels": (MANY_TASKS, None),
    "many-labels": (BIG_GPU_MANY_LABELS, None),
    "gpu": (BIG_GPU_MANY_LABELS, None),
    "cpu-only": (LAPTOP_FEW_LABELS, None),
    "large-model": (SEVEN_B_ON_16_GB, None),
    "shallow-prompts-below-10b": (MANY_TASKS, None),
    "huge-model": (Situation(samples=5_000, model_parameters=11e9, causal=True, gpu=True, memory_gb=80), None),
    "many-tasks": (MANY_TASKS, None),
    "strict-latency": (Situation(samples=2_000, latency="strict"), None),
    "generation": (Situation(samples=500, task="generation"), None),
    "measured-best": (Situation(samples=2_000), MEASURED),
    "measured-close": (Situation(samples=2_000), MEASURED),
    "measured-far": (Situation(samples=2_000), MEASURED),
}


def first(situation: Situation, measured: pd.DataFrame | None = None) -> str:
    return recommend(situation, measured)[0].strategy


def by_name(situation: Situation, measured: pd.DataFrame | None = None) -> dict[str, advisor.Recommendation]:
    return {r.strategy: r for r in recommend(situation, measured)}


@pytest.mark.parametrize("situation", list(ARTICLE_SITUATIONS), ids=["few-labels-laptop", "50k-labels-big-gpu",
                                                                     "20-tasks", "7b-on-16gb"])
def test_the_articles_situations_get_the_articles_first_choice(situation: Situation) -> None:
    assert first(situation) in ARTICLE_SITUATIONS[situation]
    assert recommend(situation)[0].feasible


def test_the_four_situations_do_not_all_get_the_same_first_choice() -> None:
    assert len({first(situation) for situation in ARTICLE_SITUATIONS}) > 1


def test_lora_on_a_7b_model_mentions_qlora_and_full_does_not_fit() -> None:
    recommendations = by_name(SEVEN_B_ON_16_GB)
    lora, full = recommendations["lora"], recommendations["full"]
    assert "QLoRA" in " ".join(lora.reasons) + lora.trade_off
    assert qlora_note() in lora.trade_off
    assert not full.feasible and full.reasons[0] == "full needs ~134.4 GB on one device, you have 16 GB"


SEVEN_B_FULL = dict(samples=50_000, model_parameters=7e9, causal=True, gpu=True)


def test_the_estimate_per_device_shards_what_each_engine_shards() -> None:
    """Full fine-tuning of 7B: 14 GB of weights, 14 of gradients, 84 of optimizer state, 22.4 of activations."""
    situation = Situation(**SEVEN_B_FULL, memory_gb=40)
    per_gpu = {engine: estimate_training_memory_gb("full", situation, engine, 8) for engine in ENGINES}
    assert per_gpu["ddp"] == pytest.approx(134.4)  # nothing sharded: one device's estimate
    assert per_gpu["deepspeed-zero2"] == pytest.approx(14 + (14 + 84) / 8 + 22.4)
    assert per_gpu["deepspeed-zero3"] == per_gpu["fsdp"] == pytest.approx(112 / 8 + 22.4)
    lora = estimate_training_memory_gb("lora", situation, "deepspeed-zero3", 4)
    assert lora == pytest.approx((14 + 1.12) / 4 + 0.224)  # a frozen bf16 base and 1% trained, all sharded


def test_the_advice_names_the_engine_that_fits_when_one_device_does_not() -> None:
    on_eight_80gb = by_name(Situation(**SEVEN_B_FULL, memory_gb=80, gpus=8))["full"]
    assert on_eight_80gb.feasible and on_eight_80gb.command.endswith("--nproc 8 --distributed deepspeed-zero2")
    assert "on your 8 GPUs with deepspeed-zero2: per GPU deepspeed-zero2 48.6 GB" in on_eight_80gb.trade_off
    on_eight_40gb = by_name(Situation(**SEVEN_B_FULL, memory_gb=40, gpus=8))["full"]
    assert on_eight_40gb.feasible  # only ZeRO-3 fits
    assert on_eight_40gb.command.endswith("--nproc 8 --distributed deepspeed-zero3")
    one_40gb = by_name(Situation(**SEVEN_B_FULL, memory_gb=40))["full"]
    assert not one_40gb.feasible and "--nproc" not in one_40gb.command
    assert one_40gb.reasons[0] == ("full needs ~134.4 GB on one device, you have 40 GB; it would fit on 8 GPUs with "
                                   "deepspeed-zero3: per GPU deepspeed-zero2 48.6 GB, deepspeed-zero3 36.4 GB, fsdp "
                                   "36.4 GB")


def test_the_advice_never_names_an_engine_tunelab_cannot_train_the_strategy_with() -> None:
    assert not_runnable("adalora", "deepspeed-zero3") == "a known failure with adalora"
    assert not_runnable("prefix", "fsdp") == "a known failure with prefix"
    assert not_runnable("full", "deepspeed-zero3") is None


def test_memory_estimates_follow_the_documented_formula() -> None:
    assert estimate_training_memory_gb("full", SEVEN_B_ON_16_GB) == pytest.approx(7e9 * 16 * 1.2 / 1e9)
    assert estimate_training_memory_gb("lora", SEVEN_B_ON_16_GB) == pytest.approx(14 + 1.2 * 1.12)
    on_cpu = replace(SEVEN_B_ON_16_GB, gpu=False)
    assert estimate_training_memory_gb("lora", on_cpu) == pytest.approx(28 + 1.2 * 1.12)
    assert estimate_training_memory_gb("linear-probe", SEVEN_B_ON_16_GB) == pytest.approx(14.0)
    assert estimate_training_memory_gb("zero-shot", on_cpu) == pytest.approx(28.0)


def test_strict_latency_with_many_tasks_puts_lora_above_adapter() -> None:
    order = [r.strategy for r in recommend(replace(MANY_TASKS, latency="strict"))]
    assert order.index("lora") < order.index("adapter")


def test_generation_leaves_only_strategies_that_serve_it_feasible() -> None:
    feasible = {r.strategy for r in recommend(Situation(samples=500, task="generation")) if r.feasible}
    assert feasible == {"full", "lora", "adalora", "ia3", "adapter"}


def test_generation_with_an_encoder_is_infeasible_for_every_strategy() -> None:
    situation = Situation(samples=500, task="generation", model="minilm")
    assert not any(r.feasible for r in recommend(situation))


def test_prompt_based_strategies_need_an_lm_head_only_when_a_model_is_named() -> None:
    named_encoder = by_name(replace(LAPTOP_FEW_LABELS, model="minilm"))
    assert not named_encoder["pet"].feasible and "has none" in named_encoder["pet"].reasons[0]
    best = recommend(replace(LAPTOP_FEW_LABELS, model="minilm"))[0]
    assert best.feasible and best.strategy not in {"zero-shot", "pet", "soft-template"}
    assert by_name(replace(LAPTOP_FEW_LABELS, model="bert-mlm", has_lm_head=True))["pet"].feasible
    assert "--model smollm2" in by_name(LAPTOP_FEW_LABELS)["pet"].command


def test_infeasible_strategies_rank_after_all_feasible_ones() -> None:
    feasibility = [r.feasible for r in recommend(SEVEN_B_ON_16_GB)]
    assert feasibility == sorted(feasibility, reverse=True) and not all(feasibility)


def test_equal_scores_keep_registry_order() -> None:
    scores = [(r.score, NAMES.index(r.strategy)) for r in recommend(MANY_TASKS)]
    assert scores == sorted(scores, key=lambda pair: (-pair[0], pair[1]))


def test_a_measured_grid_changes_the_ranking() -> None:
    situation = Situation(samples=2_000)
    assert first(situation) != "ia3"
    assert first(situation, MEASURED) == "ia3"
    recommendations = by_name(situation, MEASURED)
    assert recommendations["ia3"].trade_off.startswith("measured at 2,000 labels: accuracy 0.860 ± 0.010 (3 seeds)")
    assert "308.0 KB per task" in recommendations["ia3"].trade_off
    assert recommendations["prefix"].trade_off == CATALOG["prefix"].trade_off  # not in the grid


def test_the_measured_rows_nearest_on_a_log_scale_are_used() -> None:
    measured = pd.concat([grid({"lora": 0.9, "full": 0.7}, train_size=64), grid({"lora": 0.7, "full": 0.9}, 4096)])
    assert by_name(Situation(samples=400), measured)["lora"].trade_off.startswith("measured at 64 labels")
    assert by_name(Situation(samples=600), measured)["lora"].trade_off.startswith("measured at 4,096 labels")


def test_unknown_strategies_in_a_grid_are_ignored_and_missing_columns_are_an_error() -> None:
    assert first(Situation(samples=2_000), grid({"ia3": 0.9, "not-a-strategy": 0.99})) == "ia3"
    with pytest.raises(TunelabError, match="lacks the column"):
        recommend(Situation(samples=2_000), pd.DataFrame({"strategy": ["lora"]}))


def test_every_rule_has_an_example() -> None:
    assert set(RULE_EXAMPLES) == {rule.name for rule in RULES}
    assert len(RULE_EXAMPLES) == len(RULES)  # names are unique


@pytest.mark.parametrize("rule", RULES, ids=[rule.name for rule in RULES])
def test_each_rule_moves_the_scores_it_names(rule: advisor.Rule, monkeypatch: pytest.MonkeyPatch) -> None:
    situation, measured = RULE_EXAMPLES[rule.name]
    with_rule = by_name(situation, measured)
    monkeypatch.setattr(advisor, "RULES", tuple(other for other in RULES if other is not rule))
    without_rule = by_name(situation, measured)
    moved = {name: with_rule[name].score - without_rule[name].score for name in STANDALONE}
    moved = {name: points for name, points in moved.items() if points}
    assert moved, f"{rule.name} moved no strategy in its example"
    if not callable(rule.points):
        assert moved == {name: points for name, points in rule.points.items() if points}
    for name in moved:
        assert len(set(with_rule[name].reasons) - set(without_rule[name].reasons)) == 1


def test_reasons_put_the_largest_moves_first() -> None:
    lora = by_name(replace(MANY_TASKS, latency="strict"))["lora"]
    assert lora.reasons[0].startswith("with 2,000 labels")  # +2 each: ties keep the order of RULES
    pet = by_name(replace(LAPTOP_FEW_LABELS, latency="strict"))["pet"]
    assert pet.reasons[0].startswith("with 50 labels") and pet.reasons[1].startswith("strict latency")


@pytest.mark.parametrize("situation", [*ARTICLE_SITUATIONS, Situation(500, task="generation", model="my model")])
def test_commands_are_valid_train_command_lines(situation: Situation) -> None:
    for recommendation in recommend(situation, data="my data.csv"):
        words = shlex.split(recommendation.command)
        assert words[:2] == ["tunelab", "train"]
        option = dict(zip(words[2::2], words[3::2], strict=True))
        assert option["--strategy"] == recommendation.strategy and option["--data"] == "my data.csv"
        assert option.get("--task") == ("generation" if situation.task == "generation" else None)


def test_commands_name_the_users_model_else_an_embedded_one_else_a_placeholder() -> None:
    def model(situation: Situation, strategy: str) -> str:
        words = shlex.split(by_name(situation)[strategy].command)
        return words[words.index("--model") + 1]

    assert model(LAPTOP_FEW_LABELS, "pet") == "smollm2" and model(LAPTOP_FEW_LABELS, "lora") == "minilm"
    assert model(SEVEN_B_ON_16_GB, "lora") == "MODEL"
    assert model(replace(SEVEN_B_ON_16_GB, model="meta/llama"), "lora") == "meta/llama"
    assert model(Situation(samples=500, task="generation"), "lora") == "smollm2"  # minilm cannot generate


# constraint name -> a situation where it blocks some strategy
CONSTRAINT_EXAMPLES: dict[str, Situation] = {
    "serves-task": Situation(samples=500, task="generation"),
    "generation-needs-causal-lm": Situation(samples=500, task="generation", model="minilm"),
    "lm-head": replace(LAPTOP_FEW_LABELS, model="minilm"),
    "memory": SEVEN_B_ON_16_GB,
}


def test_every_constraint_has_an_example() -> None:
    assert set(CONSTRAINT_EXAMPLES) == {constraint.name for constraint in CONSTRAINTS}


@pytest.mark.parametrize("constraint", CONSTRAINTS, ids=[constraint.name for constraint in CONSTRAINTS])
def test_each_constraint_blocks_something(constraint: advisor.Constraint, monkeypatch: pytest.MonkeyPatch) -> None:
    situation = CONSTRAINT_EXAMPLES[constraint.name]
    blocked = {r.strategy for r in recommend(situation) if not r.feasible}
    monkeypatch.setattr(advisor, "CONSTRAINTS", tuple(other for other in CONSTRAINTS if other is not constraint))
    assert blocked - {r.strategy for r in recommend(situation) if not r.feasible}


def test_qlora_note_is_honest_about_what_tunelab_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(advisor.importlib.util, "find_spec", lambda name: None)
    assert "pip install bitsandbytes" in qlora_note() and "does not load 4-bit" in qlora_note()
    monkeypatch.setattr(advisor.importlib.util, "find_spec", lambda name: object())
    assert "is installed" in qlora_note() and "does not load 4-bit" in qlora_note()


@pytest.mark.parametrize("fields", [{"samples": 0}, {"latency": "fast"}, {"task": "ner"}, {"memory_gb": 0},
                                    {"tasks_to_serve": 0}, {"model_parameters": -1}])
def test_impossible_situations_are_user_errors(fields: dict) -> None:
    with pytest.raises(TunelabError):
        Situation(**{"samples": 100, **fields})


def test_unknown_strategy_memory_estimate_is_a_user_error() -> None:
    with pytest.raises(TunelabError, match="choose one of"):
        estimate_training_memory_gb("loraa", LAPTOP_FEW_LABELS)


def test_a_single_seed_grid_has_no_spread() -> None:
    measured = grid({"lora": 0.85}).assign(accuracy_std=math.nan, seeds=1)
    assert by_name(Situation(samples=2_000), measured)["lora"].trade_off.startswith(
        "measured at 2,000 labels: accuracy 0.850 (1 seed),")
