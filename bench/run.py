"""Every benchmark from one entry point: end-to-end throughput, stage breakdown, the machine's
limit, cost growth with N, 1 process vs 2 workers, the kernel table. Writes
bench/results/<machine>-<date>.json and prints Markdown tables.

    python bench/run.py --quick      # under a few minutes: small N, lite0 only
    python bench/run.py              # the full set (WRN-50-2 end to end, 10k/100k growth: hours on 2 cores)
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import RESULTS, machine, markdown_table, pix2pix_victim  # noqa: E402

FACADES = HERE.parents[1] / "shared" / "datasets" / "facades"


def run_one(spec: dict) -> dict:
    """One end-to-end `run_scoring` (this is run in a fresh process, so peak RSS is its own)."""
    from engine.config import ScoreConfig
    from engine.run import DatasetSpec, run_scoring
    config = ScoreConfig(**{**spec["config"], "victim_options": tuple(tuple(p) for p in spec["config"]["victim_options"])})
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    summary = run_scoring(DatasetSpec(**spec["dataset"]), config, spec["out"], batch_size=spec.get("batch_size", 32),
                          shard_size=spec.get("shard_size", 1024), overwrite=True, progress=False)
    n = summary.scored + summary.failed
    return {"images": n, "seconds": summary.seconds, "images_per_s": n / summary.seconds,
            "stages": summary.stages.as_dict(), "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "start_rss_mb": before / 1024}


def in_subprocess(spec: dict) -> dict:
    out = subprocess.run([sys.executable, __file__, "--one", json.dumps(spec)], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def gemm_gflops(size: int = 2048, repeats: int = 5) -> float:
    import time
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size ** 3 * repeats / (time.perf_counter() - started) / 1e9


def flops_per_image(config: dict, victim_size: int) -> dict[str, float]:
    """FLOPs of one image through the victim and the backbone (torch's counter) and the kernel (closed form)."""
    from torch.utils.flop_counter import FlopCounterMode
    from engine.backbones import create_backbone
    from engine.victims import load
    counts = {}
    backbone = create_backbone(config["backbone"], pretrained=False)
    victim = load(config["victim"], **dict(config["victim_options"]))
    with torch.no_grad():
        for name, module, shape in (("backbone", backbone, (1, 3, 224, 224)), ("victim", victim, (1, 3, victim_size, victim_size))):
            with FlopCounterMode(display=False) as counter:
                module(torch.randn(*shape))
            counts[name] = float(counter.get_total_flops())
    grid = 56
    width = sum(min(c, (grid // (s // 4)) ** 2) for c, s in zip(backbone.stage_channels, backbone.stage_strides))
    n_fit = round(0.7 * grid * grid)
    # upsample (width x grid^2 x 4), Gram on fit rows, Cholesky, predict held-out rows
    counts["kernel"] = float(2 * grid * grid * width * 4 + 2 * n_fit * width ** 2 + width ** 3 / 3
                             + 2 * (grid * grid - n_fit) * width * 3 + 2 * width * width * 3)
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(json.loads(args.one))))
        return
    from engine.synthetic import write_manifest_dataset
    work = Path(tempfile.mkdtemp(prefix="memscore-bench-"))
    size = 64 if args.quick else 128
    options = [["netG", {64: "unet_64", 128: "unet_128"}[size]], ["ngf", 16], ["norm", "instance"], ["use_dropout", False]]
    victim = pix2pix_victim(work / "victim.pth", size=size)
    base = {"victim": victim, "victim_size": size, "victim_options": options, "alpha": "fit"}
    results: dict = {"quick": args.quick, "victim": f"pix2pix {options[0][1]} ngf 16 at {size}x{size} (random init)"}

    # end to end: synthetic and Facades, per backbone
    n_e2e = 256 if args.quick else 1024
    synthetic = write_manifest_dataset(work / "synthetic", n_e2e, distinct=64, size=256)
    datasets = {"synthetic 256px": {"data": str(synthetic)}}
    if FACADES.is_dir():
        datasets["facades"] = {"data": str(FACADES), "direction": "BtoA"}
    backbones = ["efficientnet_lite0"] + ([] if args.quick else ["wide_resnet50_2"])
    rows, e2e = [], {}
    gemm = gemm_gflops()
    for backbone in backbones:
        config = {**base, "backbone": backbone}
        if backbone == "wide_resnet50_2":  # random weights are fine for timing
            weights = work / "wrn_random.pth"
            from torchvision.models import wide_resnet50_2
            torch.save(wide_resnet50_2(weights=None).state_dict(), weights)
            config["backbone_weights"] = str(weights)
        flops = flops_per_image(config, size)
        limit = gemm * 1e9 / sum(flops.values())
        for name, dataset in datasets.items():
            result = in_subprocess({"config": config, "dataset": dataset, "out": str(work / "e2e.zarr")})
            key = f"{name} / {backbone}"
            e2e[key] = {**result, "flops_per_image": flops, "limit_images_per_s": limit}
            stage_rates = {stage: result["images"] / seconds for stage, seconds in result["stages"].items() if seconds > 0}
            slowest = min(stage_rates.values())
            rows.append([key, result["images"], result["images_per_s"], limit, result["images_per_s"] / limit,
                         result["images_per_s"] / slowest, result["peak_rss_mb"]])
            e2e[key]["stage_images_per_s"] = stage_rates
    results["gemm_gflops"] = gemm
    results["end_to_end"] = e2e
    print(f"float32 GEMM: {gemm:.1f} GFLOP/s ({torch.get_num_threads()} threads)\n")
    print(markdown_table(["dataset / backbone", "images", "images/s", "limit images/s", "achieved/limit",
                          "vs slowest stage", "peak RSS MB"], rows))
    print()
    stage_rows = [[key, *(f"{value['stages'].get(s, 0.0):.1f} s / {value['stage_images_per_s'].get(s, float('nan')):.0f} img/s"
                          for s in ("decode", "victim", "backbone", "kernel", "write"))] for key, value in e2e.items()]
    print(markdown_table(["run", "decode wait", "victim", "backbone", "kernel", "store write"], stage_rows))

    # cost growth with N (tiny images: the data path and the store, not the CNN, is what grows)
    growth_ns = [1000] if args.quick else [1000, 10000, 100000]
    growth = []
    for n in growth_ns:
        manifest = write_manifest_dataset(work / f"grow{n}", n, distinct=16, size=16)
        config = {**base, "backbone": "efficientnet_lite0"}
        result = in_subprocess({"config": config, "dataset": {"data": str(manifest)}, "out": str(work / "grow.zarr"),
                                "batch_size": 64})
        growth.append({"n": n, **result})
    results["growth"] = growth
    print()
    print(markdown_table(["N", "images/s", "peak RSS MB"], [[g["n"], g["images_per_s"], g["peak_rss_mb"]] for g in growth]))
    if len(growth) > 1:
        slope = (growth[-1]["peak_rss_mb"] - growth[0]["peak_rss_mb"]) / (growth[-1]["n"] - growth[0]["n"]) * 1e6
        results["rss_slope_mb_per_million_images"] = slope
        print(f"peak RSS slope: {slope:.1f} MB per million images")

    # the fused kernel table and 1 process vs 2 workers come from their own scripts
    for script in ("kernel.py", "scale.py"):
        if (HERE / script).exists():
            done = subprocess.run([sys.executable, str(HERE / script), *(["--quick"] if args.quick else [])],
                                  capture_output=True, text=True)
            print(f"\n## {script}\n{done.stdout[-4000:]}")
            results[script] = json.loads((RESULTS / f"{Path(script).stem}.json").read_text()) if done.returncode == 0 \
                else {"error": done.stderr[-2000:]}
    name = f"{platform.node() or 'machine'}-{datetime.date.today().isoformat()}"
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps({"machine": machine(), **results}, indent=2))
    print(f"\nwritten {RESULTS / (name + '.json')}")


if __name__ == "__main__":
    main()
