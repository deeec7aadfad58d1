"""Every benchmark from one entry point: end-to-end throughput, stage breakdown, the machine's
limit, cost growth with N, 1 process vs 2 workers, the kernel table. Writes
bench/results/<machine>-<date>.json and prints Markdown tables.

    python bench/run.py --quick                  # every section small, lite0 only: a smoke run (~2 min on 2 cores)
    python bench/run.py                          # the full set (tens of minutes on 2 cores)
    python bench/run.py --sections growth --growth 1000,10000,100000   # growth alone, to 100k
    python bench/run.py --reuse                  # kernel/scale tables from their last result files

Sections not run keep their figures in today's result file. Every end-to-end run is a fresh
process (`run_scoring`), so its peak RSS is its own.
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import RESULTS, gemm_rate, machine, markdown_table, memory_mib, pix2pix_victim, reset_peak_memory  # noqa: E402

FACADES = HERE.parents[1] / "shared" / "datasets" / "facades"
STAGES = ("decode", "victim", "backbone", "kernel", "write")
GROWTH_SHARD = 1024
STANDALONE_SAMPLE = 256  # pairs decoded, held in memory, then scored stage by stage with nothing else running


def measure_shard_peaks(peaks: list[float]) -> None:
    """Append each shard's own peak RSS to `peaks` (the peak is reset as a shard starts). A run's peak
    is the largest of its shards' peaks, which vary by tens of MB with timing and fragmentation, so it
    creeps up with the number of shards even when nothing accumulates; the shards' peaks against
    their order show whether anything does."""
    import memscore.work
    score_shard = memscore.work.score_shard

    def measured(*args, **kwargs):
        peaks.append(memory_mib("VmHWM"))  # setup before the first shard, then each previous shard
        reset_peak_memory()
        return score_shard(*args, **kwargs)

    memscore.work.score_shard = measured


def run_one(spec: dict) -> dict:
    """One end-to-end `run_scoring`, then each stage alone on the same data (this runs in a fresh process).

    Standalone rates: the reader alone on the first pairs, then the decoded batches scored with no
    reader running (victim, backbone and kernel each timed by the scorer's stage clocks); the store
    write has nothing beside it in a run, so its in-run rate is its standalone one.
    """
    from memscore.config import ScoreConfig
    from memscore.pipeline import batches
    from memscore.devices import reader_threads
    from memscore.run import RunOptions, run_scoring
    from memscore.work import DatasetSpec
    from memscore.scores import Scorer
    from memscore.timing import StageTimes
    config = ScoreConfig(**{**spec["config"], "victim_options": tuple(tuple(p) for p in spec["config"]["victim_options"])})
    dataset_spec = DatasetSpec(**spec["dataset"])
    batch_size = spec.get("batch_size", 32)
    peaks: list[float] = []
    measure_shard_peaks(peaks)
    summary = run_scoring(dataset_spec, config, spec["out"],
                          RunOptions(batch_size=batch_size, shard_size=spec.get("shard_size")), overwrite=True,
                          progress=False)
    peaks.append(memory_mib("VmHWM"))  # the last shard and the alpha pass
    setup_peak, shard_peaks = peaks[0], peaks[1:]
    n = summary.scored + summary.failed
    stages = summary.stages.as_dict()
    scorer = Scorer(config)
    pairs = list(dataset_spec.open().pairs(0, min(n, STANDALONE_SAMPLE)))
    started = time.perf_counter()
    decoded = list(batches(pairs, scorer.view, batch_size, threads=reader_threads()))
    standalone = {"decode": len(pairs) / (time.perf_counter() - started), "write": n / stages["write"]}
    scorer.score(decoded[0])  # warm-up: first-call allocations and kernel selection
    scorer.times = StageTimes()
    for batch in decoded:
        scorer.score(batch)
    standalone.update({stage: len(pairs) / seconds for stage, seconds in scorer.times.as_dict().items()})
    return {"images": n, "seconds": summary.seconds, "images_per_s": n / summary.seconds, "stages": stages,
            "stage_images_per_s": standalone, "peak_rss_mb": max(peaks), "setup_peak_rss_mb": setup_peak,
            "shard_peak_rss_mb": shard_peaks}


def in_subprocess(spec: dict) -> dict:
    out = subprocess.run([sys.executable, __file__, "--one", json.dumps(spec)], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def flops_per_image(config: dict, victim_size: int) -> dict[str, float]:
    """FLOPs of one image through the victim and the backbone (torch's counter) and the fused kernel
    (its Gram, Cholesky, right-hand side and held-out predictions; the reduced width of memscore.kernels.difficulty)."""
    from torch.utils.flop_counter import FlopCounterMode

    from memscore.backbones import create_backbone
    from memscore.victims import load
    from memscore.kernels.difficulty import reduced_width
    counts = {}
    backbone = create_backbone(config["backbone"], pretrained=False)
    victim = load(config["victim"], **dict(config["victim_options"]))
    with torch.no_grad():
        for name, module, shape in (("backbone", backbone, (1, 3, 224, 224)), ("victim", victim, (1, 3, victim_size, victim_size))):
            with FlopCounterMode(display=False) as counter:
                module(torch.randn(*shape))
            counts[name] = float(counter.get_total_flops())
    grid = 224 // backbone.stage_strides[0]
    sizes = [(224 // s, 224 // s) for s in backbone.stage_strides]
    width = reduced_width(list(backbone.stage_channels), sizes)
    n_fit = round(0.7 * grid * grid)
    counts["kernel"] = float(n_fit * width * (width + 1) + width ** 3 / 3 + 2 * n_fit * width * 3
                             + 2 * (grid * grid - n_fit) * width * 3)
    return counts


def end_to_end(work: Path, base: dict, victim_size: int, quick: bool) -> tuple[dict, list, list]:
    """Each dataset x backbone in a fresh process; the limit uses the best GEMM rate measured before
    and after (a shared machine's rate drifts; the faster reading is the machine's). "Stages in
    series" is the rate of running every stage alone one after the other (1 / the sum of their
    standalone costs): the ceiling wherever the stages share the same cores, as on a CPU."""
    from memscore.synthetic import write_manifest_dataset
    gemm_runs = [gemm_rate()["wall"]]
    n_synthetic = {"efficientnet_lite0": 64 if quick else 1024, "wide_resnet50_2": 256}
    backbones = ["efficientnet_lite0"] + ([] if quick else ["wide_resnet50_2"])
    results, rows, stage_rows, runs = {}, [], [], []
    for backbone in backbones:
        config = {**base, "backbone": backbone}
        if backbone == "wide_resnet50_2":  # random weights are fine for timing
            from torchvision.models import wide_resnet50_2
            weights = work / "wrn_random.pth"
            torch.save(wide_resnet50_2(weights=None).state_dict(), weights)
            config["backbone_weights"] = str(weights)
        synthetic = write_manifest_dataset(work / f"synthetic{n_synthetic[backbone]}", n_synthetic[backbone],
                                           distinct=64, size=256)
        datasets = {"synthetic 256px": {"data": str(synthetic)}}
        if FACADES.is_dir() and not quick:
            datasets["facades"] = {"data": str(FACADES), "direction": "BtoA"}
        flops = flops_per_image(config, victim_size)
        for name, dataset in datasets.items():
            result = in_subprocess({"config": config, "dataset": dataset, "out": str(work / "e2e.zarr")})
            runs.append((f"{name} / {backbone}", {**result, "flops_per_image": flops}))
    gemm_runs.append(gemm_rate()["wall"])
    gemm = max(gemm_runs)
    for key, result in runs:
        limit = gemm * 1e9 / sum(result["flops_per_image"].values())
        slowest_stage, slowest = min(result["stage_images_per_s"].items(), key=lambda item: item[1])
        in_series = 1.0 / sum(1.0 / rate for rate in result["stage_images_per_s"].values())
        results[key] = {**result, "limit_images_per_s": limit, "vs_slowest_stage": result["images_per_s"] / slowest,
                        "slowest_stage": slowest_stage, "stages_in_series_images_per_s": in_series}
        rows.append([key, result["images"], result["images_per_s"], limit, result["images_per_s"] / limit,
                     f"{result['images_per_s'] / slowest:.2f} ({slowest_stage})", result["images_per_s"] / in_series,
                     result["peak_rss_mb"]])
        stage_rows.append([key, *(f"{result['stages'].get(s, 0.0):.1f} s / {result['stage_images_per_s'].get(s, float('nan')):.0f}"
                                  for s in STAGES)])
    results["gemm_gflops"], results["gemm_gflops_runs"] = gemm, gemm_runs
    return results, rows, stage_rows


def growth(work: Path, base: dict, runs: list[dict], n: int) -> dict:
    """`runs` plus one more at N = n (tiny images, a manifest over 16 distinct pairs, shards of 1024),
    the slope of the runs' peak RSS from the first to this one, and within this run the least-squares
    slope of each shard's own peak against the images scored before it."""
    from memscore.synthetic import write_manifest_dataset
    manifest = write_manifest_dataset(work / f"grow{n}", n, distinct=16, size=16)
    result = in_subprocess({"config": {**base, "backbone": "efficientnet_lite0"}, "dataset": {"data": str(manifest)},
                            "out": str(work / "grow.zarr"), "batch_size": 64, "shard_size": GROWTH_SHARD})
    shard_peaks = result["shard_peak_rss_mb"]
    if len(shard_peaks) > 2:
        result["shard_peak_slope_mb_per_1000"] = float(np.polyfit(np.arange(len(shard_peaks)) * GROWTH_SHARD / 1000,
                                                                  shard_peaks, 1)[0])
    runs = [*runs, {"n": n, **result}]
    print(f"growth N={n}: {result['images_per_s']:.1f} images/s, peak RSS {result['peak_rss_mb']:.0f} MB; "
          f"shards' own peaks {min(shard_peaks):.0f}-{max(shard_peaks):.0f} MB (median {np.median(shard_peaks):.0f})"
          + (f", slope {result['shard_peak_slope_mb_per_1000']:+.2f} MB per 1000 images"
             if "shard_peak_slope_mb_per_1000" in result else ""), flush=True)
    out = {"runs": runs}
    if len(runs) > 1:
        out["rss_slope_mb_per_million_images"] = ((runs[-1]["peak_rss_mb"] - runs[0]["peak_rss_mb"])
                                                  / (runs[-1]["n"] - runs[0]["n"]) * 1e6)
    return out


def sub_benchmark(script: str, quick: bool, reuse: bool) -> tuple[dict, str]:
    """bench/kernel.py or bench/scale.py: run it (its table is printed), or reuse its last result file."""
    result_file = RESULTS / f"{Path(script).stem}{'_quick' if quick else ''}.json"
    if reuse and result_file.exists():
        return json.loads(result_file.read_text()), f"(reused {result_file.name})"
    done = subprocess.run([sys.executable, str(HERE / script), *(["--quick"] if quick else [])], capture_output=True, text=True)
    if done.returncode != 0:
        return {"error": done.stderr[-2000:]}, done.stderr[-2000:]
    return json.loads(result_file.read_text()), done.stdout[-4000:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--growth", help="comma-separated N for the growth runs (default 1000,10000; --quick 256)")
    parser.add_argument("--reuse", action="store_true", help="take kernel.py / scale.py results from their last files")
    parser.add_argument("--sections", default="e2e,growth,kernel,scale", help="comma-separated subset to run")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(json.loads(args.one))))
        return
    work = Path(tempfile.mkdtemp(prefix="memscore-bench-"))
    size = 64 if args.quick else 128
    options = [["netG", {64: "unet_64", 128: "unet_128"}[size]], ["ngf", 16], ["norm", "instance"], ["use_dropout", False]]
    base = {"victim": pix2pix_victim(work / "victim.pth", size=size), "victim_size": size, "victim_options": options,
            "alpha": "fit"}
    name = f"{platform.node() or 'machine'}-{datetime.date.today().isoformat()}{'-quick' if args.quick else ''}"
    path = RESULTS / f"{name}.json"
    RESULTS.mkdir(parents=True, exist_ok=True)
    results: dict = json.loads(path.read_text()) if path.exists() else {}  # sections not rerun keep today's figures
    results.update({"quick": args.quick, "victim": f"pix2pix {options[0][1]} ngf 16 at {size}x{size} (random init)",
                    "threads": torch.get_num_threads()})

    def save() -> None:  # after every section: a long run interrupted late keeps what it measured
        path.write_text(json.dumps({"machine": machine(), **results}, indent=2))

    sections = args.sections.split(",")
    if "e2e" in sections:
        e2e, rows, stage_rows = end_to_end(work, base, size, args.quick)
        results["end_to_end"] = e2e
        save()
        print(f"float32 GEMM: {e2e['gemm_gflops']:.1f} GFLOP/s, best of before/after ({torch.get_num_threads()} threads)\n")
        print(markdown_table(["dataset / backbone", "images", "images/s", "limit images/s", "achieved/limit",
                              "vs slowest stage", "vs stages in series", "peak RSS MB"], rows))
        print("\nper stage: seconds in the run / standalone images/s (each stage alone: the reader, then the decoded batches)")
        print(markdown_table(["run", *STAGES], stage_rows), flush=True)
    if "growth" in sections:
        sizes = [int(n) for n in (args.growth or ("256" if args.quick else "1000,10000")).split(",")]
        results["growth"] = {"runs": []}
        for n in sizes:
            results["growth"] = growth(work, base, results["growth"]["runs"], n)
            save()
        print()
        print(markdown_table(["N", "images/s", "peak RSS MB", "shards' own peaks MB (min-max)", "shard peak slope MB/1000"],
                             [[g["n"], g["images_per_s"], g["peak_rss_mb"],
                               f"{min(g['shard_peak_rss_mb']):.0f}-{max(g['shard_peak_rss_mb']):.0f}",
                               g.get("shard_peak_slope_mb_per_1000", "")] for g in results["growth"]["runs"]]))
        if "rss_slope_mb_per_million_images" in results["growth"]:
            print(f"peak RSS slope: {results['growth']['rss_slope_mb_per_million_images']:.1f} MB per million images")
    for script in ("kernel.py", "scale.py"):
        if Path(script).stem in sections:
            results[script], printed = sub_benchmark(script, args.quick, args.reuse)
            save()
            print(f"\n## {script}\n{printed}")
    print(f"\nwritten {path}")


if __name__ == "__main__":
    main()
