"""Evidence for shadow-calibrated attacks (issue #18): LiRA and RMIA against Lrec and Lmem, as K grows.

Reads a store scored with shadows (`lrec`, `ldiff`, `lrec_shadow` [n, K], `in_shadow` [n, K]), the victim's
members file (non-members for evaluation: every other id of the store, never in the victim's training data)
and the shadows folder (training time per shadow). For K = 1, 2, 4, ... up to the shadows available, the
first K shadows are used (whole complementary pairs, so every id keeps K/2 IN and K/2 OUT), and the other
disjoint blocks of K shadows give the spread across shadow draws. Reports AUC and TPR at 10/1/0.1% FPR with
stratified bootstrap CIs (memscore.metrics.evaluate_scores) for lrec, lmem (fitted alpha), any extra store
column, LiRA online/offline with per-image and fixed variance, and RMIA online/offline; also how Gaussian
the per-image shadow statistics are under each transform, and LiRA under each transform at the largest K.
Writes a table to stdout, `bench/results/shadows.json` and `bench/results/shadows_tpr_vs_k.png`.

    python bench/shadows_experiment.py --store runs/facades_shadows.zarr --members runs/victim_members.txt \
        --shadows runs/shadows --victim runs/victim.pth
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from memscore.alpha import fit_alpha, membership_error  # noqa: E402
from memscore.data import read_id_list  # noqa: E402
from memscore.likelihood_ratio import TRANSFORMS, ShadowScores, lira, normality, rmia  # noqa: E402
from memscore.metrics import evaluate_scores, tpr_at_fpr  # noqa: E402
from memscore.store import ScoreStore  # noqa: E402

RESULTS = ROOT / "bench" / "results"
FPRS = (0.1, 0.01, 0.001)
ShadowMethod = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]
LIRA_VARIANTS = {"lira_online": {"online": True}, "lira_online_fixed": {"online": True, "fixed_variance": True},
                 "lira_offline": {"online": False}, "lira_offline_fixed": {"online": False, "fixed_variance": True}}


def _method(function: Callable[..., ShadowScores], **options) -> ShadowMethod:
    """(target, shadow, in_shadow) -> scores of `function` with `options`."""
    return lambda target, shadow, in_shadow: function(target, shadow, in_shadow, **options).scores


SHADOW_METHODS: dict[str, ShadowMethod] = {
    **{name: _method(lira, **options) for name, options in LIRA_VARIANTS.items()},
    "rmia_online": _method(rmia, online=True),
    "rmia_offline": _method(rmia, online=False),
}


def k_values(k_max: int) -> list[int]:
    """1, 2, 4, ... below k_max, and k_max itself."""
    found = [k for k in (2 ** p for p in range(k_max.bit_length())) if k < k_max]
    return found + [k_max]


def shadow_blocks(k: int, k_max: int) -> list[list[int]]:
    """Disjoint blocks of k consecutive shadows (whole complementary pairs when k is even); the first is reported."""
    return [list(range(start, start + k)) for start in range(0, k_max - k + 1, k)]


def _report(scores: np.ndarray, member: np.ndarray, n_boot: int, seed: int) -> dict:
    """evaluate_scores as a dict, or why the score cannot be evaluated (e.g. every row NaN)."""
    try:
        return evaluate_scores(scores, member, fprs=FPRS, n_boot=n_boot, seed=seed).to_dict()
    except ValueError as error:
        return {"skipped": str(error)}


def _auc_and_tpr_at_1pct(scores: np.ndarray, member: np.ndarray) -> dict:
    report = _report(scores, member, 0, 0)
    if "skipped" in report:
        return report
    return {"auc": report["auc"], "tpr_at_1pct": _tpr_in(report, 0.01)}


def _tpr_in(report: dict, fpr: float) -> float | None:
    """The TPR a report dict gives at `fpr` (None when refused)."""
    return next(point["tpr"] for point in report["tpr_at_fpr"] if point["target_fpr"] == fpr)


def _tpr_at_1pct(scores: np.ndarray, member: np.ndarray) -> float | None:
    try:
        return tpr_at_fpr(scores, member, 0.01).tpr
    except ValueError:
        return None


def run_experiment(lrec: np.ndarray, ldiff: np.ndarray, lrec_shadow: np.ndarray, in_shadow: np.ndarray,
                   member: np.ndarray, *, extra: dict[str, np.ndarray] | None = None, n_boot: int = 1000,
                   seed: int = 0) -> dict:
    """Every metric of the experiment from arrays (no I/O): baselines, shadow methods per K, transforms."""
    k_max = lrec_shadow.shape[1]
    alpha = fit_alpha(lrec, ldiff, "ols").alpha
    baselines = {"lrec": lrec, f"lmem_fit (alpha {alpha:.3f})": membership_error(lrec, ldiff, alpha), **(extra or {})}
    results = {"baselines": {name: _report(scores, member, n_boot, seed) for name, scores in baselines.items()},
               "shadow_methods": {}}
    for name, method in SHADOW_METHODS.items():
        per_k = {}
        for k in k_values(k_max):
            blocks = shadow_blocks(k, k_max)
            scores = [method(lrec, lrec_shadow[:, b], in_shadow[:, b]) for b in blocks]
            per_k[str(k)] = {"shadows": blocks[0], "report": _report(scores[0], member, n_boot, seed),
                             "tpr_at_1pct_per_block": [_tpr_at_1pct(s, member) for s in scores]}
        results["shadow_methods"][name] = per_k
    results["normality"] = {t: normality(lrec_shadow, in_shadow, t) for t in TRANSFORMS}
    if k_max >= 2:
        results["transforms_at_k_max"] = {
            t: {name: _auc_and_tpr_at_1pct(_method(lira, transform=t, **options)(lrec, lrec_shadow, in_shadow), member)
                for name, options in LIRA_VARIANTS.items()} for t in TRANSFORMS}
    return results


def _cell(report: dict, fpr: float | None = None) -> str:
    if "skipped" in report:
        return "-"
    if fpr is None:
        value, ci = report["auc"], report.get("auc_ci")
    else:
        point = next(p for p in report["tpr_at_fpr"] if p["target_fpr"] == fpr)
        if point["refused"]:
            return "refused"
        value, ci = point["tpr"], point.get("ci")
    return f"{value:.3f}" + (f" [{ci[0]:.2f},{ci[1]:.2f}]" if ci else "")


def _number(value: float | None) -> str:
    return "refused" if value is None else f"{value:.3f}"


def table(results: dict) -> str:
    """The results as a fixed-width text table: one row per score and K."""
    rows = [("score", "K", "AUC", "TPR@10%", "TPR@1%", "TPR@0.1%")]
    entries = [(name, "-", report) for name, report in results["baselines"].items()]
    entries += [(name, k, entry["report"]) for name, per_k in results["shadow_methods"].items()
                for k, entry in per_k.items()]
    for name, k, report in entries:
        rows.append((name, k, _cell(report), *(_cell(report, f) for f in FPRS)))
    widths = [max(len(str(row[c])) for row in rows) for c in range(len(rows[0]))]
    return "\n".join("  ".join(str(v).ljust(w) for v, w in zip(row, widths)) for row in rows)


def plot(results: dict, path: Path) -> None:
    """TPR at 1% FPR against K per shadow method (range over disjoint blocks of shadows), baselines as lines."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, per_k in results["shadow_methods"].items():
        ks, tprs, lows, highs = [], [], [], []
        for k, entry in per_k.items():
            per_block = [v for v in entry["tpr_at_1pct_per_block"] if v is not None]
            if not per_block:
                continue
            ks.append(int(k))
            tprs.append(per_block[0])
            lows.append(per_block[0] - min(per_block))
            highs.append(max(per_block) - per_block[0])
        if ks:
            ax.errorbar(ks, tprs, yerr=[lows, highs], marker="o", capsize=3, label=name)
    for (name, report), style in zip(results["baselines"].items(), (":", "--", "-.", (0, (1, 4)))):
        tpr = None if "skipped" in report else _tpr_in(report, 0.01)
        if tpr is not None:
            ax.axhline(tpr, ls=style, c="grey", label=name)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("shadow victims K")
    ax.set_ylabel("TPR at 1% FPR")
    ax.set_title("Shadow-calibrated membership scores (bars: range over disjoint shadow blocks)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", required=True, help="a finished store scored with --shadows")
    parser.add_argument("--members", help="the victim's member ids (default: the store's member column)")
    parser.add_argument("--shadows", help="the shadows folder (for the training time per shadow)")
    parser.add_argument("--victim", help="the victim checkpoint (recorded)")
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "datasets" / "facades"), help="recorded")
    parser.add_argument("--column", action="append", default=[], help="another store score to compare (repeatable)")
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(RESULTS / "shadows.json"))
    parser.add_argument("--plot", default=str(RESULTS / "shadows_tpr_vs_k.png"))
    args = parser.parse_args(argv)
    store = ScoreStore.open(args.store)
    store.require_readable()
    if store.statistic != "lrec":
        raise SystemExit(f"{args.store} is built on {store.statistic}; this experiment reads lrec stores "
                         "(bench/diffusion_experiment.py covers ldenoise)")
    ids = store.column("id")
    member = np.isin(ids, sorted(read_id_list(args.members).ids)) if args.members else store.column("member") == 1
    lrec, ldiff = store.column("lrec").astype(np.float64), store.column("ldiff").astype(np.float64)
    results = run_experiment(lrec, ldiff, store.column("lrec_shadow").astype(np.float64), store.column("in_shadow"),
                             member, extra={c: store.column(c) for c in args.column}, n_boot=args.bootstrap,
                             seed=args.seed)
    training = None
    if args.shadows:
        manifest = json.loads((Path(args.shadows) / "shadows.json").read_text())
        seconds = [s["seconds"] for s in manifest["shadows"] if s.get("seconds") is not None]
        pair_epochs = manifest["population"]["n"] // 2 * manifest["recipe"]["epochs"]  # each shadow: half the ids
        training = {"recipe": manifest["recipe"], "seed": manifest["seed"], "population_n": manifest["population"]["n"],
                    "seconds_per_shadow": seconds, "mean_seconds": float(np.mean(seconds)) if seconds else None,
                    "ms_per_pair_epoch": 1000 * float(np.mean(seconds)) / pair_epochs if seconds else None}
    results["inputs"] = {"store": str(args.store), "store_lrec": store.fingerprint("lrec"), "victim": args.victim,
                         "data": args.data, "members_file": args.members, "n_members": int(member.sum()),
                         "n_nonmembers": int((~member).sum()), "k_max": int(store.column("in_shadow").shape[1]),
                         "shadow_training": training, "bootstrap": args.bootstrap, "seed": args.seed}
    print(table(results))
    print("\nnormality of per-image shadow statistics (KS of leave-one-out t CDF values from uniform; 0 = Gaussian):")
    for transform, found in results["normality"].items():
        print(f"  {transform:6s} in {found['ks_in']:.4f}  out {found['ks_out']:.4f}  low-tail ratio in "
              f"{found['low_tail_in']:.2f} out {found['low_tail_out']:.2f}  spread vs level (Spearman) in "
              f"{found['spread_vs_level_in']:+.2f} out {found['spread_vs_level_out']:+.2f}")
    for transform, per_method in results.get("transforms_at_k_max", {}).items():
        cells = "  ".join(f"{name} {found['auc']:.3f}/{_number(found['tpr_at_1pct'])}"
                          for name, found in per_method.items() if "skipped" not in found)
        print(f"  K={results['inputs']['k_max']} {transform:6s} AUC/TPR@1%: {cells}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    plot(results, Path(args.plot))
    print(f"\nwritten: {args.out}, {args.plot}")
    return results


if __name__ == "__main__":
    main()
