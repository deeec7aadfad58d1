"""The paper's experiment on real CMP Facades: does subtracting difficulty separate members better?

Trains a pix2pix victim (label map -> photo) on `train/` (400 members), keeps `test/` + `val/`
(206) as non-members, scores everything at several checkpoints and reports ROC-AUC, balanced
accuracy and TPR at 1% FPR for Lrec alone and Lmem with several alphas (fixed, label-free fit,
robust fit, best in hindsight), with `--difficulty-source input`, with augmentation, and with a
second backbone. Writes `bench/results/facades_experiment.json` and plots beside it.

    python bench/facades_experiment.py --epochs 40 --checkpoint-every 10      # CPU, about an hour
    python bench/facades_experiment.py --size 256 --netG unet_256 --ngf 64 --epochs 200  # the paper's (GPU)
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from memscore.alpha import fit_alpha, membership_error
from memscore.config import ScoreConfig
from memscore.data import AlignedFolder, read_id_list
from memscore.metrics import alpha_sweep, evaluate_scores
from memscore.run import run_scoring
from memscore.work import DatasetSpec
from memscore.store import ScoreStore
from memscore.train import TrainingRecipe, VictimArch, read_arch, train_pix2pix

ROOT = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "facades"
ALPHA_GRID = np.round(np.arange(0.0, 10.0001, 0.05), 4)


def attack_metrics(lrec: np.ndarray, ldiff: np.ndarray, member: np.ndarray) -> dict:
    """Metrics of Lrec and of Lmem under each way of choosing alpha (the last one uses labels)."""
    def summary(scores: np.ndarray) -> dict:
        report = evaluate_scores(scores, member, fprs=(0.1, 0.01))
        tpr1 = next(t for t in report.tpr_at_fpr if t.target_fpr == 0.01)
        return {"auc": report.auc, "balanced_accuracy": report.balanced_accuracy, "tpr_at_1pct_fpr": tpr1.tpr,
                "achieved_fpr": tpr1.achieved_fpr}

    fitted, robust = fit_alpha(lrec, ldiff, "ols"), fit_alpha(lrec, ldiff, "robust")
    alphas, aucs = alpha_sweep(lrec, ldiff, member, ALPHA_GRID)
    best = float(alphas[int(np.argmax(aucs))])
    rows = {"lrec": summary(lrec)}
    for name, alpha in (("lmem_alpha_0.5", 0.5), ("lmem_alpha_1", 1.0), ("lmem_fit", fitted.alpha),
                        ("lmem_fit_robust", robust.alpha), ("lmem_best_in_hindsight", best)):
        rows[name] = {"alpha": float(alpha), **summary(membership_error(lrec, ldiff, alpha))}
    rows["fit_r2"] = fitted.r2
    rows["alpha_curve"] = {"alphas": alphas.tolist(), "aucs": aucs.tolist()}
    return rows


def score(data: Path, members: Path, checkpoint: Path, arch: VictimArch, out: Path, **overrides) -> dict:
    config = ScoreConfig(victim=f"pix2pix:{checkpoint}", victim_size=arch.size,
                         victim_options=tuple(sorted(arch.load_options().items())), **overrides)
    started = time.perf_counter()
    run_scoring(DatasetSpec(str(data), direction="BtoA", members_file=str(members)), config, out, overwrite=True,
                progress=False)
    store = ScoreStore.open(out, mode="r")
    ok = store.column("status") == "ok"
    lrec, ldiff = store.column("lrec")[ok].astype(float), store.column("ldiff")[ok].astype(float)
    metrics = attack_metrics(lrec, ldiff, store.column("member")[ok] == 1)
    metrics["seconds"] = time.perf_counter() - started
    metrics["config"] = {k: v for k, v in overrides.items()}
    return metrics


def plot(results: dict, out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    epochs = sorted(int(e) for e in results["checkpoints"])
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for key, label in (("lrec", "Lrec"), ("lmem_alpha_0.5", "Lmem, alpha 0.5"), ("lmem_fit", "Lmem, alpha fit"),
                       ("lmem_best_in_hindsight", "Lmem, best alpha (labels)")):
        axes[0].plot(epochs, [results["checkpoints"][str(e)]["efficientnet_lite0"][key]["auc"] for e in epochs],
                     marker="o", label=label)
    axes[0].set(xlabel="victim epochs", ylabel="ROC-AUC", title="Overfitting curve (Facades, EfficientNet-Lite0)")
    axes[0].legend()
    final = results["checkpoints"][str(epochs[-1])]["efficientnet_lite0"]
    axes[1].plot(final["alpha_curve"]["alphas"], final["alpha_curve"]["aucs"], color="k")
    axes[1].axvline(final["lmem_fit"]["alpha"], color="tab:green", ls="--", label="fitted alpha (no labels)")
    axes[1].set(xlabel="alpha", ylabel="ROC-AUC of Lmem", title=f"Alpha curve at epoch {epochs[-1]}")
    axes[1].legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--facades", default=str(ROOT))
    parser.add_argument("--work", default="runs/facades_experiment")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--netG", default="unet_64")
    parser.add_argument("--ngf", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--checkpoint-every", type=int, default=10)
    parser.add_argument("--no-jitter", action="store_true", help="train without the public random resize-crop and flip")
    parser.add_argument("--second-backbone", default="wide_resnet50_2", help="or 'none' to skip it")
    parser.add_argument("--second-backbone-weights", default=None,
                        help="ImageNet weights for the second backbone; random init when absent (a control)")
    parser.add_argument("--out", default="bench/results/facades_experiment.json")
    parser.add_argument("--checkpoints", help="score the checkpoints a previous run left in this folder "
                                              "(latest_net_G_epochN.pth, latest_net_G.pth) instead of training")
    parser.add_argument("--variants-at", type=int, help="the epoch whose checkpoint gets every variant (default: last)")
    args = parser.parse_args()

    facades, work = Path(args.facades), Path(args.work)
    if not (facades / "train").is_dir():
        raise SystemExit(f"Facades not found at {facades} (pass --facades DIR)")
    work.mkdir(parents=True, exist_ok=True)
    data = work / "data"  # train/ members, test/ + val/ non-members, by links: ids stay split/N
    ids = [p.relative_to(facades).with_suffix("").as_posix() for split in ("train", "test", "val")
           for p in sorted((facades / split).glob("*.jpg"))]
    for image_id in ids:
        link = data / f"{image_id}.jpg"
        if not link.exists():
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(facades / f"{image_id}.jpg")
    members = work / "members.txt"
    members.write_text("".join(f"{i}\n" for i in ids if i.startswith("train/")))
    member_ids = set(read_id_list(members).ids)

    arch = VictimArch(netG=args.netG, ngf=args.ngf, norm="instance", size=args.size)
    checkpoints: dict[int, Path] = {}
    started = time.perf_counter()
    if args.checkpoints:
        for path in Path(args.checkpoints).glob("latest_net_G_epoch*.pth"):
            checkpoints[int(path.stem.rsplit("epoch", 1)[1])] = path
        checkpoints[args.epochs] = Path(args.checkpoints) / "latest_net_G.pth"
        arch = read_arch(checkpoints[args.epochs]) or arch
    else:
        checkpoint = work / "victim" / "latest_net_G.pth"
        recipe = TrainingRecipe(netG=arch.netG, size=arch.size, ngf=arch.ngf, norm=arch.norm, epochs=args.epochs,
                                use_jitter=not args.no_jitter)
        train_pix2pix(AlignedFolder(data, "BtoA"), checkpoint, recipe, members=member_ids,
                      checkpoint_every=args.checkpoint_every,
                      on_checkpoint=lambda e, p: checkpoints.__setitem__(e, p), overwrite=True)
        checkpoints[args.epochs] = checkpoint
    train_seconds = time.perf_counter() - started
    variants_at = args.variants_at or args.epochs

    results = {"setup": {"victim": f"pix2pix {arch.netG} ngf {arch.ngf} norm {arch.norm}, {arch.size}x{arch.size}, "
                                   f"{args.epochs} epochs, GAN + 100 L1, Adam 2e-4 beta1 0.5, batch 4, "
                                   f"{'no random jitter' if args.no_jitter else 'random jitter'}",
                         "members": len(member_ids), "nonmembers": len(ids) - len(member_ids),
                         "train_seconds": train_seconds},
               "checkpoints": {}}
    for epoch, path in sorted(checkpoints.items()):
        entry = {"efficientnet_lite0": score(data, members, path, arch, work / f"e{epoch}.zarr")}
        if epoch == variants_at:
            entry["efficientnet_lite0_input_source"] = score(data, members, path, arch, work / "input.zarr",
                                                             difficulty_source="input")
            entry["efficientnet_lite0_augment4"] = score(data, members, path, arch, work / "aug.zarr", augment=4)
            entry["efficientnet_lite0_reference_preset"] = score(data, members, path, arch, work / "ref.zarr",
                                                                 preset="reference")
            if args.second_backbone == "none":
                pass
            elif args.second_backbone_weights or args.second_backbone != "wide_resnet50_2":
                entry[args.second_backbone] = score(data, members, path, arch, work / "second.zarr",
                                                    backbone=args.second_backbone,
                                                    backbone_weights=args.second_backbone_weights)
            else:
                _random_init_wrn_control(entry, data, members, path, arch, work)
        results["checkpoints"][str(epoch)] = entry
        print(f"epoch {epoch}: Lrec AUC {entry['efficientnet_lite0']['lrec']['auc']:.4f}, "
              f"Lmem(fit) AUC {entry['efficientnet_lite0']['lmem_fit']['auc']:.4f}", flush=True)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2))
    plot(results, Path(args.out).with_suffix(".png"))
    print(f"results: {args.out} and {Path(args.out).with_suffix('.png')}")


def _random_init_wrn_control(entry: dict, data: Path, members: Path, checkpoint: Path, arch: VictimArch,
                             work: Path) -> None:
    """Without ImageNet weights for Wide-ResNet-50-2 (not downloadable here), score with a randomly
    initialised one as a control: it shows what the pretrained features contribute."""
    import torch
    from memscore.backbones import torch_hub_checkpoints
    from torchvision.models import wide_resnet50_2
    weights = work / "wide_resnet50_2_random_init.pth"
    if not any((torch_hub_checkpoints() / f).is_file() for f in ("wide_resnet50_2-95faca4d.pth",)):
        torch.manual_seed(0)
        torch.save(wide_resnet50_2(weights=None).state_dict(), weights)
        entry["wide_resnet50_2_random_init"] = score(data, members, checkpoint, arch, work / "wrn.zarr",
                                                     backbone="wide_resnet50_2", backbone_weights=str(weights))
    else:
        entry["wide_resnet50_2"] = score(data, members, checkpoint, arch, work / "wrn.zarr", backbone="wide_resnet50_2")


if __name__ == "__main__":
    main()
