"""tunelab: adapt pre-trained language models with every major fine-tuning strategy, and compare them."""

from __future__ import annotations

import importlib
import os
from typing import Any

# No network call the user did not ask for: TRL and the hub client send telemetry unless told not to.
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

# The public API, imported on first use: `import tunelab` (and `tunelab --help`) must not pay for torch.
_EXPORTS = {
    "train": "tunelab.api", "evaluate": "tunelab.api", "zero_shot": "tunelab.api", "load_predictor": "tunelab.api",
    "predict": "tunelab.api", "RunResult": "tunelab.api",
    "RunConfig": "tunelab.config", "build_config": "tunelab.config", "TunelabError": "tunelab.errors",
    "export_merged": "tunelab.export", "make_bundle": "tunelab.compose.bundle", "read_bundle": "tunelab.compose.bundle",
    "merge_runs": "tunelab.compose.merge", "MergeMethod": "tunelab.compose.task_vectors",
    "MixedPredictor": "tunelab.compose.mixed", "ServedModels": "tunelab.serve.models",
    "create_app": "tunelab.serve.app",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'tunelab' has no attribute '{name}'")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
