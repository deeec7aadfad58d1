"""Per-image calibration against one global alpha, on finished stores with member labels and features (#16).

For each store: a seeded fraction of the labelled non-members becomes the reference (known non-members); lcal
is cross-fitted with each model (`memscore.calibration.calibrate_per_image`; the store is only read). Reported,
with stratified bootstrap CIs (`memscore.metrics.evaluate_scores`), for lrec, lmem (the store's own alpha), lcal
gaussian and lcal quantile: AUC and TPR at 10/1/0.1% FPR, on two row sets: `all` (every labelled row; reference
rows scored out of fold) and `held_out` (members and the non-members outside the reference). Then the dataset
test's median p-value against suspect-set size, members as suspects and held-out non-members as suspects, each
against the reference rows (`memscore.dataset_inference`), and the issue's targets (lcal TPR@1% >= 1.25 x lmem,
TPR@0.1% >= lrec, AUC >= lmem). Prints a table; writes bench/results/calibration.json.

    python bench/calibration_experiment.py runs/victim128.zarr runs/demo.zarr --reference-fraction 0.5
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from memscore.calibration import MODELLED, MODELS, calibrate_per_image
from memscore.dataset_inference import dataset_test, p_value_by_size
from memscore.metrics import evaluate_scores
from memscore.store import ScoreStore

RESULTS = Path(__file__).resolve().parent / "results"
FPRS = (0.1, 0.01, 0.001)
TARGET_TPR1_RATIO = 1.25


def reference_rows(member: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """A seeded `fraction` of the labelled non-members (member == 0)."""
    nonmembers = np.flatnonzero(member == 0)
    chosen = np.random.default_rng(seed).choice(nonmembers, int(round(fraction * nonmembers.size)), replace=False)
    return np.isin(np.arange(member.size), chosen)


def tpr(report: dict, target: float) -> float | None:
    return next(point["tpr"] for point in report["tpr_at_fpr"] if point["target_fpr"] == target)


def targets(metrics: dict[str, dict]) -> dict[str, dict]:
    """The issue's targets for each lcal model against lmem and lrec (None where a TPR was refused)."""
    found = {}
    for name in [name for name in metrics if name.startswith("lcal")]:
        lcal, lmem, lrec = metrics[name], metrics["lmem"], metrics["lrec"]
        checks = {"auc_not_below_lmem": lcal["auc"] >= lmem["auc"]}
        if None not in (tpr(lcal, 0.01), tpr(lmem, 0.01)):
            checks["tpr1_at_least_1.25x_lmem"] = tpr(lcal, 0.01) >= TARGET_TPR1_RATIO * tpr(lmem, 0.01)
        if None not in (tpr(lcal, 0.001), tpr(lrec, 0.001)):
            checks["tpr01_not_below_lrec"] = tpr(lcal, 0.001) >= tpr(lrec, 0.001)
        found[name] = checks
    return found


def experiment(path: str, fraction: float, folds: int, seed: int, n_boot: int, draws: int) -> dict:
    store = ScoreStore.open(path)
    store.require_readable()
    member = store.column("member").astype(np.int64)
    usable = (member >= 0) & (store.column("status") == "ok")
    member = np.where(usable, member, -1)
    if not (member == 1).any() or (member == 0).sum() < 2:
        raise SystemExit(f"{path}: needs labelled members and non-members (the store's member column)")
    reference = reference_rows(member, fraction, seed)
    if store.statistic != "lrec":
        raise SystemExit(f"{path} is built on {store.statistic}; this experiment reads lrec stores "
                         "(bench/diffusion_experiment.py covers ldenoise)")
    lrec, ldiff = store.column("lrec").astype(np.float64), store.column("ldiff").astype(np.float64)
    scores = {"lrec": lrec, "lmem": store.column("lmem").astype(np.float64)}
    calibrations = {}
    for model in MODELS:
        for modelled in MODELLED:  # lcal_MODEL describes lmem (the default), lcal_MODEL_raw plain Lrec
            name = f"lcal_{model}" + ("" if modelled == "lmem" else f"_{modelled}")
            started = time.perf_counter()
            result = calibrate_per_image(lrec, ldiff, store.column("features"), reference, model=model, folds=folds,
                                         seed=seed, alpha=store.alpha.value if modelled == "lmem" else 0.0)
            scores[name] = result.lcal
            calibrations[name] = {**result.record, "seconds": round(time.perf_counter() - started, 2)}
    held_out = (member == 0) & ~reference
    row_sets = {"all": member >= 0}  # reference rows are scored out of fold, so they count as non-members
    if held_out.any():
        row_sets["held_out"] = (member == 1) | held_out
    metrics = {rows: {name: evaluate_scores(values[keep], member[keep] == 1, fprs=FPRS, n_boot=n_boot,
                                            seed=seed).to_dict()
                      for name, values in scores.items()}
               for rows, keep in row_sets.items()}
    suspects = {"members": member == 1, **({"held_out_nonmembers": held_out} if held_out.any() else {})}
    dataset = {group: {name: {"test": dataset_test(values[rows], values[reference], n_boot=n_boot,
                                                   seed=seed).to_dict(),
                              "by_size": p_value_by_size(values[rows], values[reference], draws=draws,
                                                         seed=seed).to_dict()}
                       for name, values in scores.items()}
               for group, rows in suspects.items()}
    return {"store": str(path), "alpha": store.alpha.to_dict() if store.alpha else None,
            "n_members": int((member == 1).sum()), "n_nonmembers": int((member == 0).sum()),
            "n_reference": int(reference.sum()), "reference_fraction": fraction, "folds": folds, "seed": seed,
            "n_boot": n_boot, "calibration": calibrations, "metrics": metrics,
            "targets": {rows: targets(found) for rows, found in metrics.items()}, "dataset_test": dataset}


def _interval(value: float | None, ci: list | tuple | None) -> str:
    if value is None:
        return "refused"
    return f"{value:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def table(result: dict) -> str:
    lines = [f"{result['store']}: {result['n_members']} members, {result['n_nonmembers']} non-members, "
             f"{result['n_reference']} of them the reference ({result['folds']} folds, seed {result['seed']})"]
    for rows, by_score in result["metrics"].items():
        lines.append(f"  rows: {rows}")
        lines.append(f"    {'score':<22}{'AUC':<24}" + "".join(f"{'TPR@' + format(f, 'g'):<24}" for f in FPRS))
        for name, report in by_score.items():
            cells = [_interval(report["auc"], report["auc_ci"])]
            cells += [_interval(point["tpr"], point["ci"]) for point in report["tpr_at_fpr"]]
            lines.append(f"    {name:<22}" + "".join(f"{cell:<24}" for cell in cells))
        lines.append(f"    targets: {json.dumps(result['targets'][rows])}")
    for group, by_score in result["dataset_test"].items():
        lines.append(f"  dataset test, suspects = {group} (median p-value by suspect-set size)")
        for name, found in by_score.items():
            curve = found["by_size"]
            shown = ", ".join(f"{size}: {p:.2g}" for size, p in zip(curve["sizes"], curve["median_p"]))
            lines.append(f"    {name:<22}p {found['test']['p_value']:.3g}, AUC {found['test']['auc']:.3f}; "
                         f"smallest n with p < 0.01: {curve['smallest_size']}; {shown}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("stores", nargs="+", help="finished stores with member labels and a features column")
    parser.add_argument("--reference-fraction", type=float, default=0.5,
                        help="fraction of the labelled non-members used as the known-non-member reference (1: all "
                             "of them, each scored out of fold)")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for the CIs")
    parser.add_argument("--draws", type=int, default=100, help="random suspect subsets per size for the p-value curve")
    parser.add_argument("--out", type=Path, default=RESULTS / "calibration.json")
    args = parser.parse_args()
    if not 0.0 < args.reference_fraction <= 1.0:
        parser.error(f"--reference-fraction must be in (0, 1], got {args.reference_fraction}")
    results = []
    for path in args.stores:
        result = experiment(path, args.reference_fraction, args.folds, args.seed, args.n_boot, args.draws)
        print(table(result), flush=True)
        results.append(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"command": "python " + " ".join(sys.argv), "stores": results}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
