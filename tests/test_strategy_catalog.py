"""The strategy catalog: rows are refused at import when the rest of tunelab could not use them, and what is
derived from them (pet's choices, the RLHF stages' strategies, lazy loading) follows the rows."""

import subprocess
import sys
from dataclasses import replace

import pytest

from tunelab.errors import TunelabError
from tunelab.strategies import catalog
from tunelab.strategies.catalog import CATALOG, PET_TUNABLE, TRL_STRATEGIES, entry


def _validate(*rows: catalog.StrategyEntry) -> dict:
    return catalog._validated(rows)


def test_a_row_with_a_taken_name_is_refused():
    with pytest.raises(TunelabError, match="^strategy catalog row 'lora': the name is taken$"):
        _validate(CATALOG["lora"], CATALOG["lora"])


@pytest.mark.parametrize(("change", "message"), [
    ({"family": "magic"}, "family 'magic' is not one of"),
    ({"trains": "most"}, "trains 'most' is not one of"),
    ({"not_served": {"translation": "no"}}, r"unknown tasks \['translation'\]"),
    ({"not_served": dict.fromkeys(catalog.TASKS, "no")}, "it serves no task"),
    ({"pet_tunable": True}, "pet tunes only weight strategies"),
    ({"prompt_based": False}, "a prompt-based strategy is in the prompt-based family"),
    ({"delta": "prefix"}, "delta 'prefix' is not one of"),
])
def test_a_row_the_rest_could_not_use_is_refused(change: dict, message: str):
    with pytest.raises(TunelabError, match=f"^strategy catalog row 'soft-template': .*{message}"):
        _validate(replace(CATALOG["soft-template"], **change))


def test_an_unknown_name_lists_the_catalog():
    with pytest.raises(TunelabError, match="^unknown strategy 'bert'; choose one of full, linear-probe, lora,"):
        entry("bert")


def test_the_catalog_and_the_advisor_import_without_torch():
    code = ("import sys, tunelab.compare.advisor, tunelab.strategies.catalog; "
            "print('torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_pet_tunes_exactly_the_pet_tunable_rows():
    from tunelab.strategies.pet import PetOptions

    for name in CATALOG:
        if name in PET_TUNABLE:
            assert PetOptions(tune=name).tune == name
        else:
            with pytest.raises(ValueError, match="tune"):
                PetOptions(tune=name)


def test_pet_few_shot_defaults_follow_what_it_tunes():
    from tunelab.strategies.pet import FEW_SHOT_LEARNING_RATES, PatternExploitingTraining, PetOptions

    pet = PatternExploitingTraining()
    for name in PET_TUNABLE:
        learning_rate, epochs = pet.training_defaults(PetOptions(tune=name))
        assert learning_rate == FEW_SHOT_LEARNING_RATES.get(name, CATALOG[name].learning_rate)
        assert epochs == CATALOG["pet"].epochs


def test_only_strategies_inside_the_lm_go_to_the_trl_stages():
    assert set(TRL_STRATEGIES) <= {name for name, row in CATALOG.items() if row.serves("generation")}
    assert not any(CATALOG[name].prompt_based for name in TRL_STRATEGIES)


def test_composition_reads_each_runs_delta_from_the_catalog():
    """Mixed batches share the base for these deltas; merging takes the task vectors among them."""
    deltas = {name: row.delta for name, row in CATALOG.items() if row.delta is not None}
    assert deltas == {"linear-probe": "head", "lora": "lora", "ia3": "ia3", "adapter": "adapter"}
    assert {row.delta for row in CATALOG.values()} - {None} == set(catalog.DELTAS)
    assert set(catalog.TASK_VECTORS) < set(catalog.DELTAS)
