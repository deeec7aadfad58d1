"""Shared pieces of the benchmarks (and the kernel's tests): real photos as a batch, a pix2pix-style victim
checkpoint, timing, and result files."""
from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

RESULTS = Path(__file__).resolve().parent / "results"


def aligned_photo_batch(folder: str | Path, count: int, size: int = 224, grid: int = 56
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """`[count, 3, size, size]` photos in [0, 1] (sorted `*.jpg` of a pix2pix aligned `folder`, the photo being
    the left half) and their `[count, 3, grid, grid]` targets."""
    paths = sorted(Path(folder).glob("*.jpg"))[:count]
    if len(paths) < count:
        raise FileNotFoundError(f"{folder}: {count} aligned .jpg photos needed, found {len(paths)}")
    photos = []
    for path in paths:
        image = Image.open(path).convert("RGB")
        photo = image.crop((0, 0, image.width // 2, image.height)).resize((size, size), Image.BILINEAR)
        photos.append(torch.from_numpy(np.asarray(photo, dtype=np.float32) / 255.0).permute(2, 0, 1))
    images = torch.stack(photos)
    target = F.interpolate(images, size=(grid, grid), mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)
    return images, target


def pix2pix_victim(path: Path, size: int = 64, ngf: int = 16) -> str:
    """A randomly initialised pix2pix U-Net saved as a memscore checkpoint (it carries its architecture); returns its
    victim spec."""
    from memscore.train import VictimArch, save_generator
    from memscore.victims.pix2pix import build_generator
    arch = VictimArch(netG={64: "unet_64", 128: "unet_128", 256: "unet_256"}[size], ngf=ngf, norm="instance", size=size)
    if not path.exists():
        torch.manual_seed(0)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_generator(build_generator(arch.netG, 3, 3, arch.ngf, arch.norm, False), arch, path)
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
