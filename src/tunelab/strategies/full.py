"""Full fine-tuning: every weight of the backbone and the head trains (Devlin et al. 2019)."""

from __future__ import annotations

from pydantic import BaseModel

from tunelab.strategies.base import NoOptions, PartialTraining


class FullFineTuning(PartialTraining):
    name = "full"
    Options = NoOptions

    def trainable_prefixes(self, options: BaseModel) -> tuple[str, ...]:
        return ("backbone.", "head.")

    def trains_on_features(self, options: BaseModel) -> bool:
        return False
