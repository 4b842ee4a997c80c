"""Feature extraction: the pre-trained encoder stays frozen and only a linear head trains.

With `cache_features` (the default) each text goes through the encoder once; the head then trains
on the stored sentence vectors, which is many times faster than re-encoding every epoch.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from tunelab.strategies.base import PartialTraining


class LinearProbeOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cache_features: bool = Field(True, description="encode each text once and train the head on the vectors")


class LinearProbe(PartialTraining):
    name = "linear-probe"
    Options = LinearProbeOptions

    def trainable_prefixes(self, options: BaseModel) -> tuple[str, ...]:
        return ("head.",)

    def trains_on_features(self, options: LinearProbeOptions) -> bool:
        return options.cache_features
