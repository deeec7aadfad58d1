"""Every membership score memscore knows, in one place: its name, its kind and what makes it; and which of them a
store holds. Lower = member for every one. evaluate, report, export, calibrate, predict, dataset-test and the
command's help text read this list, so a new score is named here once.

Kinds: `stored` (the store's statistic, lrec or ldenoise, and lmem built on it: every finished store has them;
lrec too wherever the victim was sampled), `per-image` (lcal: `memscore.lcal`) and `shadows`
(lira*, rmia*: `memscore.shadow_scores`). A derived score's writer marks its column with `SCORE_MARK`;
`score_names` lists the marked columns a store holds.
"""
from __future__ import annotations

from dataclasses import dataclass

from .errors import UsageError
from .store import ScoreStore

SCORE_MARK = "membership_score"
"""Attribute that marks a derived column as a membership score (lower = member); its writer sets it."""
KINDS = {"stored": "`memscore score`",
         "per-image": "`memscore rescore --method per-image`",
         "shadows": "`memscore rescore --method lira|rmia` on a store scored with --shadows"}
"""Each kind of score, and the command that makes it."""
LCAL_COLUMN = "lcal"
SHADOW_METHODS = {"lira": "LiRA", "rmia": "RMIA"}
"""The shadow-calibrated methods, and how labels name them."""


@dataclass(frozen=True)
class Score:
    """One membership score: its column, its kind (a key of KINDS) and how the report names it."""

    name: str
    kind: str
    label: str
    has_reference: bool = False
    """Its record names the known non-members it was calibrated on: a dataset test can use them as its reference."""

    @property
    def made_by(self) -> str:
        return KINDS[self.kind]


def shadow_column(method: str, online: bool = True, fixed_variance: bool = False) -> str:
    """The column a shadow-calibrated score is written to: lira, lira_fixed, lira_offline, lira_offline_fixed, rmia,
    rmia_offline (fixed variance is LiRA's alone)."""
    if method not in SHADOW_METHODS or (fixed_variance and method != "lira"):
        raise UsageError(f"method must be lira or rmia (fixed variance: lira only), got {method!r}")
    return method + ("" if online else "_offline") + ("_fixed" if fixed_variance else "")


def _shadow_scores() -> list[Score]:
    found = []
    for method in SHADOW_METHODS:
        for fixed_variance in ((False, True) if method == "lira" else (False,)):
            for online in (True, False):
                how = ("online" if online else "offline") + (", fixed variance" if fixed_variance else "")
                found.append(Score(shadow_column(method, online, fixed_variance), "shadows",
                                   f"{SHADOW_METHODS[method]} ({how})"))
    return found


SCORES: dict[str, Score] = {score.name: score for score in (
    Score("lrec", "stored", "Lrec (reconstruction error)"),
    Score("ldenoise", "stored", "Ldenoise (noise-prediction error)"),
    Score("lmem", "stored", "Lmem = statistic - alpha * Ldiff"),
    Score(LCAL_COLUMN, "per-image", "lcal (per-image calibrated)", has_reference=True),
    *_shadow_scores(),
)}


def stored_scores(store: ScoreStore) -> tuple[str, ...]:
    """The scores a finished store has from scoring: its statistic and lmem (the report's histograms show these),
    then lrec where the statistic is another and the victim was sampled."""
    also = ("lrec",) if store.statistic != "lrec" and store.config.samples > 0 else ()
    return (store.statistic, "lmem", *also)


def score_label(name: str) -> str:
    """How figures and tables name a score (its column name when memscore does not know it)."""
    return SCORES[name].label if name in SCORES else name


def describe_scores() -> str:
    """The known scores by kind, for the command's help: `lrec, lmem (memscore score); lcal (...); ...`."""
    return "; ".join(f"{', '.join(name for name, score in SCORES.items() if score.kind == kind)} ({made_by})"
                     for kind, made_by in KINDS.items())


def score_names(store: ScoreStore) -> list[str]:
    """The membership scores a store holds: the stored ones, then the derived ones (`SCORE_MARK`), by name."""
    derived = [name for name in store.derived_columns() if store.column_attrs(name).get(SCORE_MARK)]
    return list(stored_scores(store)) + derived


def require_score(store: ScoreStore, name: str) -> None:
    """Refuse a score the store does not hold, naming those it holds and how the missing one is made."""
    held = score_names(store)
    if name in held:
        return
    how = (f"{name} comes from {SCORES[name].made_by}" if name in SCORES
           else f"the scores memscore makes: {', '.join(SCORES)}")
    raise UsageError(f"{store.path} has no score {name!r}; it has {', '.join(held)} ({how})")
