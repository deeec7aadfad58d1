"""The `memscore` command: parse arguments, call the engine, print. No scoring logic lives here."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .alpha import parse_alpha
from .attack import DECISION_COLUMN, calibrate, evaluate, match_members, predict, readable_store, score_names
from .backbones import backbone_names
from .config import DIFFICULTY_SOURCES, PRECISIONS, PRESETS, VALUE_RANGES, ScoreConfig
from .data import read_id_list
from .errors import MemscoreError, UsageError
from .metrics import format_metrics
from .outputs import write_file, write_json
from .devices import resolve_device, use_threads
from .rescore import rescore
from .run import run_scoring
from .schedule import ClusterPlan
from .store import ScoreStore
from .work import DatasetSpec

# The errors a user can cause: memscore's own family (a bad option, a damaged store, ...) and what the operating
# system says about a path the user gave (missing, not allowed, disk full). One line each, exit code 2.
USER_ERRORS = (MemscoreError, OSError)
INTERRUPTED = 130


# ---------------------------------------------------------------- option types (checked before anything runs)


def _whole_number(minimum: int, meaning: str = "") -> Callable[[str], int]:
    """An argparse type: an integer >= `minimum`; `meaning` says what the smallest values mean."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}{meaning}, got {value}")
        return value
    return parse


def _number(accepts: Callable[[float], bool], rule: str) -> Callable[[str], float]:
    """An argparse type: a number that `accepts` takes; `rule` says which numbers those are."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not accepts(value):
            raise argparse.ArgumentTypeError(f"must be {rule}, got {text}")
        return value
    return parse


_fraction = _number(lambda value: 0.0 < value < 1.0, "strictly between 0 and 1")
_non_negative = _number(lambda value: 0.0 <= value < float("inf"), "a finite number >= 0")


def _alpha(labelled: bool) -> Callable[[str], str]:
    """An argparse type: an alpha spec (`memscore.alpha.parse_alpha`), kept as written; `auto` needs labels,
    so only `labelled` commands (evaluate) take it."""
    def parse(text: str) -> str:
        try:
            spec = parse_alpha(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None
        if spec.kind == "auto" and not labelled:
            raise argparse.ArgumentTypeError("'auto' chooses alpha with member labels: use it with "
                                             "`memscore evaluate --alpha auto`; here use a number, fit, "
                                             "fit:robust or fit:reference")
        return text
    return parse


POSITIVE = _whole_number(1)
COUNT = _whole_number(0)


def _victim_option(text: str) -> tuple[str, Any]:
    """An argparse type: `KEY=VALUE` -> (key with `-` as `_`, the value as int, float, bool or text)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    for cast in (int, float):
        try:
            return key.replace("-", "_"), cast(value)
        except ValueError:
            pass
    return key.replace("-", "_"), {"true": True, "false": False}.get(value.lower(), value)


def victim_options(spec: str, pairs: list[tuple[str, Any]], victim_size: int | None
                   ) -> tuple[dict[str, Any], int | None]:
    """Loader options for a victim (`--victim-opt KEY=VALUE`; the loader reads a checkpoint's own model
    arguments itself) and its input size: `--victim-size`, else the size its checkpoint was trained at."""
    from .victims import trained_size
    return dict(pairs), victim_size or trained_size(spec)


def config_from_args(args: argparse.Namespace) -> ScoreConfig:
    options, victim_size = victim_options(args.victim, args.victim_opt, args.victim_size)
    return ScoreConfig(
        victim=args.victim, victim_weights=args.victim_weights, victim_size=victim_size,
        victim_range=args.victim_range, victim_options=tuple(sorted(options.items())),
        backbone=args.backbone, backbone_weights=args.weights, preset=args.preset,
        difficulty_source=args.difficulty_source, fit_fraction=args.fit_fraction, ridge=args.ridge,
        seed=args.seed, alpha=args.alpha, reference_ids=args.reference, augment=args.augment,
        defense_noise=args.defense_noise, precision=args.precision, shadows=args.shadows,
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
    for note in summary.dataset_notes:
        print(f"note: {note}")
    print(summary.line())
    if summary.stages.seconds:
        print(f"time by stage: {summary.stages.line()}")
    if store.alpha is not None:
        _print_id_files(store.alpha.reference_ids)
        print(f"alpha = {store.alpha.value:.4g} ({store.alpha.spec}, {store.alpha.n_rows} rows)")
    counts = store.counts()
    print(f"store: {args.out} ({counts.ok} ok, {counts.failed} failed, {counts.pending} pending"
          + (f"; failure reasons: `memscore failures {args.out}`)" if counts.failed else ")"))
    for index, error in sorted(store.failed_shards.items()):
        print(f"shard {index} failed after every retry and stays pending: {error}")
    if counts.pending:
        print(f"{args.out} is not finished: {counts.pending} rows pending; rerun the same command to score them",
              file=sys.stderr)
        return 1
    return 0


def _state_pending(store: str, pending: int) -> None:
    """The line every reader prints about an unfinished store it was asked to read anyway (--partial)."""
    if pending:
        print(f"PARTIAL: {pending} rows of {store} are still pending; what follows covers the rows scored so far")


def _print_id_files(*matches: dict[str, Any] | None) -> None:
    """The line of each id file a command matched against the store (`memscore.data.IdMatch.to_dict`): how many
    of its ids were used and how many the store lacks, so that no id is ignored without a word."""
    for match in matches:
        if match:
            print(match["summary"])


def cmd_evaluate(args: argparse.Namespace) -> int:
    result = evaluate(args.store, args.members, n_boot=args.bootstrap, alpha=args.alpha,
                      calibration_fraction=args.calibration_fraction, partial=args.partial, scores=args.score,
                      strict=args.strict)
    _state_pending(args.store, result["pending"])
    first, alpha = result[result["scores"][0]], result["alpha"]
    _print_id_files(result["members_ids"], alpha.get("reference_ids"))
    print(f"{args.store}: {first['n_members']} members, {first['n_nonmembers']} non-members; "
          f"{first['n_excluded_nan']} labelled rows without a score excluded ({result['failed']} failed, "
          f"{result['pending']} pending), {result['n_unlabelled_excluded']} unlabelled excluded; lower score = member")
    if alpha.get("calibration_rows"):
        chosen = f", chosen on {alpha['calibration_rows']} calibration rows; metrics on the others"
    else:
        chosen = f", fitted on {alpha['fitted_on']}" if alpha.get("fitted_on") else ""
    print(f"alpha = {alpha['value']:.4g} ({alpha['spec']}{chosen})")
    for name in result["scores"]:
        print(format_metrics(name, result[name]))
    if args.json:
        write_json(args.json, result, overwrite=args.overwrite)
        print(f"metrics written to {args.json}")
    return 0


def cmd_rescore(args: argparse.Namespace) -> int:
    if args.method == "alpha":
        if args.alpha is None:
            raise UsageError("--method alpha (the default) needs --alpha NUMBER | fit | fit:robust | fit:reference")
        record = rescore(args.store, args.alpha, args.reference, strict=args.strict)
        _print_id_files(record.reference_ids)
        print(f"{args.store}: lmem rewritten with alpha = {record.value:.4g} ({record.spec}); "
              "earlier choices kept in its alpha history")
    elif args.method == "per-image":
        from .calibration import LCAL_COLUMN, rescore_per_image
        if not args.reference:
            raise UsageError("--method per-image needs --reference FILE (ids of known non-members)")
        record = rescore_per_image(args.store, args.reference, model=args.model, folds=args.folds, seed=args.seed,
                                   statistic=args.statistic, strict=args.strict)
        _print_id_files(record["reference_ids"])
        print(f"{args.store}: {LCAL_COLUMN} written ({record['model']} model of {args.statistic}, "
              f"{record['folds']} folds; reference rows scored out of fold)")
    else:
        from .shadows import rescore_with_shadows
        record = rescore_with_shadows(args.store, args.method, online=not args.offline,
                                      fixed_variance=args.fixed_variance, reference=args.reference,
                                      strict=args.strict)
        _print_id_files(record["reference_ids"])
        print(f"{args.store}: {record['column']} written ({args.method}, {'offline' if args.offline else 'online'}, "
              f"{record['k']} shadows)")
    return 0


def cmd_failures(args: argparse.Namespace) -> int:
    store, counts = readable_store(args.store, partial=True)
    ids, status, reason = store.column("id"), store.column("status"), store.column("reason")
    for index in np.flatnonzero(status == "failed"):
        print(f"{ids[index]}\t{reason[index]}")
    pending = f", {counts.pending} pending (not scored yet: rerun `memscore score`)" if counts.pending else ""
    print(f"{counts.failed} failed{pending} of {counts.n_images}", file=sys.stderr)
    for index, error in sorted(store.failed_shards.items()):
        print(f"shard {index} failed after every retry and stays pending: {error}", file=sys.stderr)
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    store = ScoreStore.open(args.store, mode="r")
    problems = store.verify()
    for problem in problems:
        print(f"{args.store}: {problem}")
    counts = store.counts() if not problems else None
    if problems:
        print(f"{len(problems)} problem(s); rerunning the same `memscore score` command rescores damaged shards",
              file=sys.stderr)
        return 1
    print(f"{args.store}: {store.n_shards} shards verified, no problems ({counts.ok} ok, {counts.failed} failed, "
          f"{counts.pending} pending)")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .report import write_report
    dataset = None
    if args.data or args.inputs:
        dataset = DatasetSpec(args.data, args.inputs, args.targets, args.direction).open()
    if args.members:  # how the labels file matches the store: said, or refused (--strict), before the page is built
        store, _ = readable_store(args.store, partial=args.partial)
        print(match_members(store, args.members, strict=args.strict).line())
    index = write_report(args.store, Path(args.out), members_file=args.members, dataset=dataset,
                         n_boot=args.bootstrap, partial=args.partial, scores=args.score, overwrite=args.overwrite)
    print(f"report written to {index} (open it in a browser; no server needed)")
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    calibration = calibrate(args.store, args.nonmembers, fpr=args.fpr, column=args.score, partial=args.partial,
                            strict=args.strict)
    _state_pending(args.store, calibration.pending)
    calibration.save(args.out, overwrite=args.overwrite)
    _print_id_files(calibration.nonmember_ids)
    print(f"tau = {calibration.tau:.6g} on {calibration.column} for FPR <= {args.fpr:g} from "
          f"{calibration.n_nonmembers} known non-members -> {args.out}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    prediction = predict(args.store, tau=args.tau, calibration=args.calibration, column=args.score,
                         partial=args.partial)
    _state_pending(args.store, prediction.pending)
    print(f"{prediction.members} predicted members, {prediction.nonmembers} non-members, "
          f"{prediction.not_scored} not scored -> {args.store}/{DECISION_COLUMN}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    store, counts = readable_store(args.store, partial=args.partial)
    _state_pending(args.store, counts.pending)
    frame = store.to_frame()
    if args.score:
        for name in args.score:
            if name not in score_names(store):
                raise UsageError(f"{args.store} has no score {name!r}; it has {', '.join(score_names(store))}")
        frame = frame.drop(columns=[name for name in score_names(store) if name not in args.score])
    out = Path(args.out or Path(args.store).with_suffix(f".{args.format}"))
    if args.format == "parquet":
        write_file(out, lambda path: frame.to_parquet(path, index=False), overwrite=args.overwrite)
    else:
        write_file(out, lambda path: frame.to_csv(path, index=False), overwrite=args.overwrite)
    pending = f" ({counts.pending} pending: empty status, NaN scores)" if counts.pending else ""
    print(f"{len(frame)} rows written to {out}{pending}")
    return 0


def cmd_train_victim(args: argparse.Namespace) -> int:
    from .data import open_dataset
    from .train import VictimArch, train_pix2pix
    members = set(read_id_list(args.members).ids) if args.members else None
    dataset = open_dataset(args.data, direction=args.direction)
    arch = VictimArch(netG=args.netG, ngf=args.ngf, norm=args.norm, use_dropout=args.dropout, size=args.size)
    out = train_pix2pix(dataset, args.out, members=members, arch=arch, epochs=args.epochs, batch_size=args.batch_size,
                        seed=args.seed, device=str(resolve_device(args.device)), use_jitter=not args.no_jitter,
                        checkpoint_every=args.checkpoint_every, overwrite=args.overwrite)
    print(f"victim written to {out} (it carries its architecture); score with --victim pix2pix:{out}")
    return 0


def cmd_shadows_train(args: argparse.Namespace) -> int:
    from .shadows import ShadowRecipe, train_shadows
    recipe = ShadowRecipe(netG=args.netG, size=args.size, ngf=args.ngf, norm=args.norm, use_dropout=args.dropout,
                          use_jitter=not args.no_jitter, epochs=args.epochs, batch_size=args.batch_size)
    shadow_set = train_shadows(args.data, args.population, args.k, args.out, recipe, seed=args.seed,
                               plan=ClusterPlan(args.workers, args.scheduler), direction=args.direction,
                               device=args.device, fresh=args.fresh)
    print(f"{len(shadow_set.shadows)} shadows in {args.out}; score with --shadows {args.out}")
    return 0


def cmd_dataset_test(args: argparse.Namespace) -> int:
    from .dataset_inference import dataset_test_store
    result = dataset_test_store(args.store, args.suspect, args.reference, score=args.score, n_boot=args.bootstrap,
                                strict=args.strict)
    test, by_size = result["test"], result["by_size"]
    _print_id_files(result["suspect_ids"], result["reference_ids"])
    print(f"{args.store}: {test['n_suspect']} suspect vs {test['n_reference']} reference images on {args.score} "
          f"({result['reference']}); H1: the suspects' scores are lower (members)")
    print(f"p-value {test['p_value']:.3g} ({test['statistic']}); effect size AUC {test['auc']:.3f}"
          + (f" [{test['auc_ci'][0]:.3f}, {test['auc_ci'][1]:.3f}]" if test.get("auc_ci") else ""))
    smallest = by_size["smallest_size"]
    print("suspect images needed for p < 0.01 (median over random subsets): "
          + (str(smallest) if smallest is not None else "not reached with this many"))
    if args.json:
        write_json(args.json, result, overwrite=args.overwrite)
        print(f"result written to {args.json}")
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


def _add_recipe_arguments(p: argparse.ArgumentParser) -> None:
    """How a pix2pix victim is trained (`train-victim`, and every shadow of `shadows train`)."""
    p.add_argument("--direction", default="AtoB", choices=("AtoB", "BtoA"))
    p.add_argument("--netG", default="unet_128", choices=("unet_64", "unet_128", "unet_256"))
    p.add_argument("--size", type=POSITIVE, default=128)
    p.add_argument("--ngf", type=POSITIVE, default=16)
    p.add_argument("--norm", default="instance", choices=("batch", "instance", "none"))
    p.add_argument("--dropout", action="store_true")
    p.add_argument("--no-jitter", action="store_true", help="no random resize-crop and flip (the public default has them)")
    p.add_argument("--epochs", type=POSITIVE, default=20)
    p.add_argument("--batch-size", type=POSITIVE, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")


def _add_score_argument(p: argparse.ArgumentParser, meaning: str) -> None:
    p.add_argument("--score", action="append", metavar="NAME", help=meaning)


def _add_overwrite_argument(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--overwrite", action="store_true",
                   help=f"replace an existing {what} (a folder only if memscore made it); without it, refused")


def _add_partial_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--partial", action="store_true",
                   help="read an unfinished store anyway (the output says how many rows are still pending)")


def _add_strict_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--strict", action="store_true",
                   help="refuse an id file with ids the store does not hold (default: use the others, and print how "
                        "many ids were ignored, naming a few)")


def _add_score_arguments(p: argparse.ArgumentParser) -> None:
    _add_dataset_arguments(p, "the dataset to score")
    p.add_argument("--members", help="file of member ids (one per line), recorded in the store")
    p.add_argument("--out", required=True, help="the Zarr store to write (resumed if it exists)")
    p.add_argument("--victim", required=True,
                   help="recon:DIR | torchscript:PATH | python:MODULE:FACTORY | pix2pix:CKPT | pix2pixhd:CKPT | spade:CKPT")
    p.add_argument("--victim-weights", help="weights for a python: victim (loaded with weights_only=True)")
    p.add_argument("--victim-size", type=POSITIVE, help="square input size the victim is fed (default: the input's own)")
    p.add_argument("--victim-range", default="-1,1", choices=VALUE_RANGES, help="victim tensor value range")
    p.add_argument("--victim-opt", action="append", default=[], metavar="KEY=VALUE", type=_victim_option,
                   help="victim loader option, e.g. netG=unet_256, ngf=64, mode=eval (repeatable)")
    p.add_argument("--backbone", default="efficientnet_lite0", choices=backbone_names())
    p.add_argument("--weights", help="backbone weights file (default: embedded / torch hub cache)")
    p.add_argument("--preset", default="aligned", choices=PRESETS)
    p.add_argument("--difficulty-source", default="target", choices=DIFFICULTY_SOURCES)
    p.add_argument("--alpha", default="fit", type=_alpha(labelled=False),
                   help="NUMBER | fit | fit:robust | fit:reference (default: fit)")
    p.add_argument("--reference", help="ids of known non-members, for --alpha fit:reference")
    p.add_argument("--augment", type=POSITIVE, default=1, metavar="K",
                   help="average Lrec over K copies: the pair, then seeded flips and crops (paper's Ours-Aug)")
    p.add_argument("--defense-noise", type=_non_negative, default=0.0, metavar="SIGMA",
                   help="add Gaussian noise of this std to victim outputs (measures a noise defence)")
    p.add_argument("--precision", default="auto", choices=PRECISIONS,
                   help="network arithmetic: auto = bf16 where the hardware runs it natively (CUDA from Ampere on, "
                        "CPUs with AMX-BF16 or AVX512-BF16), else fp32; bf16 is refused where it would be emulated; "
                        "the store records what was used (default: auto)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fit-fraction", type=_fraction, default=0.7)
    p.add_argument("--ridge", type=_non_negative, default=1e-6, help="relative ridge of the difficulty fit")
    p.add_argument("--batch-size", type=POSITIVE, default=32)
    p.add_argument("--shard-size", type=POSITIVE, default=None,
                   help="images per shard (= store chunk); default 1024, or about 16 shards per local Dask worker")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--threads", type=_whole_number(0, " (0: torch's choice)"), default=0,
                   help="CPU threads for this process (default: torch's choice; Dask workers share the cores)")
    p.add_argument("--workers", type=_whole_number(0, " (0: score in this process)"), default=0,
                   help="score on a local Dask cluster of N worker processes (one per GPU where there are GPUs)")
    p.add_argument("--scheduler", help="score on an existing Dask cluster, e.g. tcp://HOST:8786 (the store path "
                                       "must be reachable from every worker)")
    p.add_argument("--shadows", help="folder of shadow victims (`memscore shadows train`): every image is also "
                                     "reconstructed by each shadow, for `memscore rescore --method lira|rmia`")
    p.add_argument("--overwrite", action="store_true",
                   help="start a fresh store instead of resuming (replaces only a store memscore made, holding none "
                        "of this run's inputs)")
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
    p.add_argument("--bootstrap", type=COUNT, default=0, help="bootstrap resamples for 95%% intervals")
    p.add_argument("--json", help="write the metrics here")
    _add_overwrite_argument(p, "--json file")
    p.add_argument("--alpha", type=_alpha(labelled=True),
                   help="evaluate lmem at this alpha instead of the store's: NUMBER | fit | fit:robust | "
                        "auto (chosen with labels on a calibration split, reported on the rest)")
    p.add_argument("--calibration-fraction", type=_fraction, default=0.5, help="share of labelled rows for --alpha auto")
    _add_score_argument(p, "evaluate only this score (repeatable; default: every score the store holds)")
    _add_partial_argument(p)
    _add_strict_argument(p)
    p.set_defaults(func=cmd_evaluate)
    p = sub.add_parser("rescore", help="rewrite lmem at another alpha, or add a calibrated score (lcal, lira, rmia) "
                                       "from what the store holds; no image is read again")
    p.add_argument("store")
    p.add_argument("--method", default="alpha", choices=("alpha", "per-image", "lira", "rmia"),
                   help="alpha: lmem at --alpha; per-image: lcal from known non-members (--reference); lira, rmia: "
                        "from the store's shadow victims (`score --shadows`)")
    p.add_argument("--alpha", type=_alpha(labelled=False), help="NUMBER | fit | fit:robust | fit:reference")
    p.add_argument("--reference", help="ids of known non-members: for --alpha fit:reference and --method "
                                       "per-image; for rmia, the population samples (default: every image)")
    p.add_argument("--model", default="gaussian", choices=("gaussian", "quantile"),
                   help="per-image: the model of a non-member's Lrec given the image")
    p.add_argument("--statistic", default="lmem", choices=("lmem", "lrec"),
                   help="per-image: what the model describes for a non-member: lmem (Lrec less the store's alpha "
                        "times Ldiff) or lrec")
    p.add_argument("--folds", type=_whole_number(2), default=5,
                   help="per-image: reference rows are scored out of fold by models fitted on the other folds")
    p.add_argument("--seed", type=int, default=0, help="per-image: folds and model seeds")
    p.add_argument("--offline", action="store_true", help="lira, rmia: use only the shadows that never saw each image")
    p.add_argument("--fixed-variance", action="store_true", help="lira: one pooled variance instead of per image")
    _add_strict_argument(p)
    p.set_defaults(func=cmd_rescore)
    p = sub.add_parser("dataset-test", help="was this set of images, as a whole, in the victim's training data? "
                                            "(one-sided test against held-out non-members, with a p-value)")
    p.add_argument("store")
    p.add_argument("--suspect", required=True, help="file of the suspect ids")
    p.add_argument("--reference", help="file of held-out non-member ids (default for lcal: its own reference ids)")
    p.add_argument("--score", default="lcal", help="the score to test (lower = member): lcal, lira..., lmem, lrec")
    p.add_argument("--bootstrap", type=COUNT, default=1000, help="bootstrap resamples for the effect size's interval")
    p.add_argument("--json", help="write the result here")
    _add_overwrite_argument(p, "--json file")
    _add_strict_argument(p)
    p.set_defaults(func=cmd_dataset_test)
    p = sub.add_parser("report", help="a self-contained HTML report with plots")
    p.add_argument("store")
    p.add_argument("--out", required=True, help="folder for index.html and its PNGs")
    _add_overwrite_argument(p, "report folder")
    p.add_argument("--members", help="file of member ids (default: the store's member column)")
    p.add_argument("--bootstrap", type=COUNT, default=200)
    _add_score_argument(p, "show only this score in the metrics and ROC (repeatable; default: every score)")
    _add_dataset_arguments(p, "the scored dataset, for thumbnails of the easiest and hardest images")
    _add_partial_argument(p)
    _add_strict_argument(p)
    p.set_defaults(func=cmd_report)
    p = sub.add_parser("calibrate", help="fix tau from known non-members for a target FPR (no member labels)")
    p.add_argument("store")
    p.add_argument("--nonmembers", required=True, help="file of ids known not to be members")
    p.add_argument("--fpr", type=_fraction, default=0.01)
    p.add_argument("--score", default="lmem", help="the score to threshold: lrec | lmem | lcal | lira... (lower = "
                                                   "member; `memscore evaluate` lists a store's scores)")
    p.add_argument("--out", default="calibration.json")
    _add_overwrite_argument(p, "calibration file")
    _add_partial_argument(p)
    _add_strict_argument(p)
    p.set_defaults(func=cmd_calibrate)
    p = sub.add_parser("predict", help="write a member / non-member decision per image into the store")
    p.add_argument("store")
    p.add_argument("--tau", type=float)
    p.add_argument("--calibration", help="a file written by `memscore calibrate` (refused if the score changed since)")
    p.add_argument("--score", default="lmem", help="the score --tau applies to (a calibration names its own)")
    _add_partial_argument(p)
    p.set_defaults(func=cmd_predict)
    p = sub.add_parser("export", help="the per-image table as Parquet or CSV")
    p.add_argument("store")
    p.add_argument("--format", default="parquet", choices=("parquet", "csv"))
    p.add_argument("--out", help="the file to write (default: the store's path with the format's suffix)")
    _add_overwrite_argument(p, "file")
    _add_score_argument(p, "export only this score column (repeatable; default: every score)")
    _add_partial_argument(p)
    p.set_defaults(func=cmd_export)
    p = sub.add_parser("failures", help="list the ids that failed and why (and how many rows are pending)")
    p.add_argument("store")
    p.set_defaults(func=cmd_failures)
    p = sub.add_parser("verify", help="check every shard against its digest; list each problem (exit 1 if any)")
    p.add_argument("store")
    p.set_defaults(func=cmd_verify)
    p = sub.add_parser("train-victim", help="train a pix2pix victim on the member split")
    p.add_argument("data")
    p.add_argument("--members", help="file of member ids (default: every pair)")
    p.add_argument("--out", required=True)
    _add_recipe_arguments(p)
    p.add_argument("--checkpoint-every", type=_whole_number(0, " (0: only the final checkpoint)"), default=0)
    _add_overwrite_argument(p, "checkpoint")
    p.set_defaults(func=cmd_train_victim)
    p = sub.add_parser("shadows", help="shadow victims for LiRA and RMIA")
    shadows = p.add_subparsers(dest="shadows_command", required=True)
    p = shadows.add_parser("train", help="train K shadow victims, each on a seeded random half of a population, "
                                         "with the victim's recipe (resumable; one task per shadow)")
    p.add_argument("data")
    p.add_argument("--population", required=True, help="file of the ids the shadows' halves are drawn from")
    p.add_argument("--k", type=POSITIVE, required=True, help="number of shadows (even: every id is in exactly half)")
    p.add_argument("--out", required=True, help="folder for the shadows and their manifest (shadows.json)")
    _add_recipe_arguments(p)
    p.add_argument("--workers", type=_whole_number(0, " (0: train in this process)"), default=0,
                   help="train on a local Dask cluster of N worker processes (one per GPU where there are GPUs)")
    p.add_argument("--scheduler", help="train on an existing Dask cluster, e.g. tcp://HOST:8786")
    p.add_argument("--fresh", action="store_true", help="delete the folder's shadows and start over")
    p.set_defaults(func=cmd_shadows_train)
    p = sub.add_parser("demo", help="the whole job on a generated dataset: train a victim, score, evaluate")
    p.add_argument("--out", default="memscore-demo")
    p.add_argument("--quick", action="store_true", help="smaller and faster (for tests)")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except USER_ERRORS as error:
        message = " ".join(str(error).split())  # one line, whatever the error's own layout
        print(f"memscore {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\nmemscore {args.command}: interrupted; rerun the same command to resume (nothing finished is lost)",
              file=sys.stderr)
        return INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
