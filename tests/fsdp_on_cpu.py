"""Run a script, or `-m tunelab ...`, under torchrun with accelerate's FSDP path forced on CPU processes.

accelerate hands the Trainer FSDP only on accelerators: on CPUs it trains plain DDP (tunelab refuses `fsdp` there,
`engines.Engine.needs_accelerator`). FSDP2 itself (`fully_shard`) shards on CPUs over gloo, so the tests take
accelerate's FSDP branch here, as it runs on GPUs, to check tunelab's runs under real FSDP2 sharding: the
distributed state is declared multi-GPU before accelerate picks its branch (the device stays the CPU), and the
engine row is allowed on CPUs. Usage: `torchrun --nproc-per-node 2 tests/fsdp_on_cpu.py SCRIPT ARGS...` or
`torchrun --nproc-per-node 2 tests/fsdp_on_cpu.py -m tunelab train ...`."""

import dataclasses
import runpy
import sys

import accelerate.state
from accelerate.utils import DistributedType

import tunelab.engines

_accelerator_state = accelerate.state.AcceleratorState.__init__


def _with_fsdp(self: accelerate.state.AcceleratorState, *args: object, **kwargs: object) -> None:
    if accelerate.state.PartialState._shared_state == {}:
        accelerate.state.PartialState(cpu=bool(kwargs.get("cpu", False)))
    if accelerate.state.PartialState._shared_state["distributed_type"] == DistributedType.MULTI_CPU:
        accelerate.state.PartialState._shared_state["distributed_type"] = DistributedType.MULTI_GPU
    _accelerator_state(self, *args, **kwargs)


accelerate.state.AcceleratorState.__init__ = _with_fsdp
tunelab.engines.ENGINES["fsdp"] = dataclasses.replace(tunelab.engines.ENGINES["fsdp"], needs_accelerator=None)

if __name__ == "__main__":
    if sys.argv[1] == "-m":
        sys.argv = [sys.argv[2], *sys.argv[3:]]
        runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
    else:
        sys.argv = sys.argv[1:]
        runpy.run_path(sys.argv[0], run_name="__main__")
