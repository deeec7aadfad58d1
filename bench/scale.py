"""1 process vs 2 local Dask workers on the same data, side by side, and Dask's overhead per shard.

    python bench/scale.py [--n 512] [--quick]

Prints a Markdown table and writes bench/results/scale.json. Target on a 2-core machine: 2 workers
(1 thread each) reach at least 90% of one process with 2 threads.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import markdown_table, median_seconds, pix2pix_victim, write_results  # noqa: E402

from engine.config import ScoreConfig  # noqa: E402
from engine.run import DatasetSpec, run_scoring  # noqa: E402
from engine.schedule import ClusterPlan  # noqa: E402
from engine.synthetic import write_manifest_dataset  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="128 images, one repeat")
    args = parser.parse_args()
    n, repeats = (128, 1) if args.quick else (args.n, args.repeats)
    work = Path(tempfile.mkdtemp(prefix="memscore-scale-"))
    manifest = write_manifest_dataset(work / "data", n, distinct=32, size=64)
    config = ScoreConfig(victim=pix2pix_victim(work / "victim.pth"), victim_size=64,
                         victim_options=(("netG", "unet_64"), ("ngf", 16), ("norm", "instance"), ("use_dropout", False)))
    spec = DatasetSpec(str(manifest))
    cores = torch.get_num_threads()

    def run(workers: int, shard_size: int) -> None:
        torch.set_num_threads(cores)
        run_scoring(spec, config, work / "s.zarr", overwrite=True, progress=False, shard_size=shard_size,
                    cluster=ClusterPlan(workers=workers))

    big, small = max(n // 4, 16), max(n // 16, 4)
    one = median_seconds(lambda: run(0, big), repeats)
    two = median_seconds(lambda: run(2, big), repeats)
    two_small = median_seconds(lambda: run(2, small), repeats)
    extra_shards = n // small - n // big
    overhead = (two_small - two) / extra_shards if extra_shards > 0 else float("nan")
    rows = [["1 process", f"{cores} threads", n // big, one, n / one, 1.0],
            ["2 Dask workers", "1 thread each", n // big, two, n / two, one / two],
            ["2 Dask workers", "1 thread each", n // small, two_small, n / two_small, one / two_small]]
    print(markdown_table(["run", "threads", "shards", "wall s (median)", "images/s", "vs 1 process"], rows))
    print(f"Dask overhead per extra shard: {overhead * 1000:.0f} ms (cluster start-up is inside each 2-worker wall time)")
    path = write_results("scale", {"n_images": n, "repeats": repeats, "one_process_seconds": one,
                                   "two_workers_seconds": two, "two_workers_small_shards_seconds": two_small,
                                   "ratio_two_workers_vs_one": one / two, "overhead_per_shard_seconds": overhead,
                                   "rows": rows})
    print(f"written {path}")


if __name__ == "__main__":
    main()
