"""The `memscore` command: parse arguments, call the engine, print. No scoring logic lives here."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from .backbones import WeightsMissing, available
from .config import DIFFICULTY_SOURCES, PRECISIONS, PRESETS, VALUE_RANGES, ScoreConfig
from .data import read_id_list
from .metrics import format_metrics
from .attack import evaluate_store
from .run import DatasetSpec, alpha_pass, run_scoring
from .schedule import ClusterPlan, use_threads, worker_device
from .store import ScoreStore, StoreError
from .victims import VictimError


def _option_value(text: str) -> Any:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def victim_options(spec: str, pairs: list[str], victim_size: int | None) -> tuple[dict[str, Any], int | None]:
    """Loader options for a victim: a trainer's `CKPT.json` first, then `--victim-opt KEY=VALUE`."""
    from .train import read_arch
    options: dict[str, Any] = {}
    kind, _, target = spec.partition(":")
    if kind == "pix2pix" and (arch := read_arch(target)) is not None:
        options.update(arch.load_options())
        victim_size = victim_size or arch.size
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--victim-opt expects KEY=VALUE, got {pair!r}")
        options[key.replace("-", "_")] = _option_value(value)
    return options, victim_size


def config_from_args(args: argparse.Namespace) -> ScoreConfig:
    options, victim_size = victim_options(args.victim, args.victim_opt, args.victim_size)
    return ScoreConfig(
        victim=args.victim, victim_weights=args.victim_weights, victim_size=victim_size,
        victim_range=args.victim_range, victim_options=tuple(sorted(options.items())),
        backbone=args.backbone, backbone_weights=args.weights, preset=args.preset,
        difficulty_source=args.difficulty_source, fit_fraction=args.fit_fraction, ridge=args.ridge,
        seed=args.seed, alpha=args.alpha, reference_ids=args.reference, augment=args.augment,
        defense_noise=args.defense_noise, precision=args.precision,
    )


def cmd_score(args: argparse.Namespace) -> int:
    if args.threads:
        use_threads(args.threads)
    config = config_from_args(args)
    spec = DatasetSpec(args.data, args.inputs, args.targets, args.direction, args.members)
    summary = run_scoring(spec, config, args.out, batch_size=args.batch_size, shard_size=args.shard_size,
                          device=args.device, overwrite=args.overwrite, progress=not args.no_progress,
                          cluster=ClusterPlan(args.workers, args.scheduler))
    store = ScoreStore.open(args.out, mode="r")
    alpha = store.group.attrs["alpha"]
    print(summary.line())
    if summary.stages.seconds:
        print(f"time by stage: {summary.stages.line()}")
    print(f"alpha = {alpha['value']:.4g} ({alpha['spec']}, {alpha['n_rows']} rows)")
    counts = store.summary()
    print(f"store: {args.out} ({counts['ok']} ok, {counts['failed']} failed"
          + (f"; failure reasons in {args.out}/reason, see `memscore failures {args.out}`)" if counts["failed"] else ")"))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    store = ScoreStore.open(args.store, mode="r")
    result = evaluate_store(store, args.members, args.bootstrap, alpha=args.alpha,
                            calibration_fraction=args.calibration_fraction)
    alpha = result["alpha"] or {}
    print(f"{args.store}: {result['lrec']['n_members']} members, {result['lrec']['n_nonmembers']} non-members, "
          f"{result['lrec']['n_excluded_nan']} failed excluded; lower score = member")
    chosen = f", chosen on {alpha['calibration_rows']} calibration rows; metrics on the others" \
        if alpha.get("calibration_rows") else ""
    print(f"alpha = {alpha.get('value', float('nan')):.4g} ({alpha.get('spec', '?')}{chosen})")
    for column in ("lrec", "lmem"):
        print(format_metrics(column, result[column]))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
        print(f"metrics written to {args.json}")
    return 0


def cmd_rescore(args: argparse.Namespace) -> int:
    store = ScoreStore.open(args.store)
    if not store.done_shards().all():
        raise SystemExit(f"{args.store} is not fully scored yet; rerun `memscore score` to finish it first")
    config = store.config
    updated = ScoreConfig.from_dict({**config.to_dict(), "alpha": args.alpha,
                                     "reference_ids": args.reference or config.reference_ids})
    with store.lock():
        store.group.attrs["memscore"] = {**store.meta, "config": updated.to_dict()}
        store = ScoreStore.open(args.store)
        record = alpha_pass(store)
    print(f"{args.store}: lmem rewritten with alpha = {record['value']:.4g} ({record['spec']}); "
          "previous choice kept in the 'history' attribute")
    return 0


def cmd_failures(args: argparse.Namespace) -> int:
    store = ScoreStore.open(args.store, mode="r")
    ids, status, reason = store.column("id"), store.column("status"), store.column("reason")
    failed = np.flatnonzero(status == "failed")
    for index in failed:
        print(f"{ids[index]}\t{reason[index]}")
    print(f"{len(failed)} failed of {store.n_images}", file=sys.stderr)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .report import write_report
    dataset = None
    if args.data or args.inputs:
        dataset = DatasetSpec(args.data, args.inputs, args.targets, args.direction).open()
    index = write_report(args.store, Path(args.out), members_file=args.members, dataset=dataset, n_boot=args.bootstrap)
    print(f"report written to {index} (open it in a browser; no server needed)")
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from .metrics import calibrate_threshold
    store = ScoreStore.open(args.store, mode="r")
    nonmembers = read_id_list(args.nonmembers)
    rows = np.isin(store.column("id"), list(nonmembers))
    if not rows.any():
        raise ValueError(f"none of the ids in {args.nonmembers} is in {args.store}")
    tau = calibrate_threshold(store.column(args.column)[rows].astype(np.float64), args.fpr)
    record = {"store": str(args.store), "column": args.column, "tau": tau, "target_fpr": args.fpr,
              "n_nonmembers": int(rows.sum()), "nonmembers_file": str(args.nonmembers),
              "rule": "member if score <= tau", "alpha": store.group.attrs.get("alpha")}
    Path(args.out).write_text(json.dumps(record, indent=2))
    print(f"tau = {tau:.6g} on {args.column} for FPR <= {args.fpr:g} from {record['n_nonmembers']} known non-members "
          f"-> {args.out}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from .metrics import predict_members
    if (args.tau is None) == (args.calibration is None):
        raise ValueError("give exactly one of --tau or --calibration FILE")
    column, tau, source = args.column, args.tau, {"tau": args.tau}
    if args.calibration:
        source = json.loads(Path(args.calibration).read_text())
        column, tau = source["column"], float(source["tau"])
    store = ScoreStore.open(args.store)
    scores = store.column(column).astype(np.float64)
    decision = np.where(np.isfinite(scores), predict_members(scores, tau), -1).astype(np.int8)
    with store.lock():
        store.write_column("predicted_member", decision, -1, {"column": column, "tau": tau,
                                                              "rule": "member if score <= tau; -1 not scored",
                                                              "source": source})
    print(f"{int((decision == 1).sum())} predicted members, {int((decision == 0).sum())} non-members, "
          f"{int((decision == -1).sum())} not scored -> {args.store}/predicted_member")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    frame = ScoreStore.open(args.store, mode="r").to_frame()
    out = Path(args.out or Path(args.store).with_suffix(f".{args.format}"))
    if args.format == "parquet":
        frame.to_parquet(out, index=False)
    else:
        frame.to_csv(out, index=False)
    print(f"{len(frame)} rows written to {out}")
    return 0


def cmd_train_victim(args: argparse.Namespace) -> int:
    from .data import open_dataset
    from .train import VictimArch, train_pix2pix
    members = read_id_list(args.members) if args.members else None
    dataset = open_dataset(args.data, direction=args.direction)
    arch = VictimArch(netG=args.netG, ngf=args.ngf, norm=args.norm, use_dropout=args.dropout, size=args.size)
    out = train_pix2pix(dataset, args.out, members=members, arch=arch, epochs=args.epochs, batch_size=args.batch_size,
                        seed=args.seed, device=str(worker_device(args.device)), use_jitter=not args.no_jitter,
                        checkpoint_every=args.checkpoint_every)
    print(f"victim written to {out} (architecture in {out}.json); score with --victim pix2pix:{out}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo
    run_demo(Path(args.out), quick=args.quick)
    return 0


def _add_dataset_arguments(p: argparse.ArgumentParser, purpose: str) -> None:
    p.add_argument("data", nargs="?", help=f"{purpose}: an aligned pix2pix folder, or a manifest "
                                           "(.csv/.parquet: id,input,target[,member])")
    p.add_argument("--inputs", help="folder of conditioning inputs (with --targets), paired by relative path")
    p.add_argument("--targets", help="folder of ground-truth images (with --inputs)")
    p.add_argument("--direction", default="AtoB", choices=("AtoB", "BtoA"),
                   help="aligned files: which half is the input x (Facades label->photo: BtoA)")


def _add_score_arguments(p: argparse.ArgumentParser) -> None:
    _add_dataset_arguments(p, "the dataset to score")
    p.add_argument("--members", help="file of member ids (one per line), recorded in the store")
    p.add_argument("--out", required=True, help="the Zarr store to write (resumed if it exists)")
    p.add_argument("--victim", required=True,
                   help="recon:DIR | torchscript:PATH | python:MODULE:FACTORY | pix2pix:CKPT | pix2pixhd:CKPT | spade:CKPT")
    p.add_argument("--victim-weights", help="weights for a python: victim (loaded with weights_only=True)")
    p.add_argument("--victim-size", type=int, help="square input size the victim is fed (default: the input's own)")
    p.add_argument("--victim-range", default="-1,1", choices=VALUE_RANGES, help="victim tensor value range")
    p.add_argument("--victim-opt", action="append", default=[], metavar="KEY=VALUE",
                   help="victim loader option, e.g. netG=unet_256, ngf=64, mode=eval (repeatable)")
    p.add_argument("--backbone", default="efficientnet_lite0", choices=available())
    p.add_argument("--weights", help="backbone weights file (default: embedded / torch hub cache)")
    p.add_argument("--preset", default="aligned", choices=PRESETS)
    p.add_argument("--difficulty-source", default="target", choices=DIFFICULTY_SOURCES)
    p.add_argument("--alpha", default="fit", help="NUMBER | fit | fit:robust | fit:reference (default: fit)")
    p.add_argument("--reference", help="ids of known non-members, for --alpha fit:reference")
    p.add_argument("--augment", type=int, default=1, metavar="K",
                   help="average Lrec over K copies: the pair, then seeded flips and crops (paper's Ours-Aug)")
    p.add_argument("--defense-noise", type=float, default=0.0, metavar="SIGMA",
                   help="add Gaussian noise of this std to victim outputs (measures a noise defence)")
    p.add_argument("--precision", default="fp32", choices=PRECISIONS,
                   help="bf16: backbone and victim under bfloat16 autocast (CUDA only)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fit-fraction", type=float, default=0.7)
    p.add_argument("--ridge", type=float, default=1e-6, help="relative ridge of the difficulty fit")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--shard-size", type=int, default=None,
                   help="images per shard (= store chunk); default 1024, or about 16 shards per local Dask worker")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--threads", type=int, default=0,
                   help="CPU threads for this process (default: torch's choice; Dask workers share the cores)")
    p.add_argument("--workers", type=int, default=0,
                   help="score on a local Dask cluster of N worker processes (one per GPU where there are GPUs)")
    p.add_argument("--scheduler", help="score on an existing Dask cluster, e.g. tcp://HOST:8786 (the store path "
                                       "must be reachable from every worker)")
    p.add_argument("--overwrite", action="store_true", help="start a fresh store instead of resuming")
    p.add_argument("--no-progress", action="store_true")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="memscore", description="Membership-inference scoring for conditional image generators")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("score", help="score a dataset against a victim into a Zarr store")
    _add_score_arguments(p)
    p.set_defaults(func=cmd_score)
    p = sub.add_parser("evaluate", help="attack metrics (AUC, balanced accuracy, TPR at low FPR) of a store")
    p.add_argument("store")
    p.add_argument("--members", help="file of member ids (default: the store's member column)")
    p.add_argument("--bootstrap", type=int, default=0, help="bootstrap resamples for 95%% intervals")
    p.add_argument("--json", help="write the metrics here")
    p.add_argument("--alpha", help="evaluate lmem at this alpha instead of the store's: NUMBER | fit | fit:robust | "
                                   "auto (chosen with labels on a calibration split, reported on the rest)")
    p.add_argument("--calibration-fraction", type=float, default=0.5, help="share of labelled rows for --alpha auto")
    p.set_defaults(func=cmd_evaluate)
    p = sub.add_parser("rescore", help="recompute lmem with another alpha, from the stored lrec and ldiff")
    p.add_argument("store")
    p.add_argument("--alpha", required=True)
    p.add_argument("--reference", help="ids of known non-members, for --alpha fit:reference")
    p.set_defaults(func=cmd_rescore)
    p = sub.add_parser("report", help="a self-contained HTML report with plots")
    p.add_argument("store")
    p.add_argument("--out", required=True, help="folder for index.html and its PNGs")
    p.add_argument("--members", help="file of member ids (default: the store's member column)")
    p.add_argument("--bootstrap", type=int, default=200)
    _add_dataset_arguments(p, "the scored dataset, for thumbnails of the easiest and hardest images")
    p.set_defaults(func=cmd_report)
    p = sub.add_parser("calibrate", help="fix tau from known non-members for a target FPR (no member labels)")
    p.add_argument("store")
    p.add_argument("--nonmembers", required=True, help="file of ids known not to be members")
    p.add_argument("--fpr", type=float, default=0.01)
    p.add_argument("--column", default="lmem", choices=("lmem", "lrec"))
    p.add_argument("--out", default="calibration.json")
    p.set_defaults(func=cmd_calibrate)
    p = sub.add_parser("predict", help="write a member / non-member decision per image into the store")
    p.add_argument("store")
    p.add_argument("--tau", type=float)
    p.add_argument("--calibration", help="a file written by `memscore calibrate`")
    p.add_argument("--column", default="lmem", choices=("lmem", "lrec"))
    p.set_defaults(func=cmd_predict)
    p = sub.add_parser("export", help="the per-image table as Parquet or CSV")
    p.add_argument("store")
    p.add_argument("--format", default="parquet", choices=("parquet", "csv"))
    p.add_argument("--out")
    p.set_defaults(func=cmd_export)
    p = sub.add_parser("failures", help="list the ids that failed and why")
    p.add_argument("store")
    p.set_defaults(func=cmd_failures)
    p = sub.add_parser("train-victim", help="train a pix2pix victim on the member split")
    p.add_argument("data")
    p.add_argument("--members", help="file of member ids (default: every pair)")
    p.add_argument("--out", required=True)
    p.add_argument("--direction", default="AtoB", choices=("AtoB", "BtoA"))
    p.add_argument("--arch", default="pix2pix", choices=("pix2pix",))
    p.add_argument("--netG", default="unet_128", choices=("unet_64", "unet_128", "unet_256"))
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--ngf", type=int, default=16)
    p.add_argument("--norm", default="instance", choices=("batch", "instance", "none"))
    p.add_argument("--dropout", action="store_true")
    p.add_argument("--no-jitter", action="store_true", help="no random resize-crop and flip (the public default has them)")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--checkpoint-every", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_train_victim)
    p = sub.add_parser("demo", help="the whole job on a generated dataset: train a victim, score, evaluate")
    p.add_argument("--out", default="memscore-demo")
    p.add_argument("--quick", action="store_true", help="smaller and faster (for tests)")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (StoreError, VictimError, WeightsMissing, FileNotFoundError, ValueError) as error:
        print(f"memscore {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
