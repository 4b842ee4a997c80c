"""Which strategy serves which task, as the catalog says: `train` refuses an unsupported pair before anything
loads, naming the reason and the alternatives."""

from pathlib import Path

import pytest

from tunelab import build_config
from tunelab.api import train
from tunelab.errors import TunelabError
from tunelab.strategies.catalog import CATALOG, check_serves_task, strategies_for
from tunelab.task_catalog import TASKS, check_shots


def test_the_config_takes_exactly_the_known_tasks():
    build_config({"task": "regression"})
    with pytest.raises(TunelabError, match="task"):
        build_config({"task": "translation"})


def test_an_unsupported_pair_names_the_reason_and_the_alternatives():
    with pytest.raises(TunelabError, match=r"^strategy linear-probe does not apply to generation: it trains only a "
                                           r"new head, and generation has none; use one of full, lora, adalora, ia3, "
                                           r"adapter$"):
        check_serves_task("linear-probe", "generation")
    with pytest.raises(TunelabError, match="^unknown task 'translation'; choose one of classification, regression"):
        check_serves_task("full", "translation")


@pytest.mark.parametrize(("strategy", "task"), [(name, task) for name, row in CATALOG.items()
                                                for task in row.not_served])
def test_train_refuses_before_loading_anything(strategy: str, task: str, tmp_path: Path):
    config = build_config({"model": str(tmp_path / "no-such-model"), "task": task,
                           "data": {"source": str(tmp_path / "no-such-file.csv")}, "strategy": {"name": strategy},
                           "output": str(tmp_path / "run")})
    with pytest.raises(TunelabError, match=f"^strategy {strategy} does not apply to {task}: "):
        train(config)
    assert not (tmp_path / "run").exists()


def test_the_advisor_knows_every_task_and_refuses_others():
    from tunelab.compare.advisor import Situation, recommend

    for task in TASKS:
        feasible = {advice.strategy for advice in recommend(Situation(samples=500, task=task)) if advice.feasible}
        assert feasible <= set(strategies_for(task))
    with pytest.raises(TunelabError, match="^unknown task 'translation'"):
        Situation(samples=500, task="translation")


@pytest.mark.parametrize("task", [task for task in TASKS if task != "classification"])
def test_shots_are_for_labels_only(task: str):
    check_shots("classification", 8)
    check_shots(task, None)
    with pytest.raises(TunelabError, match=f"^--shots draws K examples per label, and {task} has no labels: use "
                                           f"--limit-train N$"):
        check_shots(task, 8)
