"""Claims a data owner can defend, measured on a scored store whose membership is known: the blind baseline
(membership from the images alone), thresholds chosen on one half and measured on the other, and the member
images claimable per score at a false-discovery rate of 5% and 1% (Benjamini-Hochberg and Storey), with the
false claims counted against the true labels.

    python bench/claims_experiment.py STORE --reference REF_IDS [--suspect IDS] [--name claims]
    # -> bench/results/NAME.json

The reference ids are held-out known non-members (the claims' conformal reference; use the same file as lcal's
reference). Every other labelled image is tested, or only the `--suspect` ids (a data owner's own images):
members should be claimed, the tested non-members not.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import write_results  # noqa: E402
from memscore.attack import evaluate  # noqa: E402
from memscore.claims import claims_store  # noqa: E402
from memscore.data import read_id_list  # noqa: E402
from memscore.store import ScoreStore  # noqa: E402

FDRS = (0.05, 0.01)
PROCEDURES = ("bh", "storey")


def claim_counts(store: str, reference: str, score: str, suspect: str | None) -> list[dict]:
    """For each FDR and procedure: images claimed, how many are truly members, the realised false-discovery
    proportion, and the expected number of false claims the procedure states."""
    opened = ScoreStore.open(store)
    member_of = dict(zip(opened.column("id").tolist(), opened.column("member").tolist()))
    suspects = set(read_id_list(suspect).ids) if suspect else set()
    rows = []
    for fdr in FDRS:
        for procedure in PROCEDURES:
            result = claims_store(store, reference, score=score, fdr=fdr, procedure=procedure,
                                  suspect_file=suspect)
            claimed = result["claimed_ids"]
            false = sum(member_of[i] != 1 for i in claimed)
            tested = [image["id"] for image in result["images"] if image["p_value"] is not None
                      and not image["reference"] and (suspect is None or image["id"] in suspects)]
            tested_members = sum(member_of[i] == 1 for i in tested)
            rows.append({"score": score, "fdr": fdr, "procedure": procedure, "tested": len(tested),
                         "claimed": len(claimed),
                         "false_claims": false, "fdp": false / len(claimed) if claimed else 0.0,
                         "members_tested": tested_members,
                         "power": (len(claimed) - false) / tested_members if tested_members else None,
                         "expected_false_claims": result["claims"]["expected_false_claims"]})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("store")
    parser.add_argument("--reference", required=True, help="held-out known non-member ids (the claims' reference)")
    parser.add_argument("--suspect", help="test only these ids (default: every labelled image outside the reference)")
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--holdout", type=float, default=0.5)
    parser.add_argument("--name", default="claims", help="result file name under bench/results/")
    args = parser.parse_args()
    metrics = evaluate(args.store, n_boot=args.bootstrap, holdout=args.holdout)
    blind = metrics["blind_baseline"]
    print(f"blind baseline: AUC {blind['metrics']['auc']:.3f} {blind['metrics'].get('auc_ci')}"
          if blind["available"] else f"blind baseline unavailable: {blind['reason']}")
    if blind.get("warning"):
        print(f"WARNING: {blind['warning']}")
    counts = []
    print("| score | AUC | held-out FPR at 1% (chosen) | FDR | procedure | tested | claimed | false | FDP | power |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for score in metrics["scores"]:
        held = next((p for p in (metrics["holdout"] or {}).get("scores", {}).get(score, [])
                     if p["target_fpr"] == 0.01), None)
        held_text = "refused" if not held or held.get("refused") else f"{held['fpr']:.3f} ({held['chosen_fpr']:.3f})"
        for row in claim_counts(args.store, args.reference, score, args.suspect):
            counts.append(row)
            print(f"| {score} | {metrics[score]['auc']:.3f} | {held_text} | {row['fdr']:.0%} | {row['procedure']} | {row['tested']} | "
                  f"{row['claimed']} | {row['false_claims']} | {row['fdp']:.3f} | "
                  f"{row['power'] if row['power'] is None else round(row['power'], 3)} |")
    path = write_results(args.name, {"store": args.store, "reference": args.reference, "suspect": args.suspect,
                                     "evaluate": metrics,
                                     "claims": counts})
    print(f"written to {path}")


if __name__ == "__main__":
    main()
