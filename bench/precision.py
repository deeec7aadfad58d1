"""fp32 vs bf16 vs auto, side by side: end-to-end throughput, time per stage and score agreement.

Two geometries, each on the first Facades validation pairs: the paper's (Wide-ResNet-50-2, random
init since the pretrained weights cannot be downloaded here, with a pix2pix unet_256 ngf 64 victim)
and the default backbone (EfficientNet-Lite0, shipped weights) with a `recon:` victim, whose outputs
were saved beforehand (here: blurred photos). The precisions run in turn, round after round, so a
shared machine's drift falls on all of them alike; each run is a whole `memscore score` (models loaded,
pairs decoded, scored, written) into a fresh store. Writes bench/results/precision.json.

    python bench/precision.py --quick     # 8 pairs, one round: a smoke run
    python bench/precision.py             # 48 pairs, 3 rounds (minutes on 2 cores)
    python bench/precision.py --threads 1 # when other processes share the cores
"""
from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFilter
from scipy.stats import spearmanr

from common import markdown_table, pix2pix_victim, timed, write_results
from memscore import DatasetSpec, ScoreConfig, open_store, score
from memscore.devices import use_threads
from memscore.precision import resolve_precision

FACADES_VAL = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "facades" / "val"
PRECISIONS = ("fp32", "bf16", "auto")
STAGES = ("decode", "victim", "backbone", "kernel", "write")


def facades_subset(folder: Path, count: int) -> Path:
    """A folder of links to the first `count` aligned Facades pairs (the data itself is not copied)."""
    folder.mkdir(parents=True, exist_ok=True)
    for path in sorted(FACADES_VAL.glob("*.jpg"))[:count]:
        (folder / path.name).symlink_to(path)
    return folder


def blurred_photos(pairs: Path, out: Path) -> Path:
    """A `recon:` folder: each pair's photo (the aligned file's left half) blurred, saved under its id."""
    out.mkdir(parents=True, exist_ok=True)
    for path in sorted(pairs.glob("*.jpg")):
        image = Image.open(path).convert("RGB")
        photo = image.crop((0, 0, image.width // 2, image.height))
        photo.filter(ImageFilter.GaussianBlur(2)).save(out / f"{path.stem}.png")
    return out


def geometries(work: Path) -> dict[str, ScoreConfig]:
    """The two configurations compared (precision left to each run)."""
    from torchvision.models import wide_resnet50_2
    wrn = work / "wrn_random.pth"
    torch.manual_seed(0)
    torch.save(wide_resnet50_2(weights=None).state_dict(), wrn)
    victim = pix2pix_victim(work / "unet256.pth", size=256, ngf=64)
    options = (("ngf", 64), ("netG", "unet_256"), ("norm", "instance"), ("use_dropout", False))
    return {
        "paper: wide_resnet50_2 + pix2pix unet_256 ngf 64": ScoreConfig(
            victim=victim, victim_size=256, victim_options=options, backbone="wide_resnet50_2",
            backbone_weights=str(wrn)),
        "efficientnet_lite0 + recon": ScoreConfig(victim=f"recon:{blurred_photos(work / 'pairs', work / 'recon')}"),
    }


def one_run(config: ScoreConfig, data: Path, out: Path, batch_size: int) -> dict:
    """One whole scoring run: wall time, seconds per stage, the scores and the precision the store recorded."""
    summary = []
    wall, cpu = timed(lambda: summary.append(score(DatasetSpec(str(data), direction="BtoA"), config, out,
                                                   batch_size=batch_size, overwrite=True, progress=False)))
    store = open_store(str(out))
    ok = store.column("status") == "ok"
    return {"wall_s": wall, "cpu_s": cpu, "stages": summary[0].stages.as_dict(),
            "recorded_precision": store.config.precision,
            "ok": int(ok.sum()), "lrec": store.column("lrec")[ok].astype(np.float64),
            "ldiff": store.column("ldiff")[ok].astype(np.float64)}


def agreement(exact: np.ndarray, other: np.ndarray) -> dict[str, float]:
    relative = np.abs(other - exact) / np.abs(exact)
    return {"median_rel": float(np.median(relative)), "max_rel": float(relative.max()),
            "spearman": float(spearmanr(exact, other)[0])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="8 pairs, one round")
    parser.add_argument("--pairs", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=3, help="runs of each precision, interleaved")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (default: torch's choice); 1 when other "
                        "processes keep the cores busy: two threads then stall at every parallel region")
    args = parser.parse_args()
    if args.threads:
        use_threads(args.threads)
    pairs, rounds = (8, 1) if args.quick else (args.pairs, args.rounds)
    work = Path(tempfile.mkdtemp(prefix="memscore-precision-"))
    data = facades_subset(work / "pairs", pairs)
    warm_up = facades_subset(work / "warm_up", 4)
    resolved_auto = resolve_precision("auto", torch.device("cpu"))
    results: dict = {"pairs": pairs, "rounds": rounds, "threads": torch.get_num_threads(),
                     "auto_resolves_to": resolved_auto, "load_average_before": os.getloadavg(), "geometries": {}}
    rows, stage_rows, accuracy_rows = [], [], []
    for name, base in geometries(work).items():
        runs: dict[str, list[dict]] = {precision: [] for precision in PRECISIONS}
        for precision in PRECISIONS:  # warm-up: compilation, oneDNN kernel selection, file caches
            one_run(ScoreConfig.from_dict({**base.to_dict(), "precision": precision}), warm_up, work / "warm.zarr",
                    args.batch_size)
        for _ in range(rounds):
            for precision in PRECISIONS:
                config = ScoreConfig.from_dict({**base.to_dict(), "precision": precision})
                runs[precision].append(one_run(config, data, work / f"{precision}.zarr", args.batch_size))
        summary = {}
        for precision, done in runs.items():
            best = min(done, key=lambda run: run["wall_s"])
            summary[precision] = {
                "images_per_s": pairs / best["wall_s"], "wall_s_runs": [run["wall_s"] for run in done],
                "ms_per_image": {stage: 1000 * best["stages"].get(stage, 0.0) / pairs for stage in STAGES},
                "recorded_precision": best["recorded_precision"], "ok": best["ok"],
                "lrec": agreement(runs["fp32"][0]["lrec"], done[0]["lrec"]),
                "ldiff": agreement(runs["fp32"][0]["ldiff"], done[0]["ldiff"])}
        results["geometries"][name] = summary
        results["load_average_after"] = os.getloadavg()  # other processes on the cores skew every figure
        for precision, entry in summary.items():
            speedup = entry["images_per_s"] / summary["fp32"]["images_per_s"]
            rows.append([name, precision, entry["recorded_precision"], entry["images_per_s"], f"{speedup:.2f}x"])
            stage_rows.append([name, precision, *(f"{entry['ms_per_image'][stage]:.0f}" for stage in STAGES)])
            if precision != "fp32":
                accuracy_rows.append([name, precision, *(f"{entry[column][key]:.2g}" for column in ("ldiff", "lrec")
                                                         for key in ("median_rel", "max_rel")),
                                      f"{entry['ldiff']['spearman']:.5f}", f"{entry['lrec']['spearman']:.5f}"])
        path = write_results("precision_quick" if args.quick else "precision", results)
    print(f"{pairs} Facades pairs, best of {rounds} interleaved run(s) each, {torch.get_num_threads()} threads; "
          f"auto resolves to {resolved_auto} here; load average {results['load_average_before'][0]:.1f} before, "
          f"{results['load_average_after'][0]:.1f} after\n")
    print(markdown_table(["geometry", "asked", "store records", "images/s", "vs fp32"], rows))
    print("\nms per image by stage (best run)")
    print(markdown_table(["geometry", "precision", *STAGES], stage_rows))
    print("\nagreement with fp32 (relative difference per image; Spearman over images)")
    print(markdown_table(["geometry", "precision", "Ldiff median", "Ldiff max", "Lrec median", "Lrec max",
                          "Ldiff Spearman", "Lrec Spearman"], accuracy_rows))
    print(f"\nwritten {path}")


if __name__ == "__main__":
    main()
