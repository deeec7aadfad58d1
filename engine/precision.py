"""Numeric precision of the networks (backbone and victim): which devices run bfloat16 natively, what
`--precision auto` resolves to, and the autocast that applies the resolved precision.

bfloat16 pays only where the hardware multiplies it natively: CUDA GPUs from Ampere on, and CPUs
with AMX-BF16 or AVX512-BF16 (Sapphire Rapids and later Xeons, Zen 4 and later EPYCs). Elsewhere
oneDNN emulates it with fp32 arithmetic plus conversions, which is slower than fp32, so `bf16` is
refused there and `auto` picks fp32. The difficulty kernel never runs in bfloat16 (it takes the
stage maps as fp32 and refines in fp64); the victim's outputs come back as fp32.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterable
from pathlib import Path

import torch

from .errors import UsageError

PRECISIONS = ("auto", "fp32", "bf16")
"""What a user may ask for: `auto` is resolved per device (`resolve_precision`), once per run."""
NATIVE_BF16_CPU_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})
"""x86 feature flags (as /proc/cpuinfo spells them) of CPU instructions that multiply bfloat16 natively."""
CPUINFO = Path("/proc/cpuinfo")


def cpu_flags(cpuinfo: Path = CPUINFO) -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo's `flags` lines; empty where there is no such file (not Linux)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return frozenset()
    return frozenset(word for line in text.splitlines() if line.startswith("flags")
                     for word in line.partition(":")[2].split())


def native_bf16(device: torch.device, flags: Iterable[str] | None = None) -> bool:
    """Whether `device` multiplies bfloat16 natively. `flags`: the CPU's feature flags (default: read
    from /proc/cpuinfo; tests inject their own). CUDA: emulated support (pre-Ampere) does not count."""
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        return bool(NATIVE_BF16_CPU_FLAGS & set(cpu_flags() if flags is None else flags))
    return False


def resolve_precision(requested: str, device: torch.device | str, flags: Iterable[str] | None = None) -> str:
    """The precision a run on `device` uses: `fp32` or `bf16`. `auto` is bf16 where the device runs it
    natively and fp32 elsewhere; `bf16` where it does not is refused, saying why and what to pass."""
    device = torch.device(device)
    if requested == "fp32":
        return "fp32"
    native = native_bf16(device, flags)
    if requested == "auto":
        return "bf16" if native else "fp32"
    if requested not in PRECISIONS:
        raise UsageError(f"precision must be one of {PRECISIONS}, got {requested!r}")
    if not native:
        if device.type == "cpu":
            why = ("this CPU has no native bfloat16 instructions (neither AMX-BF16 nor AVX512-BF16 among the "
                   f"flags of {CPUINFO}), so bfloat16 would be emulated and run slower than fp32")
        elif device.type == "cuda":
            why = f"{torch.cuda.get_device_name(device)} has no native bfloat16 (it needs compute capability 8.0 or later)"
        else:
            why = f"memscore runs bfloat16 only on CUDA GPUs and CPUs with AMX-BF16 / AVX512-BF16, not on {device.type}"
        raise UsageError(f"--precision bf16 on {device}: {why}; use --precision fp32, or auto to pick bf16 only "
                         "where the hardware runs it natively")
    return "bf16"


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """The autocast for a resolved precision on `device`: bfloat16 for `bf16`, nothing for `fp32`."""
    if precision not in ("fp32", "bf16"):
        raise UsageError(f"autocast needs a resolved precision (fp32 or bf16), got {precision!r}: "
                         "call resolve_precision first")
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
