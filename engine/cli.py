"""The `memscore` command: parse arguments, call the engine, print. No scoring logic lives here."""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

import numpy as np

from .alpha import LABEL_FREE_FORMS, parse_alpha
from .attack import DECISION_COLUMN, calibrate, evaluate, match_members, predict, readable_store
from .blind import format_blind_baseline
from .claims import DEFAULT_FDR, PROCEDURES, claims_store
from .config import STATISTICS, ScoreConfig
from .data import DIRECTIONS, EXAMPLES, read_id_list
from .errors import MemscoreError
from .metrics import format_held_out, format_metrics
from .outputs import write_file, write_json
from .rescoring import DEFAULT_METHOD, METHODS, command_options, rescore
from .run import RunOptions, run_scoring
from .schedule import ClusterPlan
from .score_names import SCORES, describe_scores, require_score, score_names
from .recipes import RECIPES, TRAINERS
from .settings import (FRACTION, WHOLE_NON_NEGATIVE, WHOLE_POSITIVE, add_alternative_arguments,
                       add_setting_arguments, alternative_from_arguments, argument_type,
                       settings_from_arguments)
from .shadows import EVEN_SHADOWS
from .store import ScoreStore
from .work import DatasetSpec

# The errors a user can cause: memscore's own family (a bad option, a damaged store, ...) and what the operating
# system says about a path the user gave (missing, not allowed, disk full). One line each, exit code 2.
USER_ERRORS = (MemscoreError, OSError)
INTERRUPTED = 130


# ---------------------------------------------------------------- option types (checked before anything runs)
# Settings of a run, of training and of rescoring are declared in the engine (`memscore.settings`); the types
# below are for the readers' own options.

POSITIVE = argument_type(int, WHOLE_POSITIVE)
COUNT = argument_type(int, WHOLE_NON_NEGATIVE)
FRACTION_OPTION = argument_type(float, FRACTION)
ALPHA_FOR_EVALUATION = argument_type(parse_alpha)
"""evaluate's --alpha: any alpha, `auto` included (it chooses alpha with the labels of a calibration split)."""
RESCORE_OPTIONS = command_options()
"""rescore's options: every method's, as the registry declares them (`memscore.rescoring.METHODS`)."""


def cmd_score(args: argparse.Namespace) -> int:
    spec = DatasetSpec(args.data, args.inputs, args.targets, args.direction, args.members)
    summary = run_scoring(spec, settings_from_arguments(ScoreConfig, args), args.out,
                          settings_from_arguments(RunOptions, args), overwrite=args.overwrite,
                          progress=not args.no_progress)
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
                      strict=args.strict, holdout=args.holdout)
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
        if result["holdout"]:
            print(format_held_out(name, result["holdout"]["scores"][name], result[name]["ci_level"]))
    print(format_blind_baseline(result["blind_baseline"]))
    if args.json:
        write_json(args.json, result, overwrite=args.overwrite)
        print(f"metrics written to {args.json}")
    return 0


def cmd_rescore(args: argparse.Namespace) -> int:
    given = {field.name: getattr(args, field.name) for field in dataclasses.fields(RESCORE_OPTIONS)
             if getattr(args, field.name) is not None and getattr(args, field.name) is not False}
    result = rescore(args.store, args.method, strict=args.strict, **given)
    _print_id_files(result.reference_ids)
    print(result.summary())
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
    store, _ = readable_store(args.store, partial=args.partial)  # verified once, for every reader of the handle
    if args.members:  # how the labels file matches the store: said, or refused (--strict), before the page is built
        print(match_members(store, args.members, strict=args.strict).line())
    index = write_report(store, Path(args.out), members_file=args.members, dataset=dataset,
                         n_boot=args.bootstrap, partial=args.partial, scores=args.score, overwrite=args.overwrite,
                         holdout=args.holdout)
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
            require_score(store, name)
        scores = set(score_names(store)) | set(STATISTICS)  # lrec too where it is not held (NaN: not sampled)
        frame = frame.drop(columns=[name for name in scores if name in frame and name not in args.score])
    out = Path(args.out or Path(args.store).with_suffix(f".{args.format}"))
    if args.format == "parquet":
        write_file(out, lambda path: frame.to_parquet(path, index=False), overwrite=args.overwrite)
    else:
        write_file(out, lambda path: frame.to_csv(path, index=False), overwrite=args.overwrite)
    pending = f" ({counts.pending} pending: empty status, NaN scores)" if counts.pending else ""
    print(f"{len(frame)} rows written to {out}{pending}")
    return 0


def _recipe(args: argparse.Namespace) -> Any:
    """The training recipe of the kind asked for, from the options given (the others keep that kind's defaults)."""
    return alternative_from_arguments(RECIPES, args.kind, args, "--kind")


def cmd_train_victim(args: argparse.Namespace) -> int:
    from .data import open_dataset
    recipe, trainer = _recipe(args), TRAINERS[args.kind]
    members = set(read_id_list(args.members).ids) if args.members else None
    more = {} if args.checkpoint_every is None else {"checkpoint_every": args.checkpoint_every}
    out = trainer.train(open_dataset(args.data, direction=args.direction), args.out, recipe, members=members,
                        seed=args.seed, device=args.device, overwrite=args.overwrite, **more)
    print(f"victim written to {out} (it carries its architecture); score with --victim {trainer.victim_spec(out)}")
    return 0


def cmd_shadows_train(args: argparse.Namespace) -> int:
    from .shadows import train_shadows
    shadow_set = train_shadows(args.data, args.population, args.k, args.out, _recipe(args), kind=args.kind,
                               seed=args.seed, plan=ClusterPlan(args.workers, args.scheduler), direction=args.direction,
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


def cmd_claims(args: argparse.Namespace) -> int:
    result = claims_store(args.store, args.reference, score=args.score, fdr=args.fdr, procedure=args.procedure,
                          suspect_file=args.suspect, strict=args.strict, partial=args.partial)
    _state_pending(args.store, result["pending"])
    _print_id_files(result["reference_ids"], result["suspect_ids"])
    found = result["claims"]
    pi0 = f", pi0 = {found['pi0']:.3g}" if args.procedure == "storey" else ""
    print(f"{found['n_claimed']} of {found['n_tested']} images claimed as members at FDR {100 * args.fdr:g}% "
          f"({found['procedure_name']}{pi0}): expected false claims <= {found['expected_false_claims']:.3g}")
    print(f"not tested: {result['n_reference_scored']} reference images ({result['reference_note']}); "
          f"without a {args.score} score: {result['n_not_scored']}")
    if result["smallest_p_value"] > args.fdr:
        print(f"no p-value can fall below 1/(reference + 1) = {result['smallest_p_value']:.3g}: give more reference "
              "non-members to make claims at this FDR possible")
    if result["claimed_ids"]:
        more = ", ..." if len(result["claimed_ids"]) > EXAMPLES else ""
        print("claimed, lowest p-value first: " + ", ".join(map(repr, result["claimed_ids"][:EXAMPLES])) + more)
    if args.json:
        write_json(args.json, result, overwrite=args.overwrite)
        print(f"claims and per-image p-values written to {args.json}")
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
    p.add_argument("--direction", default="AtoB", choices=DIRECTIONS,
                   help="aligned files: which half is the input x (Facades label->photo: BtoA)")


def _add_recipe_arguments(p: argparse.ArgumentParser) -> None:
    """How a victim is trained (`train-victim`, and every shadow of `shadows train`): its kind, the kind's recipe
    (declared settings), which half of an aligned file is the input, the seed and the device."""
    p.add_argument("--kind", default="pix2pix", choices=tuple(TRAINERS),
                   help="pix2pix (U-Net/ResNet generator, GAN + L1) or diffusion (conditional UNet, DDPM loss, "
                        "written as a diffusers: folder)")
    p.add_argument("--direction", default="AtoB", choices=DIRECTIONS, help="which half of an aligned file is the input")
    add_alternative_arguments(p, RECIPES, "--kind")
    p.add_argument("--seed", type=int, default=0, help="seed of the initialisation, the order and the jitter")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")


def _add_score_argument(p: argparse.ArgumentParser, meaning: str) -> None:
    p.add_argument("--score", action="append", metavar="NAME", help=f"{meaning}: {describe_scores()}")


def _add_holdout_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--holdout", type=FRACTION_OPTION, metavar="FRACTION",
                   help="also choose each operating point's threshold on the other rows and report the FPR and TPR "
                        "it reaches on this share of them (seeded, stratified by label)")


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
    add_setting_arguments(p, ScoreConfig, required=("victim",))
    add_setting_arguments(p, RunOptions)
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
    p.add_argument("--alpha", type=ALPHA_FOR_EVALUATION,
                   help=f"evaluate lmem at this alpha instead of the store's: {LABEL_FREE_FORMS} | auto (chosen "
                        "with labels on a calibration split, reported on the rest)")
    p.add_argument("--calibration-fraction", type=FRACTION_OPTION, default=0.5, help="share of labelled rows for --alpha auto")
    _add_holdout_argument(p)
    _add_score_argument(p, "evaluate only this score (repeatable; default: every score the store holds)")
    _add_partial_argument(p)
    _add_strict_argument(p)
    p.set_defaults(func=cmd_evaluate)
    p = sub.add_parser("rescore", help="rewrite lmem at another alpha, or add a calibrated score, from what the "
                                       f"store holds (no image is read again); methods: {', '.join(METHODS)}")
    p.add_argument("store")
    p.add_argument("--method", default=DEFAULT_METHOD, choices=tuple(METHODS),
                   help="; ".join(f"{method.name}: {method.help}" for method in METHODS.values()))
    add_setting_arguments(p, RESCORE_OPTIONS)
    _add_strict_argument(p)
    p.set_defaults(func=cmd_rescore)
    p = sub.add_parser("dataset-test", help="was this set of images, as a whole, in the victim's training data? "
                                            "(one-sided test against held-out non-members, with a p-value)")
    p.add_argument("store")
    p.add_argument("--suspect", required=True, help="file of the suspect ids")
    recorded = ", ".join(name for name, known in SCORES.items() if known.has_reference)
    p.add_argument("--reference", help=f"file of held-out non-member ids (default for {recorded}: the reference "
                                       "ids it was calibrated on)")
    p.add_argument("--score", default="lcal", help="the score to test (lower = member): any the store holds, "
                                                   f"{describe_scores()}")
    p.add_argument("--bootstrap", type=COUNT, default=1000, help="bootstrap resamples for the effect size's interval")
    p.add_argument("--json", help="write the result here")
    _add_overwrite_argument(p, "--json file")
    _add_strict_argument(p)
    p.set_defaults(func=cmd_dataset_test)
    p = sub.add_parser("claims", help="which images were in the victim's training data? (a conformal p-value per "
                                      "image from held-out non-members; claims with the false-discovery rate "
                                      "controlled)")
    p.add_argument("store")
    p.add_argument("--reference", required=True, help="file of held-out non-member ids (never claimed)")
    p.add_argument("--suspect", help="file of the ids to test, e.g. the images you own (default: every scored image "
                                     "outside the reference)")
    p.add_argument("--score", default="lcal", help="the score to test (lower = member): any the store holds, "
                                                   f"{describe_scores()}")
    p.add_argument("--fdr", type=FRACTION_OPTION, default=DEFAULT_FDR,
                   help="the false-discovery rate: the expected share of false claims among the claims")
    p.add_argument("--procedure", default="bh", choices=tuple(PROCEDURES),
                   help="; ".join(f"{name}: {label}" for name, label in PROCEDURES.items())
                        + " (estimates the share of non-members; more claims when many images are members)")
    p.add_argument("--json", help="write the claims and every image's p-value here")
    _add_overwrite_argument(p, "--json file")
    _add_strict_argument(p)
    _add_partial_argument(p)
    p.set_defaults(func=cmd_claims)
    p = sub.add_parser("report", help="a self-contained HTML report with plots")
    p.add_argument("store")
    p.add_argument("--out", required=True, help="folder for index.html and its PNGs")
    _add_overwrite_argument(p, "report folder")
    p.add_argument("--members", help="file of member ids (default: the store's member column)")
    p.add_argument("--bootstrap", type=COUNT, default=200)
    _add_holdout_argument(p)
    _add_score_argument(p, "show only this score in the metrics and ROC (repeatable; default: every score)")
    _add_dataset_arguments(p, "the scored dataset, for thumbnails of the easiest and hardest images")
    _add_partial_argument(p)
    _add_strict_argument(p)
    p.set_defaults(func=cmd_report)
    p = sub.add_parser("calibrate", help="fix tau from known non-members for a target FPR (no member labels)")
    p.add_argument("store")
    p.add_argument("--nonmembers", required=True, help="file of ids known not to be members")
    p.add_argument("--fpr", type=FRACTION_OPTION, default=0.01)
    p.add_argument("--score", default="lmem", help="the score to threshold (lower = member; `memscore evaluate` "
                                                   f"lists a store's scores): {describe_scores()}")
    p.add_argument("--out", default="calibration.json")
    _add_overwrite_argument(p, "calibration file")
    _add_partial_argument(p)
    _add_strict_argument(p)
    p.set_defaults(func=cmd_calibrate)
    p = sub.add_parser("predict", help="write a member / non-member decision per image into the store")
    p.add_argument("store")
    p.add_argument("--tau", type=float)
    p.add_argument("--calibration", help="a file written by `memscore calibrate` (refused if the score changed since)")
    p.add_argument("--score", default="lmem", help="the score --tau applies to (a calibration names its own): "
                                                   f"{describe_scores()}")
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
    p = sub.add_parser("train-victim", help="train a pix2pix or diffusion victim on the member split")
    p.add_argument("data")
    p.add_argument("--members", help="file of member ids (default: every pair)")
    p.add_argument("--out", required=True)
    _add_recipe_arguments(p)
    p.add_argument("--checkpoint-every", type=COUNT, metavar="N",
                   help="pix2pix: also save the generator every N epochs; diffusion: save the state a rerun resumes "
                        "from every N epochs (default 10)")
    _add_overwrite_argument(p, "checkpoint or model folder")
    p.set_defaults(func=cmd_train_victim)
    p = sub.add_parser("shadows", help="shadow victims for LiRA and RMIA")
    shadows = p.add_subparsers(dest="shadows_command", required=True)
    p = shadows.add_parser("train", help="train K shadow victims, each on a seeded random half of a population, "
                                         "with the victim's recipe (resumable; one task per shadow)")
    p.add_argument("data")
    p.add_argument("--population", required=True, help="file of the ids the shadows' halves are drawn from")
    p.add_argument("--k", type=argument_type(int, EVEN_SHADOWS), required=True,
                   help="number of shadows, even: complementary halves put every id in exactly K/2 of them")
    p.add_argument("--out", required=True, help="folder for the shadows and their manifest (shadows.json)")
    _add_recipe_arguments(p)
    p.add_argument("--workers", type=COUNT, default=0,
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
