"""Tests for engine/report_data.py: the report's numbers, before any drawing, are `memscore.attack.evaluate`'s and
`memscore.metrics`' on the store's columns; without labels there are none, and a refusal is kept as its reason."""
from __future__ import annotations

import numpy as np

from memscore.attack import evaluate
from memscore.metrics import alpha_sweep, roc
from memscore.report_data import report_data
from stores_for_tests import synthetic_store


def test_the_numbers_are_the_engines(tmp_path):
    store = synthetic_store(tmp_path / "s.zarr", failed=(7, 33))
    data = report_data(store.path, n_boot=0, thumbnails=4)
    assert data.metrics == evaluate(store.path) and data.metrics_error is None
    member, ok = store.column("member"), store.column("status") == "ok"
    assert data.counts["members (scored)"] == int((ok & (member == 1)).sum()) and data.counts["failed (excluded)"] == 2
    np.testing.assert_array_equal(data.curves["lmem"].tpr, roc(store.column("lmem").astype(np.float64),
                                                                member == 1).tpr)
    alphas, aucs = data.sweep
    assert {data.alpha["value"], data.fit.alpha} <= set(alphas.tolist())
    np.testing.assert_array_equal(aucs, alpha_sweep(store.column("lrec").astype(np.float64),
                                                    store.column("ldiff").astype(np.float64), member == 1, alphas)[1])
    assert data.thresholds == {c: data.metrics[c]["balanced_accuracy_threshold"] for c in ("lrec", "lmem")}
    ldiff = store.column("ldiff")
    ranked = sorted(ldiff[ok])
    assert ldiff[data.easiest].tolist() == ranked[:4] and ldiff[data.hardest].tolist() == ranked[::-1][:4]


def test_without_labels_there_are_no_metrics_and_a_refusal_keeps_its_reason(tmp_path):
    unlabelled = report_data(synthetic_store(tmp_path / "u.zarr", labelled=False).path, n_boot=0)
    assert (unlabelled.metrics, unlabelled.metrics_error, unlabelled.curves, unlabelled.sweep) == (None, None, {}, None)
    assert unlabelled.thresholds == {"lrec": None, "lmem": None}
    store = synthetic_store(tmp_path / "s.zarr")
    members = tmp_path / "members.txt"
    members.write_text("".join(f"{i}\n" for i in store.column("id")))  # every row a member: no non-member to compare
    refused = report_data(store.path, members_file=str(members), n_boot=0)
    assert refused.metrics is None and refused.metrics_error
