"""tunelab: adapt pre-trained language models with every major fine-tuning strategy, and compare them."""

import os

# No network call the user did not ask for: TRL and the hub client send telemetry unless told not to.
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from tunelab.api import RunResult, evaluate, load_predictor, train  # noqa: E402
from tunelab.config import RunConfig, build_config  # noqa: E402
from tunelab.errors import TunelabError  # noqa: E402

__all__ = ["RunConfig", "RunResult", "TunelabError", "build_config", "evaluate", "load_predictor", "train"]
