"""Full fine-tuning: every weight of the backbone and the head trains (Devlin et al. 2019)."""

from __future__ import annotations

from pydantic import BaseModel

from tunelab.strategies.base import NoOptions, PartialTraining


class FullFineTuning(PartialTraining):
    name = "full"
    summary = "train every weight; best with plenty of labels, one full model copy per task"
    Options = NoOptions
    default_learning_rate = 5e-5
    default_epochs = 3.0
    family = "full"

    def trainable_prefixes(self, options: BaseModel) -> tuple[str, ...]:
        return ("backbone.", "head.")

    def trains_on_features(self, options: BaseModel) -> bool:
        return False
