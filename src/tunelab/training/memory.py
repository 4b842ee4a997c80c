"""Memory: the largest micro-batch that fits, found by a probe before training, and running out of memory turned
into one line that names the batch that would fit.

`training.batch_size` is the optimizer's batch and stays what it is: a batch too big for the device is computed in
micro-batches whose gradients add up before the step (the Trainer's gradient accumulation), so the optimisation is
the one a bigger device would run. The probe runs a forward and backward on copies of the longest training example,
with room held for the gradients and the optimizer's state, and leaves the weights, the buffers and the random
generators as it found them, so that a run with `auto` equals a run given the micro-batch it found."""

from __future__ import annotations

import gc
import inspect
import re
import resource
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import psutil
import torch
from torch import nn
from transformers import default_data_collator

from tunelab.config import RunConfig
from tunelab.errors import TunelabError
from tunelab.precision import DTYPES, Resolved, device_type

OPTIMIZER_STATES = 2  # AdamW keeps two moments of every trainable value, in its dtype
# Of the RAM available when the probe starts, what a CPU run may plan to fill: a CPU that runs out is usually killed
# by the kernel, not told, so a CPU probe never runs a batch its measured activations say would not fit.
CPU_HEADROOM = 0.9
# An inference batch fits when its largest tensor takes at most this share of the free memory: the failed
# allocation is one tensor of many that a forward holds at once.
LARGEST_TENSOR_SHARE = 0.5
# What torch says when an allocation fails: CUDA's message and the CPU allocator's.
TRIED_TO_ALLOCATE = re.compile(r"(?:Tried to allocate|you tried to allocate) ([\d.]+) ?(bytes|[KMGT]iB)")
UNITS = {"bytes": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}
# A container's memory limit and use (cgroup v2, then v1); a limit of "max" or a huge number means none.
CGROUP = Path("/sys/fs/cgroup")
CGROUP_MEMORY = ((CGROUP / "memory.max", CGROUP / "memory.current"),
                 (CGROUP / "memory/memory.limit_in_bytes", CGROUP / "memory/memory.usage_in_bytes"))


def is_out_of_memory(error: BaseException) -> bool:
    """torch's out-of-memory on a GPU, or the CPU allocator's refusal (a plain RuntimeError)."""
    return isinstance(error, torch.OutOfMemoryError) or (
        isinstance(error, RuntimeError) and "can't allocate memory" in str(error))


def available_bytes(device: torch.device) -> int:
    """What new tensors can take now: on a GPU the free memory plus what torch's cache holds unused; on a CPU the
    RAM available, within this process's address-space limit (`ulimit -v`) and its container's memory limit."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    room = [psutil.virtual_memory().available]
    address_space, _ = resource.getrlimit(resource.RLIMIT_AS)
    if address_space != resource.RLIM_INFINITY:
        room.append(address_space - psutil.Process().memory_info().vms)
    for limit, usage in CGROUP_MEMORY:
        if limit.exists() and usage.exists() and limit.read_text().strip().isdigit():
            room.append(int(limit.read_text()) - int(usage.read_text()))
    return max(0, min(room))


def describe(device: torch.device) -> str:
    """The device and its memory, as the error line names it."""
    if device.type == "cuda":
        _, total = torch.cuda.mem_get_info(device)
        return f"{device} ({torch.cuda.get_device_name(device)}, {total / 2**30:.1f} GiB)"
    return f"the CPU ({psutil.virtual_memory().total / 2**30:.1f} GiB of RAM)"


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def divisors(number: int) -> list[int]:
    """The micro-batches a batch of `number` can be computed in, exactly: its divisors, ascending."""
    return [size for size in range(1, number + 1) if number % size == 0]


def largest_divisor_within(number: int, limit: int) -> int:
    return max((size for size in divisors(number) if size <= limit), default=1)


def check_micro_batch(config: RunConfig, processes: int) -> None:
    """A micro-batch must divide each process's share of the batch (the step then adds whole micro-batches); `auto`
    probes one process's memory, so several processes are given a number."""
    training = config.training
    micro = training.micro_batch_size
    if micro == "auto" and processes > 1:
        raise TunelabError("--batch-size auto probes the memory of one process; under several processes give "
                           "--micro-batch-size N (examples per step on each device)")
    share = training.batch_size // processes
    if isinstance(micro, int) and share % micro:
        raise TunelabError(f"--micro-batch-size {micro} does not divide the batch of {share} examples per process: "
                           f"give one of {', '.join(map(str, divisors(share)))}")


def micro_batch_facts(size: int, share: int, found: bool) -> dict[str, Any]:
    """How the run computed its batches, for metrics.json: the micro-batch, the micro-batches added per step, and
    whether the probe found it (`--batch-size auto`)."""
    return {"micro_batch_size": size, "gradient_accumulation_steps": share // size, "micro_batch_found": found}


def longest_example(dataset: Any, model: nn.Module) -> tuple[dict[str, Any], int | None]:
    """The training example with the most tokens (the one whose batch needs the most memory), with only the fields
    the model reads (as the Trainer drops the others), and its length; a dataset of feature vectors has examples of
    one size, and no length."""
    length = None
    if isinstance(dataset, datasets.Dataset) and "input_ids" in dataset.column_names:
        lengths = [len(ids) for ids in dataset["input_ids"]]
        index = int(np.argmax(lengths))
        example, length = dataset[index], lengths[index]
    else:
        example = dataset[0]
    reads = inspect.signature(model.forward).parameters
    return {key: value for key, value in example.items() if key in reads}, length


def state_bytes(model: nn.Module) -> int:
    """The gradients and the optimizer's moments of what trains: memory a step holds besides activations."""
    return sum(parameter.numel() * parameter.element_size() for parameter in model.parameters()
               if parameter.requires_grad) * (1 + OPTIMIZER_STATES)


@contextmanager
def untouched(model: nn.Module) -> Iterator[None]:
    """Nothing steps, so the weights stay; the gradients, the buffers (running statistics), the training flag and
    the random generators (dropout draws from them) are put back as they were."""
    generators = torch.get_rng_state(), torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    buffers = {name: buffer.clone() for name, buffer in model.named_buffers()}
    training = model.training
    try:
        yield
    finally:
        for parameter in model.parameters():
            parameter.grad = None
        with torch.no_grad():
            for name, buffer in model.named_buffers():
                buffer.copy_(buffers[name])
        torch.set_rng_state(generators[0])
        if generators[1] is not None:
            torch.cuda.set_rng_state_all(generators[1])
        model.train(training)
        release(model_device(model))


def release(device: torch.device) -> None:
    """Hand freed memory back, so that what is measured next sees it."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


@dataclass
class Probe:
    """Forward and backward passes of one example repeated, as training computes them (in its precision)."""

    model: nn.Module
    example: dict[str, Any]  # the longest training example, as the model reads it
    length: int | None  # its tokens (None for feature vectors)
    collator: Any
    precision: Resolved

    @classmethod
    def of(cls, model: nn.Module, dataset: Any, collator: Any, precision: Resolved) -> Probe:
        return cls(model, *longest_example(dataset, model), collator, precision)

    def on(self, device: torch.device) -> Probe:
        """The probe with the model on `device`, where the Trainer will put it."""
        self.model.to(device)
        return self

    def activation_bytes(self, size: int) -> int | None:
        """The bytes autograd keeps for the backward of a batch of `size` copies of the example (the activations;
        the weights aside), with room held for the optimizer's state; None when the batch does not fit."""
        device = model_device(self.model)
        weights = {tensor.untyped_storage().data_ptr() for tensor in [*self.model.parameters(),
                                                                      *self.model.buffers()]}
        saved: dict[int, int] = {}

        def pack(tensor: torch.Tensor) -> torch.Tensor:
            storage = tensor.untyped_storage()
            if storage.data_ptr() not in weights:
                saved[storage.data_ptr()] = storage.nbytes()
            return tensor

        try:
            with untouched(self.model):
                held = optimizer_room(self.model) if device.type == "cuda" else []  # a CPU's is counted instead
                batch = (self.collator or default_data_collator)([self.example] * size)
                self.model.train()
                with (torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor),
                      torch.autocast(device.type, dtype=DTYPES.get(self.precision), enabled=self.precision != "fp32")):
                    loss = self.model(**{key: value.to(device) for key, value in batch.items()}).loss
                loss.backward()
                del held, loss
        except (torch.OutOfMemoryError, RuntimeError) as error:
            if not is_out_of_memory(error):
                raise
            return None
        return sum(saved.values())


def optimizer_room(model: nn.Module) -> list[torch.Tensor]:
    """Tensors the size of the optimizer's moments, held while a GPU probe runs (training will hold them)."""
    return [torch.empty_like(parameter) for parameter in model.parameters() if parameter.requires_grad
            for _ in range(OPTIMIZER_STATES)]


def largest_micro_batch(probe: Probe, share: int) -> int:
    """The largest divisor of `share` (a process's batch) whose forward and backward fit, by bisection among the
    divisors after trying the whole batch (which usually fits). One example is measured first: its activations
    bound what a CPU may try, as a CPU that runs out is killed rather than told."""
    one = probe.activation_bytes(1)
    if one is None:
        raise TunelabError(f"out of memory on {describe(model_device(probe.model))}: even one example"
                           f"{tokens(probe.length)} does not fit; {TRAIN_LESS}")
    limit = cpu_limit(probe.model, one)
    sizes = [size for size in divisors(share) if size <= limit]
    fitting, failing = 0, len(sizes)  # sizes[fitting] fits; none of sizes[failing:] is tried
    trying = failing - 1
    while failing - fitting > 1:
        if probe.activation_bytes(sizes[trying]) is None:
            failing = trying
        else:
            fitting = trying
        trying = (fitting + failing) // 2
    return sizes[fitting]


def micro_batch(probe: Probe, setting: int | str | None, share: int) -> int:
    """The examples per forward and backward: as set, found by the probe on the device training runs on (`auto`), or
    by default the whole of this process's batch."""
    if setting == "auto":
        return largest_micro_batch(probe.on(torch.device(device_type())), share)
    return setting or share


def cpu_limit(model: nn.Module, per_example: int) -> int | float:
    """On a CPU, the examples per step whose activations (measured for one) fit beside the optimizer's state in the
    RAM available; on a GPU no limit (its probes fail cleanly)."""
    if model_device(model).type != "cpu":
        return float("inf")
    return (CPU_HEADROOM * available_bytes(model_device(model)) - state_bytes(model)) // max(per_example, 1)


TRAIN_LESS = ("shorten --max-length, train fewer parameters (e.g. --strategy lora) or use a smaller model")


def tokens(length: int | None) -> str:
    return f" of {length} tokens" if length else ""


def training_out_of_memory(probe: Probe, share: int, micro: int, kept: str) -> TunelabError:
    """The line a run that ran out of memory while training ends with: the device, the micro-batch it tried, and an
    estimate of one that fits: the activations of one example measured now, against the memory free now (the
    failed run's optimizer released) less the gradients' and optimizer's share."""
    device = model_device(probe.model)
    where = f"out of memory on {describe(device)} training {micro} examples per step{tokens(probe.length)}"
    if micro == 1:
        return TunelabError(f"{where}: {TRAIN_LESS}{kept}")
    one = probe.activation_bytes(1)
    room = available_bytes(device) - state_bytes(probe.model)
    estimate = min(micro - 1, int(room // one)) if one else 0
    if estimate < 1:
        return TunelabError(f"{where}; even one example may not fit: {TRAIN_LESS}{kept}")
    fits = largest_divisor_within(share, estimate)
    return TunelabError(f"{where}; about {estimate} would fit: pass --batch-size auto (the batch stays {share}, "
                        f"computed in micro-batches that fit) or --micro-batch-size {fits}{kept}")


def failed_allocation_bytes(error: BaseException) -> int | None:
    """The size of the allocation that failed, as torch's message gives it."""
    found = TRIED_TO_ALLOCATE.search(str(error))
    return int(float(found[1]) * UNITS[found[2]]) if found else None


@contextmanager
def inference_memory(batch_size: int, option: str) -> Iterator[None]:
    """Running out of memory while predicting becomes one line: the device, the batch, and an estimate of the batch
    whose largest tensor (the one that failed, scaled by examples) fits the memory free, with the option to pass."""
    try:
        yield
    except (torch.OutOfMemoryError, RuntimeError) as error:
        if not is_out_of_memory(error):
            raise
        tried = failed_allocation_bytes(error)
    else:
        return
    device = torch.device(device_type())  # where every predictor runs
    release(device)
    where = f"out of memory on {describe(device)} predicting in batches of {batch_size} examples"
    estimate = (batch_size // 2 if tried is None
                else min(batch_size - 1, int(LARGEST_TENSOR_SHARE * available_bytes(device) * batch_size // tried)))
    if estimate < 1:
        raise TunelabError(f"{where}; even one example may not fit: shorten the inputs or use a smaller model")
    raise TunelabError(f"{where}; about {estimate} would fit: pass {option} {estimate}")
