"""1 process vs 2 local Dask workers on the same data, side by side, and what Dask costs.

    python bench/scale.py [--n 2048] [--repeats 2] [--quick]

Runs alternate (1 process, 2 workers, 1 process, ...) so drift on a shared machine hits both alike;
medians are reported. Also measured (not with --quick): the fixed cost of a 2-worker run (cluster start, imports, model
loads: a run of 2 tiny shards) and Dask's cost per extra shard (the same N in 4x more shards).
Prints a Markdown table and writes bench/results/scale.json. Target on a 2-core machine: 2 workers
(1 thread each) reach at least 90% of one process with 2 threads.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import markdown_table, pix2pix_victim, write_results  # noqa: E402

from memscore.config import ScoreConfig  # noqa: E402
from memscore.run import RunOptions, run_scoring  # noqa: E402
from memscore.work import DatasetSpec  # noqa: E402
from memscore.synthetic import write_manifest_dataset  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--quick", action="store_true",
                        help="128 images, one run each of 1 process and 2 workers (no fixed-cost or shard-count runs)")
    args = parser.parse_args()
    n, repeats = (128, 1) if args.quick else (args.n, args.repeats)
    work = Path(tempfile.mkdtemp(prefix="memscore-scale-"))
    config = ScoreConfig(victim=pix2pix_victim(work / "victim.pth"), victim_size=64,
                         victim_options=(("netG", "unet_64"), ("ngf", 16), ("norm", "instance"), ("use_dropout", False)))
    cores = torch.get_num_threads()

    def seconds(manifest: Path, workers: int, shard_size: int) -> float:
        torch.set_num_threads(cores)
        started = time.perf_counter()
        run_scoring(DatasetSpec(str(manifest)), config, work / "s.zarr",
                    RunOptions(shard_size=shard_size, workers=workers), overwrite=True, progress=False)
        return time.perf_counter() - started

    manifest = write_manifest_dataset(work / "data", n, distinct=32, size=64)
    big, small = max(n // 8, 16), max(n // 32, 4)
    one, two = [], []
    for _ in range(repeats):
        one.append(seconds(manifest, 0, big))
        two.append(seconds(manifest, 2, big))
    one_s, two_s = statistics.median(one), statistics.median(two)
    rows = [["1 process", f"{cores} threads", n // big, one_s, n / one_s, 1.0],
            ["2 Dask workers", "1 thread each", n // big, two_s, n / two_s, one_s / two_s]]
    result = {"n_images": n, "repeats": repeats, "one_process_seconds": one, "two_workers_seconds": two,
              "ratio_two_workers_vs_one": one_s / two_s}
    note = ""
    if not args.quick:  # the fixed cost and Dask's cost per shard: two more cluster starts
        two_small = seconds(manifest, 2, small)
        fixed = seconds(write_manifest_dataset(work / "tiny", 8, distinct=8, size=64), 2, 4)
        overhead = (two_small - two_s) / (n // small - n // big)
        rows.append(["2 Dask workers", "1 thread each", n // small, two_small, n / two_small, one_s / two_small])
        result.update({"two_workers_small_shards_seconds": two_small, "two_worker_fixed_seconds": fixed,
                       "ratio_without_fixed_cost": one_s / (two_s - fixed), "overhead_per_shard_seconds": overhead})
        note = (f"2-worker fixed cost (8 images in 2 shards: cluster start, imports, model loads): {fixed:.1f} s; "
                f"without it 2 workers run at {result['ratio_without_fixed_cost']:.2f} x one process; "
                f"Dask cost per extra shard: {overhead * 1000:.0f} ms")
    print(markdown_table(["run", "threads", "shards", "wall s (median)", "images/s", "vs 1 process"], rows))
    print(note)
    path = write_results("scale" + ("_quick" if args.quick else ""), {**result, "rows": rows})
    print(f"written {path}")


if __name__ == "__main__":
    main()
