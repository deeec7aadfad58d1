"""I/O benchmark: how fast Facades JPEGs become scoring tensors, DALI vs torchvision.io vs Pillow.

Prints Markdown tables and writes bench/results/reading.json: decode alone, the full reader (decode, cut
the A|B halves, resize x to the victim size, CNN view, difficulty grid target) at batch 32, and the
reader's share of a scoring run (`memscore.run.run_scoring`, `recon:` victim). `--quick` for a short run.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from memscore import dali_reader  # noqa: E402
from memscore.data import AlignedFolder, Pair  # noqa: E402
from memscore.batch import Prepared, View  # noqa: E402
from memscore.pipeline import batches  # noqa: E402
from memscore.preprocess import difficulty_target, normalise, resize, resize_shorter_center_crop  # noqa: E402

FACADES = Path(os.environ.get("MEMSCORE_FACADES", ROOT.parent / "shared" / "datasets" / "facades"))
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
BATCH = 32


def rate(n: int, seconds: list[float]) -> dict:
    """Median images per second over repeats, with the spread."""
    rates = [n / s for s in seconds]
    return {"images_per_s": statistics.median(rates), "min": min(rates), "max": max(rates), "repeats": len(rates)}


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# ---------------------------------------------------------------------------------------------
# Decode alone
# ---------------------------------------------------------------------------------------------

def decoders(paths: list[str], threads: int) -> dict:
    """One callable per library that decodes every file to RGB uint8, in batches of BATCH."""
    import torchvision.io as tvio
    blobs = [np.fromfile(p, dtype=np.uint8) for p in paths]
    tv_blobs = [torch.from_numpy(b) for b in blobs]
    chunks = [slice(i, i + BATCH) for i in range(0, len(paths), BATCH)]
    pool = ThreadPoolExecutor(max_workers=threads)

    def pil_one(blob: np.ndarray) -> np.ndarray:
        with Image.open(io.BytesIO(blob.tobytes())) as image:
            return np.asarray(image.convert("RGB"))

    methods = {
        "Pillow": lambda: [list(pool.map(pil_one, blobs[c])) for c in chunks],
        "torchvision.io": lambda: [list(pool.map(lambda b: tvio.decode_jpeg(b), tv_blobs[c])) for c in chunks],
    }
    if dali_reader.dali_importable():
        from nvidia.dali import fn, pipeline_def, types

        @pipeline_def(batch_size=BATCH, num_threads=threads, device_id=None, prefetch_queue_depth=1)
        def decode_only():
            data = fn.external_source(name="bytes", dtype=types.UINT8, ndim=1)
            return fn.decoders.image(data, device="cpu", output_type=types.RGB, adjust_orientation=False)

        pipe = decode_only()
        pipe.build()

        def dali() -> None:
            for c in chunks:
                pipe.feed_input("bytes", blobs[c])
                pipe.run()
        methods["DALI (cpu)"] = dali
    return methods


# ---------------------------------------------------------------------------------------------
# The full reader
# ---------------------------------------------------------------------------------------------

def torchvision_prepare(pair: Pair, view: View) -> Prepared:
    """`memscore.pillow_reader.prepare` with torchvision.io's decode_jpeg in place of Pillow (aligned files)."""
    import torchvision.io as tvio
    whole = tvio.decode_jpeg(tvio.read_file(pair.input_path), mode=tvio.ImageReadMode.RGB).float().div_(255.0)
    middle = whole.shape[-1] // 2
    halves = {"left": whole[:, :, :middle], "right": whole[:, :, middle:]}
    x_full, y = halves[pair.input_half].contiguous(), halves[pair.target_half].contiguous()
    x = resize(x_full, (view.victim_size, view.victim_size)) if view.victim_size else x_full
    source = y if view.difficulty_source == "target" else x_full
    cnn_view = normalise(resize_shorter_center_crop(source), view.mean, view.std)
    grid = difficulty_target(y.permute(1, 2, 0).numpy(), view.grid, view.preset)
    return Prepared(pair, x, y, cnn_view, grid)


def readers(pairs: list[Pair], view: View, threads: int) -> dict:
    pool = ThreadPoolExecutor(max_workers=threads)

    def drain(reader: str, device: str = "cpu") -> None:
        for _ in batches(pairs, view, BATCH, threads=threads, reader=reader, device=device):
            pass

    def torchvision() -> None:
        for i in range(0, len(pairs), BATCH):
            list(pool.map(lambda p: torchvision_prepare(p, view), pairs[i: i + BATCH]))

    methods = {"Pillow (prepare)": lambda: drain("pillow"), "torchvision.io + torch resize": torchvision}
    if dali_reader.dali_importable():
        methods["DALI reader (cpu)"] = lambda: drain("dali", "cpu")
        if torch.cuda.is_available():
            methods["DALI reader (gpu)"] = lambda: drain("dali", "cuda")
    return methods


def race(methods: dict, n: int, repeats: int) -> dict:
    """Every method once per round, rounds repeated, so load from elsewhere hits all alike."""
    for method in methods.values():  # warm-up: pipelines built, files in the page cache
        method()
    seconds: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(repeats):
        for name, method in methods.items():
            seconds[name].append(timed(method))
    return {name: rate(n, s) for name, s in seconds.items()}


# ---------------------------------------------------------------------------------------------
# The reader's share of a scoring run
# ---------------------------------------------------------------------------------------------

def scoring_breakdown(n: int, reader: str, work: Path) -> dict:
    """Wall time of `run_scoring` split into: waiting for the reader, victim, difficulty, the rest."""
    import memscore.run as run
    import memscore.work as unit_of_work
    from memscore.config import ScoreConfig
    from memscore.pipeline import batches as real_batches
    from memscore.scores import Scorer
    from memscore.victims import ReconFolder

    subset, recon = work / f"train-{n}", work / f"recon-{n}"
    if not subset.exists():  # the first n Facades pairs, and "victim outputs": the photos at 128 px
        subset.mkdir(parents=True)
        recon.mkdir()
        for pair in AlignedFolder(FACADES / "train", "BtoA").pairs(0, n):
            name = Path(pair.input_path).name
            (subset / name).write_bytes(Path(pair.input_path).read_bytes())
            with Image.open(pair.input_path) as image:
                image.crop((0, 0, 256, 256)).resize((128, 128), Image.BILINEAR).save(recon / f"{Path(name).stem}.png")
    stages = {"reader wait": 0.0, "victim": 0.0, "difficulty": 0.0}

    def timed_batches(pairs, view, batch_size, **kwargs):
        iterator = real_batches(pairs, view, batch_size, reader=reader, device="cpu")
        while True:
            start = time.perf_counter()
            try:
                batch = next(iterator)
            except StopIteration:
                return
            finally:
                stages["reader wait"] += time.perf_counter() - start
            yield batch

    def timing(stage: str, method):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                stages[stage] += time.perf_counter() - start
        return wrapper

    saved = unit_of_work.batches, Scorer.difficulty, ReconFolder.reconstruct
    unit_of_work.batches = timed_batches
    Scorer.difficulty = timing("difficulty", Scorer.difficulty)
    ReconFolder.reconstruct = timing("victim", ReconFolder.reconstruct)
    try:
        config = ScoreConfig(victim=f"recon:{recon}", victim_size=128)
        start = time.perf_counter()
        run.run_scoring(unit_of_work.DatasetSpec(data=str(subset), direction="BtoA"), config, work / f"store-{reader}-{n}.zarr",
                        run.RunOptions(batch_size=BATCH, device="cpu"), overwrite=True, progress=False)
        wall = time.perf_counter() - start
    finally:
        unit_of_work.batches, Scorer.difficulty, ReconFolder.reconstruct = saved
    stages = {k: round(v, 3) for k, v in stages.items()}
    stages["other (setup, store, alpha)"] = round(wall - sum(stages.values()), 3)
    return {"reader": reader, "images": n, "wall_s": round(wall, 3), "images_per_s": round(n / wall, 1),
            "stages_s": stages, "reader_share": round(stages["reader wait"] / wall, 3)}


def median_run(runs: list[dict]) -> dict:
    """Stage by stage medians of repeated scoring runs."""
    wall = statistics.median(r["wall_s"] for r in runs)
    stages = {k: round(statistics.median(r["stages_s"][k] for r in runs), 3) for k in runs[0]["stages_s"]}
    return {"reader": runs[0]["reader"], "images": runs[0]["images"], "wall_s": round(wall, 3),
            "images_per_s": round(runs[0]["images"] / wall, 1), "stages_s": stages,
            "reader_share": round(stages["reader wait"] / wall, 3)}


# ---------------------------------------------------------------------------------------------

def table(title: str, results: dict) -> str:
    lines = [f"### {title}", "", "| method | images/s (median) | range | repeats |", "|---|---:|---:|---:|"]
    for name, r in sorted(results.items(), key=lambda kv: -kv[1]["images_per_s"]):
        lines.append(f"| {name} | {r['images_per_s']:.0f} | {r['min']:.0f}-{r['max']:.0f} | {r['repeats']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="64 images, 3 repeats, a 64-image scoring run")
    parser.add_argument("--threads", type=int, default=2, help="decode threads for every library (default 2)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "reading.json"))
    args = parser.parse_args()
    if not (FACADES / "train").is_dir():
        sys.exit(f"Facades not found at {FACADES} (set MEMSCORE_FACADES)")
    torch.set_num_threads(args.threads)
    n, repeats, n_scoring = (64, 3, 64) if args.quick else (256, 5, 256)
    pairs = list(AlignedFolder(FACADES / "train", "BtoA").pairs(0, n))
    view = View(128, *IMAGENET, 56, "aligned", "target")

    results = {
        "setup": {"images": n, "batch": BATCH, "threads": args.threads, "repeats": repeats, "victim_size": 128,
                  "preset": "aligned", "cpu_count": os.cpu_count(), "torch": torch.__version__,
                  "platform": platform.platform(), "cuda": torch.cuda.is_available(),
                  "load_average_at_start": os.getloadavg()},
        "decode": race(decoders([p.input_path for p in pairs], args.threads), n, repeats),
        "reader": race(readers(pairs, view, args.threads), n, repeats),
    }
    print(table(f"Decode only: {n} Facades JPEGs (256x512), batch {BATCH}, {args.threads} threads", results["decode"]))
    print()
    print(table(f"Reader: decode + halves + x to 128 + CNN view + grid target, batch {BATCH}", results["reader"]))
    print()
    readers_here = (["dali"] if dali_reader.dali_importable() else []) + ["pillow"]
    runs: dict[str, list[dict]] = {reader: [] for reader in readers_here}
    with tempfile.TemporaryDirectory() as work:
        scoring_breakdown(min(n_scoring, 32), "pillow", Path(work))  # warm-up: weights, kernels, page cache
        for _ in range(2):  # alternate the readers, so load from elsewhere hits both alike
            for reader in readers_here:
                runs[reader].append(scoring_breakdown(n_scoring, reader, Path(work)))
    breakdowns = [median_run(reader_runs) for reader_runs in runs.values()]
    results["scoring"] = {"median": breakdowns, "runs": runs}
    stage_names = list(breakdowns[0]["stages_s"])
    print(f"### Scoring run: {n_scoring} pairs, recon victim at 128, efficientnet_lite0, batch {BATCH}, CPU "
          "(median of 2 alternating runs)")
    print()
    print("| reader | wall s | images/s | " + " | ".join(stage_names) + " | reader share |")
    print("|---|---:|---:|" + "---:|" * len(stage_names) + "---:|")
    for b in breakdowns:
        cells = " | ".join(f"{b['stages_s'][s]:.2f}" for s in stage_names)
        print(f"| {b['reader']} | {b['wall_s']:.2f} | {b['images_per_s']:.1f} | {cells} | {b['reader_share']:.0%} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
