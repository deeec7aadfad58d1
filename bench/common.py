"""Shared pieces of the benchmarks: a pix2pix-style victim checkpoint, timing, and result files."""
from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def pix2pix_victim(path: Path, size: int = 64, ngf: int = 16) -> str:
    """A randomly initialised pix2pix U-Net saved as a memscore checkpoint (it carries its architecture); returns its
    victim spec."""
    from memscore.train import VictimArch, _save
    from memscore.victims.pix2pix import build_generator
    arch = VictimArch(netG={64: "unet_64", 128: "unet_128", 256: "unet_256"}[size], ngf=ngf, norm="instance", size=size)
    if not path.exists():
        torch.manual_seed(0)
        path.parent.mkdir(parents=True, exist_ok=True)
        _save(build_generator(arch.netG, 3, 3, arch.ngf, arch.norm, False), arch, path)
    return f"pix2pix:{path}"


def timed(run: Callable[[], object]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process): CPU time is what the work costs when others share the cores."""
    wall, cpu = time.perf_counter(), time.process_time()
    run()
    return time.perf_counter() - wall, time.process_time() - cpu


def memory_mib(field: str) -> float:
    """A memory figure of this process from /proc/self/status (Linux), in MiB: VmRSS now, VmHWM the peak
    since the process started or since the last `reset_peak_memory`."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak_memory() -> None:
    """Set VmHWM back to the current RSS, so the next reading is the peak of what follows."""
    Path("/proc/self/clear_refs").write_text("5")


def gemm_rate(size: int = 2048, repeats: int = 5) -> dict[str, float]:
    """Best float32 torch matmul rate, GFLOP/s per wall second and per CPU second (all threads)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    times = [timed(lambda: a @ b) for _ in range(repeats)]
    return {"wall": 2.0 * size ** 3 / min(t[0] for t in times) / 1e9,
            "cpu": 2.0 * size ** 3 / min(t[1] for t in times) / 1e9}


def machine() -> dict:
    return {"machine": platform.node(), "processor": platform.processor() or platform.machine(),
            "cores": torch.get_num_threads(), "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def write_results(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **payload}, indent=2))
    return path


def markdown_table(header: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(f"{v:.3g}" if isinstance(v, float) else str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)
