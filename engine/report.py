"""The attack report of a finished score store: one HTML page and the PNG figures beside it.

The numbers come from `memscore.report_data` (whose metrics are `memscore.attack.evaluate`'s, so the page and
`memscore evaluate` agree); this module only draws them (matplotlib's Agg canvas) and writes the page.
"""
from __future__ import annotations

import functools
import html
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .alpha import AlphaFit
from .data import Dataset, Pair
from .images import ImageError, load_rgb
from .metrics import CUTOFF_RULE, DIRECTION, RocCurve
from .outputs import build_folder
from .report_data import ReportData, report_data
from .score_names import SCORES, score_label
from .store import ScoreStore

PALETTE = ("#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#F0E442", "#0072B2", "#D55E00", "#000000")
"""Okabe-Ito colours, one per score in the order the store lists them."""
# (label value, legend name, colour): Okabe-Ito colours, distinguishable with colour-blindness.
GROUPS = ((0, "non-members", "#0072B2"), (1, "members", "#D55E00"), (-1, "unlabelled", "#555555"))
SCATTER_MAX_POINTS = 20_000  # beyond this the scatter shows a fixed-seed random sample
DPI = 110
NO_LABELS = ("Metrics need membership labels: this store has none (member = -1 everywhere). Pass "
             "<code>members_file</code> (one member id per line), or score with <code>--members</code>.")


# ---------------------------------------------------------------- figures


def _save(figure: Figure, path: Path) -> str:
    FigureCanvasAgg(figure)
    figure.savefig(path, dpi=DPI)
    return path.name


def _groups(labels: np.ndarray) -> list[tuple[np.ndarray, str, str]]:
    """(row mask, name, colour) for each membership class present; unlabelled rows form their own."""
    return [(labels == value, name, colour) for value, name, colour in GROUPS if (labels == value).any()]


def _roc_figure(curves: dict[str, RocCurve], aucs: dict[str, float], fprs: list[float], path: Path) -> str:
    figure = Figure(figsize=(6.4, 5.6), layout="constrained")
    ax = figure.add_subplot()
    first = next(iter(curves.values()))
    n_nonmembers = first.n_nonmembers
    floor = 1.0 / n_nonmembers
    for colour, (column, curve) in zip(PALETTE * 2, curves.items()):
        ax.plot(curve.fpr[1:], curve.tpr[1:], color=colour, lw=2,
                label=f"{score_label(column)}, AUC {aucs[column]:.4f}")
    ax.plot([floor, 1], [floor, 1], color="black", ls=":", lw=1, label="chance (TPR = FPR)")
    for target in fprs:
        if target >= floor:
            ax.axvline(target, color="#999999", lw=0.8, ls="--")
    ax.set_xscale("log", nonpositive="mask")
    ax.set_yscale("log", nonpositive="mask")
    ax.set_xlim(floor, 1)
    ax.set_ylim(min(floor, 1.0 / first.n_members), 1.05)
    ax.set_xlabel(f"false positive rate (log; floor 1/{n_nonmembers} non-members)")
    ax.set_ylabel("true positive rate (log)")
    ax.set_title("ROC, log-log")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(loc="lower right", fontsize=9)
    return _save(figure, path)


def _histogram_figure(scores: dict[str, np.ndarray], labels: np.ndarray, thresholds: dict[str, float | None],
                      path: Path) -> str:
    figure = Figure(figsize=(12, 4.4), layout="constrained")
    for ax, (column, values) in zip(figure.subplots(1, 2), scores.items()):
        finite = np.isfinite(values)
        n_bins = int(np.clip(round(2 * finite.sum() ** (1 / 3)), 10, 80))  # Rice rule
        edges = np.histogram_bin_edges(values[finite], bins=n_bins)
        scored, classes = values[finite], labels[finite]
        for rows, name, colour in _groups(classes):  # the classes present among the scored rows
            kept = scored[rows]
            ax.hist(kept, bins=edges, density=True, histtype="stepfilled", alpha=0.35, color=colour)
            ax.hist(kept, bins=edges, density=True, histtype="step", lw=1.5, color=colour,
                    label=f"{name} ({kept.size})")
        if thresholds.get(column) is not None:
            ax.axvline(thresholds[column], color="black", ls="--", lw=1.2,
                       label=f"best balanced-accuracy threshold {thresholds[column]:.4g}")
        ax.set_xlabel(f"{score_label(column)}  (lower = member)")
        ax.set_ylabel("density")
        ax.set_title(f"{column}: members vs non-members" if len(_groups(classes)) > 1 else f"{column}: all scored images")
        ax.legend(fontsize=9)
    return _save(figure, path)


def _scatter_figure(raw: np.ndarray, statistic: str, ldiff: np.ndarray, labels: np.ndarray, fit: AlphaFit,
                    boundary: tuple[float, float] | None, path: Path) -> tuple[str, int]:
    """The statistic (`raw`, named `statistic`) against Ldiff by class, the label-free fitted line and, with labels, the decision line
    Lmem = tau (store alpha, best balanced-accuracy tau). Returns (file name, points drawn)."""
    finite = np.flatnonzero(np.isfinite(raw) & np.isfinite(ldiff))
    if finite.size > SCATTER_MAX_POINTS:
        finite = np.sort(np.random.default_rng(0).choice(finite, SCATTER_MAX_POINTS, replace=False))
    x, y, classes = ldiff[finite], raw[finite], labels[finite]
    figure = Figure(figsize=(7.2, 5.6), layout="constrained")
    ax = figure.add_subplot()
    for rows, name, colour in _groups(classes):
        ax.scatter(x[rows], y[rows], s=10, alpha=0.55, color=colour, edgecolors="none", label=name, rasterized=True)
    line_x = np.linspace(x.min(), x.max(), 2)
    r2 = "" if fit.r2 is None else f", R² {fit.r2:.2f}"
    ax.plot(line_x, fit.intercept + fit.alpha * line_x, color="black", lw=2,
            label=f"label-free OLS fit: slope alpha = {fit.alpha:.4g}{r2}")
    if boundary is not None:
        alpha, tau = boundary
        ax.plot(line_x, tau + alpha * line_x, color="black", ls="--", lw=1.5,
                label=f"Lmem = {tau:.4g} (alpha {alpha:.4g}): members below")
    ax.set_xlabel("Ldiff (difficulty: held-out error of the linear predictor)")
    ax.set_ylabel(score_label(statistic))
    ax.set_title(f"{_short(statistic)} vs difficulty")
    ax.legend(fontsize=9)
    return _save(figure, path), int(finite.size)


def _short(statistic: str) -> str:
    """How text names the store's statistic: Lrec, Ldenoise."""
    return score_label(statistic).split(" ")[0]


def _alpha_figure(alphas: np.ndarray, aucs: np.ndarray, marks: list[tuple[float, str, str]], statistic: str,
                  path: Path) -> str:
    figure = Figure(figsize=(7.2, 4.6), layout="constrained")
    ax = figure.add_subplot()
    ax.plot(alphas, aucs, color="#009E73", lw=2, label=f"AUC of {_short(statistic)} - alpha * Ldiff")
    for value, name, style in marks:
        auc = float(np.interp(value, alphas, aucs))
        ax.axvline(value, color="black", ls=style, lw=1.2, label=f"{name}: alpha {value:.4g}, AUC {auc:.4f}")
    best = int(np.argmax(aucs))
    ax.plot(alphas[best], aucs[best], "o", color="#D55E00",
            label=f"best with these labels (hindsight): alpha {alphas[best]:.4g}, AUC {aucs[best]:.4f}")
    ax.axhline(0.5, color="#999999", ls=":", lw=1, label="chance")
    ax.set_xlabel("alpha")
    ax.set_ylabel("ROC-AUC")
    ax.set_title(f"Attack AUC as a function of alpha (alpha = 0 is {_short(statistic)} alone)")
    ax.legend(fontsize=8)
    return _save(figure, path)


def _thumbnail_figure(rows: list[tuple[str, np.ndarray]], ids: np.ndarray, ldiff: np.ndarray, labels: np.ndarray,
                      pairs: dict[str, Pair], path: Path) -> str:
    """One row per (title, row indices): each image's target, its id, Ldiff and class."""
    k = len(rows[0][1])
    figure = Figure(figsize=(1.75 * k + 0.8, 2.3 * len(rows)), layout="constrained")
    class_name = {value: name.rstrip("s") for value, name, _ in GROUPS}
    for axes, (title, indices) in zip(figure.subplots(len(rows), k, squeeze=False), rows):
        axes[0].set_ylabel(title, fontsize=10)
        for ax, index in zip(axes, indices):
            image_id = str(ids[index])
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{image_id}\nLdiff {ldiff[index]:.4f}, {class_name[int(labels[index])]}", fontsize=8)
            pair = pairs.get(image_id)
            try:
                if pair is None:
                    raise ImageError(image_id, "not in the dataset")
                ax.imshow(load_rgb(pair.target_path, pair.target_half))
            except ImageError as error:
                ax.text(0.5, 0.5, error.problem, ha="center", va="center", wrap=True, fontsize=7,
                        transform=ax.transAxes)
    return _save(figure, path)


def _find_pairs(dataset: Dataset, wanted: set[str]) -> dict[str, Pair]:
    """The dataset's pairs for `wanted` ids, in one pass that stops once all are found."""
    found: dict[str, Pair] = {}
    for pair in dataset.pairs():
        if pair.id in wanted:
            found[pair.id] = pair
            if len(found) == len(wanted):
                break
    return found


# ---------------------------------------------------------------- HTML pieces

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; max-width: 1180px;
       margin: 1.5em auto; padding: 0 1em; color: #1a1a1a; line-height: 1.45; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 0.6em 0; } th, td { border: 1px solid #ccc; padding: 0.3em 0.7em;
       text-align: left; vertical-align: top; } th { background: #f3f3f3; }
td small { color: #555; } .refused { color: #a40000; font-weight: 600; }
.note { background: #fff7e0; border-left: 4px solid #e0a800; padding: 0.5em 0.9em; }
.rule { background: #eef5fb; border-left: 4px solid #0072B2; padding: 0.5em 0.9em; }
figure { margin: 1em 0; } img { max-width: 100%; border: 1px solid #ddd; } figcaption { color: #444; font-size: 0.93em; }
code { background: #f3f3f3; padding: 0 0.25em; }
"""


def _esc(value: Any) -> str:
    return html.escape(value if isinstance(value, str) else json.dumps(value))


def _table(header: list[str] | None, rows: list[list[str]], cell_ids: list[list[str]] | None = None) -> str:
    """A table of already-escaped cells; `cell_ids` names cells (empty string: no id)."""
    head = "<tr>" + "".join(f"<th>{h}</th>" for h in header) + "</tr>" if header else ""
    body = []
    for r, row in enumerate(rows):
        cells = []
        for c, cell in enumerate(row):
            tag = "th" if c == 0 else "td"
            name = cell_ids[r][c] if cell_ids else ""
            cells.append(f'<{tag} id="{name}">{cell}</{tag}>' if name else f"<{tag}>{cell}</{tag}>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table>{head}{''.join(body)}</table>"


def _figure(name: str, caption: str) -> str:
    return f'<figure><img src="{_esc(name)}" alt="{_esc(caption)}"><figcaption>{caption}</figcaption></figure>'


def _note(text: str) -> str:
    return f'<p class="note">{text}</p>'


def _ci(interval: list[float] | None) -> str:
    return f" <small>[{interval[0]:.4f}, {interval[1]:.4f}]</small>" if interval else ""


def _threshold(value: float | None) -> str:
    return "−∞ (no image called a member)" if value is None else f"{value:.5g}"


def _exact(interval: list[float]) -> str:
    return f"exact [{interval[0]:.4f}, {interval[1]:.4f}]"


def _tpr_cell(point: dict, n_members: int, n_nonmembers: int) -> str:
    """TPR (bootstrap interval), then its count and exact interval, the achieved FPR's, and the threshold."""
    if point["refused"]:
        return _refused(point["refused"])
    return (f"{point['tpr']:.4f}{_ci(point['ci'])}<br><small>{point['true_positives']}/{n_members} members, "
            f"{_exact(point['tpr_exact_ci'])}<br>achieved FPR {point['achieved_fpr']:.4f} "
            f"({point['false_positives']}/{n_nonmembers}, {_exact(point['fpr_exact_ci'])}), "
            f"threshold {_threshold(point['threshold'])}</small>")


def _metric_table(metrics: dict[str, dict]) -> str:
    """Rows: AUC, balanced accuracy, TPR at each FPR; a column per score (the statistic, lmem, then derived ones).
    Cells carry ids such as `lmem-auc`, `lrec-ba`, `lcal-tpr-0.01`."""
    names = metrics["scores"]
    lrec = metrics[names[0]]
    rows = [["ROC-AUC"] + [f"{metrics[c]['auc']:.4f}{_ci(metrics[c]['auc_ci'])}" for c in names],
            ["balanced accuracy (best threshold)"]
            + [f"{metrics[c]['balanced_accuracy']:.4f}{_ci(metrics[c]['balanced_accuracy_ci'])}<br><small>threshold "
               f"{_threshold(metrics[c]['balanced_accuracy_threshold'])}</small>" for c in names]]
    ids = [[""] + [f"{c}-auc" for c in names], [""] + [f"{c}-ba" for c in names]]
    for i, point in enumerate(lrec["tpr_at_fpr"]):
        target = point["target_fpr"]
        rows.append([f"TPR at FPR {target * 100:g}%"] + [
            _tpr_cell(metrics[c]["tpr_at_fpr"][i], metrics[c]["n_members"], metrics[c]["n_nonmembers"]) for c in names])
        ids.append([""] + [f"{c}-tpr-{target:g}" for c in names])
    ci = (f"Brackets: {lrec['ci_level'] * 100:g}% stratified bootstrap intervals, {lrec['n_boot']} resamples "
          f"(seed {lrec['seed']})." if lrec["n_boot"] else "No bootstrap intervals (n_boot = 0).")
    ci += (f" 'exact': {lrec['ci_level'] * 100:g}% Clopper-Pearson (exact binomial) intervals of the TPR and the "
           "achieved FPR from their counts, at the threshold taken as fixed.")
    return (_table(["metric", *[score_label(c) for c in names]], rows, ids)
            + f"<p><small>{_esc(ci)} {lrec['n_members']} members and {lrec['n_nonmembers']} non-members; "
              f"{lrec['n_excluded_nan']} labelled rows without a score (failed or pending) excluded.</small></p>")


def _refused(why: str) -> str:
    return f'<span class="refused">refused</span><br><small>{_esc(why)}</small>'


def _held_out_cell(point: dict) -> str:
    if point["refused"]:
        return _refused(point["refused"])
    return (f"held-out FPR {point['fpr']:.4f} <small>({point['false_positives']}/{point['n_nonmembers']}, "
            f"{_exact(point['fpr_exact_ci'])})</small><br>held-out TPR {point['tpr']:.4f} <small>"
            f"({point['true_positives']}/{point['n_members']}, {_exact(point['tpr_exact_ci'])})</small><br><small>"
            f"chosen FPR {point['chosen_fpr']:.4f}, threshold {_threshold(point['threshold'])}</small>")


def _held_out_table(record: dict[str, Any]) -> str:
    """Per target FPR and score, the FPR chosen on one part and the FPR and TPR reached on the held-out part
    (cells `NAME-holdout-TARGET`)."""
    names = list(record["scores"])
    rows, ids = [], []
    for i, point in enumerate(record["scores"][names[0]]):
        rows.append([f"FPR {point['target_fpr'] * 100:g}%"] + [_held_out_cell(record["scores"][c][i]) for c in names])
        ids.append([""] + [f"{c}-holdout-{point['target_fpr']:g}" for c in names])
    return (f"<p>{_esc(record['rule'])}: {record['n_choosing']} rows choose, {record['n_held_out']} held out "
            f"({record['fraction']:g}, stratified by label, seed {record['seed']}). The held-out rates are what a "
            "threshold set in advance reaches; their exact intervals hold since those rows did not set it.</p>"
            + _table(["target", *[score_label(c) for c in names]], rows, ids))


def _blind_section(record: dict[str, Any]) -> str:
    """The blind baseline (`memscore.blind`): its AUC and TPR at 1% FPR, its warning, and each attack score's AUC
    within quintiles of the blind score (cells `blind-auc`, `blind-tpr-0.01`, `NAME-stratum-K`)."""
    if not record["available"]:
        return _note(f'<span id="blind-unavailable">{_esc(record["reason"])}</span>')
    metrics = record["metrics"]
    rows = [["ROC-AUC", f"{metrics['auc']:.4f}{_ci(metrics['auc_ci'])}"]]
    ids = [["", "blind-auc"]]
    for point in metrics["tpr_at_fpr"]:
        rows.append([f"TPR at FPR {point['target_fpr'] * 100:g}%",
                     _tpr_cell(point, metrics["n_members"], metrics["n_nonmembers"])])
        ids.append(["", f"blind-tpr-{point['target_fpr']:g}"])
    verdict = (_note(f'<b id="blind-warning">Warning:</b> {_esc(record["warning"])}.') if record["warning"] else
               '<p id="blind-fair">The AUC interval covers 0.5 (or lies below it): no sign that members and '
               "non-members differ as images.</p>")
    names = list(record["strata"])
    strata_rows, strata_ids = [], []
    for k, stratum in enumerate(record["strata"][names[0]] if names else []):
        low, high = stratum["blind_range"]
        strata_rows.append([f"{stratum['stratum']} <small>(blind score {low:.3g} to {high:.3g}; "
                            f"{stratum['n_members']} members, {stratum['n_nonmembers']} non-members)</small>"]
                           + [_auc_text(record["strata"][c][k]["auc"]) for c in names])
        strata_ids.append([""] + [f"{c}-stratum-{stratum['stratum']}" for c in names])
    return (f"<p>{_esc(record['label'])}: {_esc(record['model'])}; inputs {_esc(record['inputs'])}, seed "
            f"{record['seed']}. Each image is scored by a model that never saw it.</p>"
            + _table(["metric", "blind baseline"], rows, ids) + verdict
            + "<h3>Attack AUC within strata of the blind score</h3><p><small>Quintiles of the blind score: within "
              "one, members and non-members look alike as images, so an AUC that stays high there is the "
              "victim's, not the split's.</small></p>"
            + _table(["blind-score quintile", *[score_label(c) for c in names]], strata_rows, strata_ids))


def _auc_text(value: float | None) -> str:
    return "— <small>(one class absent)</small>" if value is None else f"{value:.4f}"


def _failed_shards_table(failed: list[tuple[int, int, int, str]]) -> str:
    """The shards the last run could not score after every retry: which rows, and the error (cells `shard-N`)."""
    rows, ids = [], []
    for index, start, stop, error in failed:
        rows.append([str(index), f"{start}–{stop - 1}", _esc(error)])
        ids.append(["", "", f"shard-{index}"])
    return (_note(f"{len(failed)} shard(s) failed after every retry and stay pending: rerun the same "
                  "<code>memscore score</code> command to retry them.")
            + _table(["shard", "rows", "error"], rows, ids))


def _derived_scores_table(metrics: dict[str, Any], names: list[str]) -> str:
    """Per derived score: its method and the reference ids it was calibrated on (cells `NAME-made-by`)."""
    rows, ids = [], []
    for name in names:
        made_by = dict(metrics[name].get("made_by", {}))
        record = made_by.get("calibration", made_by)
        reference = record.get("reference_ids_file") or record.get("reference_file") or "none (shadow victims)"
        method = record.get("method", name)
        details = {k: record[k] for k in ("model", "folds", "k", "online", "transform", "fixed_variance")
                   if k in record}
        rows.append([_esc(name), _esc(method), _esc(reference), _esc(details)])
        ids.append(["", "", f"{name}-reference", ""])
    return _table(["score", "method", "reference ids (known non-members)", "settings"], rows, ids)


def _key_value_table(mapping: dict[str, Any]) -> str:
    return _table(["key", "value"], [[_esc(k), _esc(v)] for k, v in mapping.items()])


# ---------------------------------------------------------------- the report


def write_report(store: str | os.PathLike | ScoreStore, out_dir: str | os.PathLike, *, members_file: str | None = None,
                 dataset: Dataset | None = None, n_boot: int = 200, thumbnails: int = 8,
                 partial: bool = False, scores: list[str] | None = None, overwrite: bool = False,
                 holdout: float | None = None) -> Path:
    """Write `out_dir/index.html` and its PNGs for `store` (a path, or a handle already opened); returns the HTML
    path.

    The folder is built beside `out_dir` and switched in whole (`memscore.outputs.build_folder`): an existing
    report is replaced only with `overwrite`, and a folder memscore did not make as a report is refused.

    Labels: `members_file` (one member id per line) if given, else the store's `member` column; a
    store without labels still gets its histograms and scatter, and a note instead of metrics.
    `dataset` (the one that was scored) supplies the easiest/hardest images by Ldiff, `thumbnails`
    of each; without it that section is a note. `n_boot` bootstrap resamples give the intervals. `scores`: the
    derived scores (lcal, lira, ...) to show beside lrec and lmem (default: every one the store holds). `holdout`:
    also show thresholds chosen on the other rows and measured on this share of them (`memscore.attack.evaluate`).
    The page links the PNGs by relative path: open it from disk, no server needed. A damaged store is
    refused, an unfinished one too unless `partial` (then the page says how many rows are pending, and
    which shards failed in the last run).
    """
    data = report_data(store, members_file=members_file, n_boot=n_boot, thumbnails=thumbnails,
                       partial=partial, scores=scores, holdout=holdout)
    pages = functools.partial(_write_pages, data, dataset=dataset)
    return build_folder(out_dir, "report", pages, overwrite=overwrite, inputs=(data.store,)) / "index.html"


def _write_pages(data: ReportData, out: Path, *, dataset: Dataset | None) -> None:
    """The page and its figures, drawn from `data`, written into `out`."""
    metrics, alpha_record, fit = data.metrics, data.alpha, data.fit
    store_alpha = alpha_record["value"]
    metrics_problem = NO_LABELS if data.metrics_error is None else f"No metrics: {_esc(data.metrics_error)}."
    short = _short(data.statistic)
    fit_line = (f"label-free OLS slope of {short} on Ldiff over this store: {fit.alpha:.4g} "
                f"({fit.n_rows} rows, R² {fit.r2:.3f})")
    alpha_text = (f"alpha = <b>{store_alpha:.4g}</b>, chosen as <code>{_esc(alpha_record['spec'])}</code> "
                  f"(method {_esc(alpha_record['method'])}, {alpha_record['n_rows']} rows"
                  + (f", R² {alpha_record['r2']:.3f}" if alpha_record.get("r2") is not None else "")
                  + (f", fitted on {_esc(alpha_record['fitted_on'])}" if alpha_record.get("fitted_on") else "")
                  + f"); {fit_line}.")
    history = data.alpha_history

    sections = [
        f"<h1>memscore report</h1><p>Store <code>{_esc(data.store)}</code>, written {data.created}. Labels from "
        + (f"<code>{_esc(str(data.members_file))}</code>" if data.members_file
           else "the store's <code>member</code> column") + ".</p>",
        f'<p class="rule"><b>Direction:</b> {_esc(DIRECTION)}.<br><b>Cut-off rule for TPR at a target FPR:</b> '
        f"{_esc(CUTOFF_RULE)}; a target below 1/(number of non-members) is refused.<br>"
        f"<b>Scores:</b> {_esc(score_label(data.statistic))}; Ldiff = difficulty; Lmem = {short} − alpha · Ldiff."
        "</p>",
        "<h2>Counts and alpha</h2>" + _key_value_table(data.counts) + f"<p>{alpha_text}</p>"
        + (f"<p><small>Earlier alpha choices: {_esc(history)}</small></p>" if history else ""),
        "<h2>Metrics</h2>" + (_metric_table(metrics) if metrics else _note(metrics_problem)),
    ]
    if data.status.pending:
        sections.insert(2, _note(f'<b id="partial">Partial store:</b> {data.status.pending} of {data.n_images} rows '
                                 "are still pending (not scored); every figure and number below covers the scored "
                                 "rows only. Rerun the same <code>memscore score</code> command to finish it."))
    if data.failed_shards:
        sections.insert(-1, "<h2>Failed shards</h2>" + _failed_shards_table(data.failed_shards))
    if metrics and metrics["holdout"]:
        sections.append("<h2>Held-out thresholds</h2>" + _held_out_table(metrics["holdout"]))
    if metrics:
        sections.append("<h2>Blind baseline (no victim query)</h2>" + _blind_section(metrics["blind_baseline"]))
    derived = [c for c in (metrics["scores"] if metrics else []) if c not in SCORES or SCORES[c].kind != "stored"]
    if derived:
        sections.append("<h2>How the calibrated scores were made</h2>" + _derived_scores_table(metrics, derived))

    if metrics:
        fprs = [p["target_fpr"] for p in metrics[metrics["scores"][0]]["tpr_at_fpr"]]
        name = _roc_figure(data.curves, {c: metrics[c]["auc"] for c in metrics["scores"]}, fprs, out / "roc.png")
        sections.append("<h2>ROC curve</h2>" + _figure(
            name, "Log-log ROC of every score: TPR against FPR, each point a threshold (member iff score ≤ "
                  "threshold). The FPR axis starts at 1/(number of non-members), the smallest FPR this data "
                  "resolves; dashed: the FPR targets of the table it resolves; dotted: chance."))
    else:
        sections.append("<h2>ROC curve</h2>" + _note(metrics_problem))

    name = _histogram_figure({data.statistic: data.raw, "lmem": data.lmem}, data.labels, data.thresholds,
                             out / "histograms.png")
    sections.append("<h2>Score distributions</h2>" + _figure(
        name, f"Histograms (density) of {short} and Lmem by class, as in the paper's Figures 3 and 6: the "
              "better the score, the better one vertical line (a threshold) separates members from "
              "non-members." + (" Dashed: the best balanced-accuracy threshold." if metrics else "")))

    boundary = (store_alpha, data.thresholds["lmem"]) if data.thresholds["lmem"] is not None else None
    name, drawn = _scatter_figure(data.raw, data.statistic, data.ldiff, data.labels, fit, boundary,
                                  out / "scatter.png")
    n_finite = int((np.isfinite(data.raw) & np.isfinite(data.ldiff)).sum())
    sample = f" Showing a fixed-seed random {drawn} of {n_finite} images." if drawn < n_finite else ""
    sections.append(f"<h2>{short} vs difficulty</h2>" + _figure(
        name, f"{short} against Ldiff, as in the paper's Figures 5 and 7: harder images are reconstructed worse, "
              "member or not. Solid: the label-free least-squares line, whose slope is the fitted alpha."
              + (" Dashed: the decision line Lmem = threshold with the store's alpha; images below it are "
                 "called members." if boundary else "") + sample))

    if data.sweep is not None:
        alphas, aucs = data.sweep
        marks = [(store_alpha, f"store ({alpha_record['spec']})", "-"), (fit.alpha, "label-free fit", "--")]
        name = _alpha_figure(alphas, aucs, marks, data.statistic, out / "alpha.png")
        sections.append("<h2>Choice of alpha</h2>" + _figure(
            name, f"ROC-AUC of {short} − alpha · Ldiff over a grid of alpha, as in the paper's Figure 8. The "
                  "label-free fit uses no labels; the hindsight optimum uses the labels it is scored on, so "
                  "it is an upper bound, not a usable choice."))
    else:
        sections.append("<h2>Choice of alpha</h2>" + _note(metrics_problem))

    sections.append("<h2>Easiest and hardest images by Ldiff</h2>" + _thumbnail_section(data, dataset, out))

    record = data.record
    meta = {k: v for k, v in record.items() if k not in ("config", "versions")}
    sections.append("<h2>Configuration</h2><h3>Scoring configuration</h3>" + _key_value_table(record["config"])
                    + "<h3>Versions</h3>" + _key_value_table(record["versions"])
                    + "<h3>Store</h3>" + _key_value_table(meta))
    if metrics:
        sections.append('<script type="application/json" id="memscore-metrics">'
                        + json.dumps(metrics).replace("</", "<\\/") + "</script>")

    (out / "index.html").write_text("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                    f"<title>memscore report: {_esc(Path(data.store).name)}</title><style>{CSS}</style></head>"
                    f"<body>{''.join(sections)}</body></html>\n", encoding="utf-8")


def _thumbnail_section(data: ReportData, dataset: Dataset | None, out: Path) -> str:
    """The Figure 1 section: the lowest- and highest-Ldiff images, or a note saying why not."""
    if dataset is None:
        return _note("No thumbnails: the store records ids only, not image paths. Pass the scored "
                     "<code>dataset</code> to <code>write_report</code> to show the easiest and hardest images.")
    if not data.easiest.size:
        return _note("No thumbnails: too few images with a difficulty score (or thumbnails = 0).")
    ids, easiest, hardest = data.ids, data.easiest, data.hardest
    wanted = set(ids[np.r_[easiest, hardest]].tolist())
    pairs = _find_pairs(dataset, wanted)
    name = _thumbnail_figure([("easiest (lowest Ldiff)", easiest), ("hardest (highest Ldiff)", hardest)],
                             ids, data.ldiff, data.labels, pairs, out / "thumbnails.png")
    missing = sorted(wanted - set(pairs))
    listed = (f'<p><small>Easiest, lowest first: <span id="easiest-ids">{_esc(", ".join(ids[easiest]))}</span>. '
              f'Hardest, highest first: <span id="hardest-ids">{_esc(", ".join(ids[hardest]))}</span>.</small></p>')
    return (_figure(name, "Ground-truth images with the lowest (top) and highest (bottom) difficulty, as in the "
                          "paper's Figure 1: detailed, high-contrast images should rank as difficult.")
            + listed + (_note(f"Not found in the dataset given: {_esc(', '.join(missing))}.") if missing else ""))
