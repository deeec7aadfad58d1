"""Evidence for conditional diffusion victims (issue #24), on real Facades: white-box ldenoise, black-box sampled
Lrec against the query budget K and the sampler's steps, per-image calibration and LiRA / RMIA with diffusion
shadows, and throughput of both statistics in fp32 and bf16.

Inputs: a `diffusers:` victim trained with `memscore train-victim --kind diffusion` on the ids of `--members`,
its shadows (`memscore shadows train --kind diffusion`, same recipe) and the Facades folder. The script scores
(through the library, as `memscore score` would) one white-box store with the shadows, and one black-box store per
sampler step count with `--statistic lrec --samples K_MAX`; resumable, so a rerun reuses finished stores. Every
row is labelled: `--members` are members, every other image of the dataset a non-member. Reported with stratified
bootstrap CIs (`memscore.metrics.evaluate_scores`): AUC and TPR at 10/1/0.1% FPR of ldenoise, its lmem, lcal
(per-image calibration on a seeded half of the non-members, every row scored out of fold), LiRA and RMIA (online,
offline), and for each steps and K in 1, 2, 4, 8 sampled Lrec (mean of the first K samples) and its Lmem (label-free
fitted alpha). Writes a table to stdout, `bench/results/diffusion.json` and `bench/results/diffusion_budget.png`.

    python bench/diffusion_experiment.py --data ../shared/datasets/facades --victim runs/diff_victim \
        --members runs/diff_members.txt --shadows runs/diff_shadows --work runs/diffusion
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import memscore  # noqa: E402
from bench.common import markdown_table, write_results  # noqa: E402
from memscore.alpha import fit_alpha, membership_error  # noqa: E402
from memscore.data import read_id_list  # noqa: E402
from memscore.metrics import evaluate_scores  # noqa: E402
from memscore.outputs import write_text  # noqa: E402
from memscore.victims import load  # noqa: E402

FPRS = (0.1, 0.01, 0.001)
BUDGETS = (1, 2, 4, 8)
SHADOW_METHODS = {"lira": {"offline": False}, "lira_offline": {"offline": True},
                  "rmia": {"offline": False}, "rmia_offline": {"offline": True}}


def report(scores: np.ndarray, member: np.ndarray, n_boot: int) -> dict:
    """AUC and TPR at FPRS with bootstrap CIs, on the rows where the score is finite."""
    return evaluate_scores(scores, member, fprs=FPRS, n_boot=n_boot).to_dict()


def tpr1(entry: dict) -> float:
    return next(point["tpr"] for point in entry["tpr_at_fpr"] if point["target_fpr"] == 0.01)


def score_store(args: argparse.Namespace, out: Path, **config) -> memscore.ScoreStore:
    """Score the dataset into `out` (resumed when finished or interrupted) and open it."""
    spec = memscore.DatasetSpec(str(args.data), direction="BtoA", members_file=str(args.members))
    summary = memscore.score(spec, memscore.ScoreConfig(victim=f"diffusers:{args.victim}", **config), out,
                             memscore.RunOptions(batch_size=32), progress=True)
    print(f"{out.name}: {summary.line()}", file=sys.stderr)
    return memscore.open_store(out)


def white_box(args: argparse.Namespace, nonmembers: list[str]) -> dict:
    """ldenoise, its lmem, lcal and the shadow attacks on one store scored with the shadows."""
    store = score_store(args, args.work / "white.zarr", shadows=str(args.shadows))
    reference = np.random.default_rng(0).permutation(sorted(nonmembers))[: len(nonmembers) // 2]
    reference_file = args.work / "reference_nonmembers.txt"
    write_text(reference_file, "".join(f"{i}\n" for i in sorted(reference)), overwrite=True)
    memscore.rescore(store.path, "per-image", reference=str(reference_file))
    for column, options in SHADOW_METHODS.items():
        memscore.rescore(store.path, column.split("_")[0], **options)
    store = memscore.open_store(store.path)
    member = store.column("member") == 1
    results = {name: report(store.column(name).astype(np.float64), member, args.bootstrap)
               for name in ("ldenoise", "lmem", "lcal", *SHADOW_METHODS)}
    results["alpha"] = store.alpha.to_dict()
    results["n_shadows"] = int(store.column("ldenoise_shadow").shape[1])
    return results


def black_box(args: argparse.Namespace) -> dict:
    """For each sampler step count: sampled Lrec and its Lmem at every budget K (the first K samples)."""
    found = {}
    for steps in args.steps:
        store = score_store(args, args.work / f"black_steps{steps}.zarr", statistic="lrec", samples=max(BUDGETS),
                            victim_options=(("steps", steps),))
        member, ldiff = store.column("member") == 1, store.column("ldiff").astype(np.float64)
        samples = store.column("lrec_samples").astype(np.float64)
        per_k = {}
        for k in BUDGETS:
            lrec = samples[:, :k].mean(axis=1)
            alpha = fit_alpha(lrec, ldiff).alpha
            per_k[k] = {"lrec": report(lrec, member, args.bootstrap),
                        "lmem": report(membership_error(lrec, ldiff, alpha), member, args.bootstrap), "alpha": alpha}
        found[steps] = per_k
    return found


def throughput(args: argparse.Namespace, repeats: int = 3) -> dict:
    """Images per second of ldenoise (per timestep and noise draw) and of sampling (per sample-step), fp32 and
    bf16 side by side in this process, on a batch of the dataset's size."""
    victim = load(f"diffusers:{args.victim}", steps=10, timesteps="50/100/200/300/500", noises=4)
    size, n = victim.sample_size, 32
    generator = torch.Generator().manual_seed(0)
    x, y = torch.rand(n, 3, size, size, generator=generator) * 2 - 1, torch.rand(n, 3, size, size, generator=generator) * 2 - 1
    seeds = torch.arange(n, dtype=torch.int64)
    found = {}
    for precision in ("fp32", "bf16"):
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            denoise, sample = [], []
            for _ in range(repeats):
                started = time.perf_counter()
                victim.denoising_error(x, y, seeds)
                denoise.append(time.perf_counter() - started)
                started = time.perf_counter()
                victim(x, seeds)
                sample.append(time.perf_counter() - started)
        calls = len(victim.timesteps) * victim.noises
        found[precision] = {"ldenoise_image_timesteps_per_s": n * calls / statistics.median(denoise),
                            "ldenoise_images_per_s": n / statistics.median(denoise),
                            "sampling_image_steps_per_s": n * 10 / statistics.median(sample)}
    found["bf16_speedup_ldenoise"] = (found["bf16"]["ldenoise_image_timesteps_per_s"]
                                      / found["fp32"]["ldenoise_image_timesteps_per_s"])
    found["bf16_speedup_sampling"] = (found["bf16"]["sampling_image_steps_per_s"]
                                      / found["fp32"]["sampling_image_steps_per_s"])
    found["setting"] = {"batch": n, "size": size, "timesteps": list(victim.timesteps), "noises": victim.noises,
                        "threads": torch.get_num_threads()}
    return found


def plot(black: dict, white: dict, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    figure = Figure(figsize=(11, 4.2), layout="constrained")
    for ax, (metric, read) in zip(figure.subplots(1, 2), (("ROC-AUC", lambda e: e["auc"]),
                                                         ("TPR at 1% FPR", tpr1))):
        for steps, per_k in black.items():
            for score, style in (("lrec", "--"), ("lmem", "-")):
                ax.plot(BUDGETS, [read(per_k[k][score]) for k in BUDGETS], style, marker="o",
                        label=f"sampled {score}, {steps} steps")
        ax.axhline(read(white["lmem"]), color="black", lw=1.5, label="white-box ldenoise lmem")
        ax.set_xscale("log", base=2)
        ax.set_xticks(BUDGETS, [str(k) for k in BUDGETS])
        ax.set_xlabel("query budget K (samples per image)")
        ax.set_ylabel(metric)
        ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    FigureCanvasAgg(figure)
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--victim", type=Path, required=True)
    parser.add_argument("--members", type=Path, required=True)
    parser.add_argument("--shadows", type=Path, required=True)
    parser.add_argument("--work", type=Path, required=True, help="folder for the stores (reused on a rerun)")
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 20], help="sampler steps of the black-box stores")
    parser.add_argument("--bootstrap", type=int, default=500)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    members = set(read_id_list(args.members).ids)
    ids = [pair.id for pair in memscore.DatasetSpec(str(args.data), direction="BtoA").open().pairs()]
    nonmembers = [i for i in ids if i not in members]
    white = white_box(args, nonmembers)
    black = black_box(args)
    speed = throughput(args)
    plot(black, white, ROOT / "bench" / "results" / "diffusion_budget.png")
    rows = [[name, white[name]["auc"], tpr1(white[name])] for name in ("ldenoise", "lmem", "lcal", *SHADOW_METHODS)]
    rows += [[f"sampled {score}, {steps} steps, K={k}", per_k[k][score]["auc"], tpr1(per_k[k][score])]
             for steps, per_k in black.items() for k in BUDGETS for score in ("lrec", "lmem")]
    print(markdown_table(["score", "AUC", "TPR@1%"], rows))
    best_shadow = max(tpr1(white[name]) for name in SHADOW_METHODS)
    targets = {"ldenoise_lmem_auc_ge_0.95": white["lmem"]["auc"] >= 0.95,
               "ldenoise_lmem_tpr1_ge_0.3": tpr1(white["lmem"]) >= 0.3,
               "best_shadow_tpr1_ge_2x_lmem": best_shadow >= 2 * tpr1(white["lmem"]),
               "lmem_auc_ge_lrec_at_every_k": all(per_k[k]["lmem"]["auc"] >= per_k[k]["lrec"]["auc"]
                                                  for per_k in black.values() for k in BUDGETS)}
    print(speed)
    print(targets)
    path = write_results("diffusion", {"inputs": {"victim": str(args.victim), "members": str(args.members),
                                                  "n_members": len(members), "n_nonmembers": len(nonmembers),
                                                  "shadows": str(args.shadows)},
                                       "white_box": white, "black_box": black, "throughput": speed,
                                       "targets": targets})
    print(f"written {path}")


if __name__ == "__main__":
    main()
