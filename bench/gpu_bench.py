"""The GPU benchmark (bench/gpu.sh runs it on one H200): each stage alone, then end to end.

Stages at the paper's geometry: reader (DALI, `mixed` nvJPEG decode on the GPU), Wide-ResNet-50-2
at 224 (bf16 autocast, channels_last; random weights are fine for timing), the fused difficulty
kernel on its stage maps, a pix2pix unet_256 victim at 256x256; then `run_scoring` end to end.
Target: >= 3,000 images/s end to end on one H200. `--device cpu --small` smoke-tests it anywhere.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import machine, pix2pix_victim  # noqa: E402


def rate(run, n_images: int, device: torch.device, repeats: int = 5) -> float:
    run()
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(repeats):
        run()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return n_images * repeats / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--small", action="store_true", help="tiny sizes: a smoke test on CPU")
    parser.add_argument("--out", default=str(HERE / "results" / "gpu-bench.json"))
    args = parser.parse_args()
    device = torch.device(args.device)
    batch, n_e2e, victim_size = (4, 32, 64) if args.small else (256, 20000, 256)
    from memscore.backbones import create_backbone
    from memscore.seeding import fit_mask
    from memscore.victims import load
    from memscore.kernels.difficulty import predictability_error
    results: dict = {"machine": machine(), "device": str(device), "batch": batch}

    backbone = create_backbone("wide_resnet50_2", pretrained=False).to(device).to(memory_format=torch.channels_last)
    x = torch.randn(batch, 3, 224, 224, device=device).to(memory_format=torch.channels_last)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    with torch.no_grad(), autocast:
        results["backbone_wrn50_2_bf16_images_per_s"] = rate(lambda: backbone(x), batch, device)
        stages = [s.float() for s in backbone(x)]
    target = torch.rand(batch, 3, 56, 56, device=device)
    mask = fit_mask([str(i) for i in range(batch)], 56 * 56, 0.7, 0).to(device)
    results["kernel_images_per_s"] = rate(lambda: predictability_error(stages, target, mask), batch, device)

    work = Path(tempfile.mkdtemp(prefix="memscore-gpu-"))
    netG = {64: "unet_64", 256: "unet_256"}[victim_size]
    spec = pix2pix_victim(work / "victim.pth", size=victim_size, ngf=64)
    victim = load(spec, netG=netG, ngf=64, norm="instance", use_dropout=False).to(device)
    v_in = torch.rand(batch, 3, victim_size, victim_size, device=device) * 2 - 1
    with torch.no_grad(), autocast:
        results["victim_pix2pix_images_per_s"] = rate(lambda: victim(v_in), batch, device)

    from memscore.config import ScoreConfig
    from memscore.run import RunOptions, run_scoring
    from memscore.work import DatasetSpec
    from memscore.synthetic import write_manifest_dataset
    manifest = write_manifest_dataset(work / "data", n_e2e, distinct=256, size=256)
    weights = work / "wrn.pth"
    torch.save(_torchvision_wrn_state(), weights)
    config = ScoreConfig(victim=spec, victim_size=victim_size, backbone="wide_resnet50_2", backbone_weights=str(weights),
                         precision="bf16" if device.type == "cuda" else "fp32",
                         victim_options=(("netG", netG), ("ngf", 64), ("norm", "instance"), ("use_dropout", False)))
    summary = run_scoring(DatasetSpec(str(manifest)), config, work / "e2e.zarr",
                          RunOptions(batch_size=batch, shard_size=4096, device=str(device)), overwrite=True,
                          progress=False)
    n = summary.scored + summary.failed
    results["end_to_end"] = {"images": n, "seconds": summary.seconds, "images_per_s": n / summary.seconds,
                             "stages": summary.stages.as_dict()}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


def _torchvision_wrn_state() -> dict:
    from torchvision.models import wide_resnet50_2
    return wide_resnet50_2(weights=None).state_dict()


if __name__ == "__main__":
    main()
