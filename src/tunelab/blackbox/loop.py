"""What every black-box search shares: rounds while the budget has room for a whole one, up to a number of rounds or
while the result on validation still improves, the state saved after each, and a resumed search starting from the
last one saved."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tunelab.blackbox.endpoints import BudgetSpent, Endpoint
from tunelab.runs import write_bytes_atomic


def resume(checkpoint: Path) -> Any | None:
    """The state after the last finished round; one cut short is searched again (its calls stay counted in the
    endpoint's ledger)."""
    return pickle.loads(checkpoint.read_bytes()) if checkpoint.exists() else None


def search_rounds(endpoint: Endpoint, state: Any, round_calls: int, patience: int, one_round: Callable[[], None],
                  checkpoint: Path, on_round: Callable[[Any], None], rounds: int = 0) -> Any:
    """Run `one_round` (at most `round_calls` calls) until the budget has no room for another, `rounds` rounds are
    done (`state.generation`; 0: no limit), or `patience` rounds pass without a better result on the validation shots
    (`state.stale`; 0: never); save `state` after each."""
    while True:
        remaining = endpoint.remaining_calls()
        if remaining is not None and remaining < round_calls:
            break
        if (rounds and state.generation >= rounds) or (patience and state.stale >= patience):
            break
        try:
            one_round()
        except BudgetSpent:  # a token budget: the round is not kept
            break
        write_bytes_atomic(checkpoint, pickle.dumps(state))
        on_round(state)
    return state
