"""The one table of which strategy serves which task: the README shows it as it is in the code, every strategy
and task is in it, and `train` refuses an unsupported pair before anything loads."""

from pathlib import Path

import pytest

from tunelab import build_config
from tunelab.api import train
from tunelab.config import RunConfig
from tunelab.errors import TunelabError
from tunelab.strategies.registry import STRATEGIES
from tunelab.tasks.support import SUPPORT, TASKS, check_serves_task, check_shots, support_table

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_readme_shows_the_table_in_the_code():
    assert support_table() in README.read_text(encoding="utf-8")


def test_every_strategy_has_a_row_and_every_task_a_column():
    assert list(SUPPORT) == list(STRATEGIES)
    assert all(list(tasks) == list(TASKS) for tasks in SUPPORT.values())
    assert set(TASKS) == set(RunConfig.model_fields["task"].annotation.__args__)


def test_an_unsupported_pair_names_the_reason_and_the_alternatives():
    with pytest.raises(TunelabError, match=r"^strategy linear-probe does not apply to generation: it trains only a "
                                           r"new head, and generation has none; use one of full, lora, ia3, adapter$"):
        check_serves_task("linear-probe", "generation")
    with pytest.raises(TunelabError, match="^unknown task 'translation'; choose one of classification, regression"):
        check_serves_task("full", "translation")


@pytest.mark.parametrize(("strategy", "task"), [(s, t) for s, tasks in SUPPORT.items() for t, why in tasks.items()
                                                if why is not None])
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
        assert feasible <= {name for name, tasks in SUPPORT.items() if tasks[task] is None}
    with pytest.raises(TunelabError, match="^unknown task 'translation'"):
        Situation(samples=500, task="translation")


@pytest.mark.parametrize("task", [task for task in TASKS if task != "classification"])
def test_shots_are_for_labels_only(task: str):
    check_shots("classification", 8)
    check_shots(task, None)
    with pytest.raises(TunelabError, match=f"^--shots draws K examples per label, and {task} has no labels: use "
                                           f"--limit-train N$"):
        check_shots(task, 8)
