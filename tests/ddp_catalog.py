"""Run under torchrun by test_distributed.py: every catalogue strategy trained by the processes together, the
prompt-based ones on the causal LM, AdapterFusion on two adapter runs made first, under DDP or the ENGINE given
(a strategy known to fail under it is refused instead, and not trained). Usage:
`torchrun --nproc-per-node 2 tests/ddp_catalog.py ENCODER CAUSAL_LM DATA OUTPUT [ENGINE]`."""

import sys
from pathlib import Path

from tunelab import api, build_config
from tunelab.engines import trap
from tunelab.strategies.catalog import CATALOG


def config(model: str, data: str, output: Path, strategy: str, engine: str, seed: int = 42, **options: object):
    return build_config({"model": model, "data": {"source": data}, "strategy": {"name": strategy, "options": options},
                         "training": {"max_length": 16, "batch_size": 8, "epochs": 1, "seed": seed,
                                      "distributed": engine},
                         "output": str(output)})


def main(encoder: str, causal_lm: str, data: str, output: Path, engine: str = "ddp") -> None:
    sources = [output / "adapter", output / "adapter-b"]
    api.train(config(encoder, data, sources[1], "adapter", engine, seed=7), progress=False)
    for name, row in CATALOG.items():
        if trap(name, engine) is None:
            model = causal_lm if row.prompt_based else encoder
            options = {"sources": [str(source) for source in sources]} if row.composes else {}
            api.train(config(model, data, output / name, name, engine, **options), progress=False)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], Path(sys.argv[4]), *sys.argv[5:])
