"""The arithmetic a run computes in: fp32, or bf16/fp16 autocast with fp32 master weights and optimizer state.

`auto` is bf16 only where the hardware does bf16 natively (a CUDA GPU that supports it, a CPU with avx512_bf16 or
AMX); anywhere else bf16 is emulated and slower than fp32 (measured on an AVX2 CPU: a MiniLM training step 28x
slower), so `auto` stays fp32 there. `TUNELAB_CPU_BF16=0|1` overrides what the CPU's flags say: for a VM that hides
its flags, or a test suite that must compute the same on every machine.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Literal, get_args

import torch
from accelerate.utils import convert_outputs_to_fp32
from torch import nn

from tunelab.config import Precision
from tunelab.errors import TunelabError

Resolved = Literal["fp32", "bf16", "fp16"]
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
CPU_BF16_ENV = "TUNELAB_CPU_BF16"
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@functools.cache
def cpu_has_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether this CPU computes bf16 natively (Linux reports it in its flags; elsewhere: assume not)."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return any(flag in flags for flag in CPU_BF16_FLAGS)


def cpu_computes_bf16() -> bool:
    """Whether `auto` takes bf16 on this CPU: TUNELAB_CPU_BF16 (0 or 1) where it is set, else the CPU's flags."""
    override = os.environ.get(CPU_BF16_ENV)
    if override is None:
        return cpu_has_bf16()
    if override not in ("0", "1"):
        raise TunelabError(f"{CPU_BF16_ENV}={override!r}: set it to 1 (this CPU computes bf16) or 0 (it does not), "
                           f"or unset it to read the CPU's flags")
    return override == "1"


def device_type() -> str:
    """Where tunelab computes: the Trainer and every predictor use a CUDA GPU when there is one."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_precision(requested: Precision, device: str | None = None) -> Resolved:
    """`auto` made concrete for `device` (default: where tunelab computes); a precision the device cannot run is
    refused with what to use instead."""
    if requested not in get_args(Precision):
        raise TunelabError(f"unknown precision '{requested}'; use one of {', '.join(get_args(Precision))}")
    device = device or device_type()
    gpu_bf16 = device == "cuda" and torch.cuda.is_bf16_supported()
    if requested == "auto":
        return "bf16" if gpu_bf16 or (device == "cpu" and cpu_computes_bf16()) else "fp32"
    if requested == "fp16" and device != "cuda":
        raise TunelabError("--precision fp16 needs a CUDA GPU; on a CPU use --precision bf16 or fp32")
    if requested == "bf16" and device == "cuda" and not gpu_bf16:
        raise TunelabError("this GPU has no bf16; use --precision fp16 or fp32")
    return requested


def trainer_flags(precision: Resolved) -> dict[str, bool]:
    """The Trainer's (and TRL's) mixed-precision switches: autocast in the forward, fp32 weights and optimizer. On a
    machine without an accelerator the Trainer is told it runs on the CPU (`use_cpu`): without it, it refuses bf16
    there, and under torchrun it silently trains every process alone on all the data instead of with DDP (gloo)."""
    return {"bf16": precision == "bf16", "fp16": precision == "fp16", "use_cpu": device_type() == "cpu"}


def in_precision(model: nn.Module, precision: Resolved) -> nn.Module:
    """The model (changed in place) computing in `precision` for inference: its forward, and that of every
    transformers model inside it (which `generate` calls directly), run under autocast; the outer forward returns
    fp32, so that what predictors read (logits, scores) needs no cast."""
    if precision == "fp32":
        return model
    from transformers import PreTrainedModel

    dtype = DTYPES[precision]
    inner = [module for module in model.modules() if isinstance(module, PreTrainedModel) and module is not model]
    for module in inner:
        module.forward = torch.autocast(device_type(), dtype=dtype)(module.forward)
    model.forward = convert_outputs_to_fp32(torch.autocast(device_type(), dtype=dtype)(model.forward))
    return model
