"""`rescore`: add a membership score to a finished store, or rewrite its lmem, from what the store already holds
(no image is read again).

`METHODS` is the one registry of rescoring methods: each declares its options once (a settings dataclass,
`memscore.settings`: default, choices, help), writes one column with the record of how it was made in the
column's attributes (`memscore.lmem`, `memscore.lcal`, `memscore.shadow_scores`), and returns a `Rescored`. The
`memscore rescore` command's --method choices, options and help are generated from it (`command_options`), so
the command and the API cannot disagree on a method, an option or a default.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .alpha import LABEL_FREE_FORMS, AlphaSpec, label_free_alpha
from .calibration import DEFAULT_FOLDS, DEFAULT_LEVEL, MODELLED, MODELS
from .errors import UsageError
from .lcal import write_lcal
from .likelihood_ratio import DEFAULT_TRANSFORM, GAMMA, PRIOR_DOF, TRANSFORMS
from .lmem import rewrite_lmem
from .score_names import LCAL_COLUMN
from .settings import Setting, check_settings, declared, option_name, setting
from .shadow_scores import write_lira, write_rmia


@dataclass(frozen=True)
class Rescored:
    """What one rescoring wrote: the column, the record its attributes hold, and the line to tell the user."""

    store: str
    method: str
    column: str
    record: dict[str, Any]
    """How the column was made, as its attributes hold it (lmem: its alpha record)."""
    written: str
    """What was written, in words (the end of `summary`)."""
    reference_ids: dict[str, Any] | None = None
    """How the reference ids file matched the store (`memscore.data.IdMatch.to_dict`); None without one."""

    def summary(self) -> str:
        """The line the command prints."""
        return f"{self.store}: {self.written}"


# ---------------------------------------------------------------- each method's options, declared once


@dataclass(frozen=True)
class _Options:
    def __post_init__(self) -> None:
        check_settings(self)


@dataclass(frozen=True)
class AlphaOptions(_Options):
    alpha: AlphaSpec | None = setting(None, f"the alpha lmem is rewritten at (required): {LABEL_FREE_FORMS}",
                                      parse=label_free_alpha, optional=True)
    reference: str | None = setting(None, "ids of known non-members, for --alpha fit:reference", optional=True)

    def __post_init__(self) -> None:
        if self.alpha is not None:
            object.__setattr__(self, "alpha", label_free_alpha(self.alpha))
        super().__post_init__()


@dataclass(frozen=True)
class PerImageOptions(_Options):
    reference: str | None = setting(None, "ids of known non-members, whose statistic the model learns (required)",
                                    optional=True)
    model: str = setting(MODELS[0], "the model of a non-member's statistic given the image", choices=MODELS)
    modelled: str = setting(MODELLED[0], "what the model describes for a non-member: lmem (the store's statistic "
                                         "less its alpha times Ldiff) or raw (the statistic itself)", choices=MODELLED)
    folds: int = setting(DEFAULT_FOLDS, "reference rows are scored out of fold by models fitted on the other folds")
    seed: int = setting(0, "seed of the folds and of the models")
    level: float = setting(DEFAULT_LEVEL, "the lower quantile the quantile model fits besides the median")


@dataclass(frozen=True)
class LiraOptions(_Options):
    offline: bool = setting(False, "use only the shadows that never saw each image")
    fixed_variance: bool = setting(False, "one pooled variance instead of one per image")
    transform: str = setting(DEFAULT_TRANSFORM, "the transform of the statistic the Gaussians are fitted to (logit: "
                                                               "lrec only)",
                             choices=TRANSFORMS)
    prior_dof: float = setting(PRIOR_DOF, "weight of the pooled variance in each image's own, in observations")


@dataclass(frozen=True)
class RmiaOptions(_Options):
    offline: bool = setting(False, "use only the shadows that never saw each image")
    reference: str | None = setting(None, "ids of the population samples z (default: every scored image)",
                                    optional=True)
    gamma: float = setting(GAMMA, "z is dominated when LR(x) / LR(z) >= gamma")
    temperature: float | None = setting(None, "T of the likelihood exp(-statistic / T) (default: the median "
                                              "shadow statistic)", optional=True)
    offline_a: float | None = setting(None, "the offline correction a, in [0, 1] (default: chosen from the "
                                            "shadows)", optional=True)


# ---------------------------------------------------------------- the methods


def _alpha(store: str, options: AlphaOptions, strict: bool) -> Rescored:
    if options.alpha is None:
        raise UsageError(f"--method alpha (the default) needs --alpha {LABEL_FREE_FORMS}")
    record = rewrite_lmem(store, options.alpha, options.reference, strict=strict)
    return Rescored(store, "alpha", "lmem", record.to_dict(),
                    f"lmem rewritten with alpha = {record.value:.4g} ({record.spec}); earlier choices kept in its "
                    "alpha history", record.reference_ids)


def _per_image(store: str, options: PerImageOptions, strict: bool) -> Rescored:
    if options.reference is None:
        raise UsageError("--method per-image needs --reference FILE (ids of known non-members)")
    record = write_lcal(store, options.reference, model=options.model, folds=options.folds, seed=options.seed,
                        level=options.level, modelled=options.modelled, strict=strict)
    return Rescored(store, "per-image", LCAL_COLUMN, record,
                    f"{LCAL_COLUMN} written ({options.model} model of {options.modelled}, {options.folds} folds; "
                    "reference rows scored out of fold)", record["reference_ids"])


def _shadow_result(store: str, method: str, offline: bool, record: dict[str, Any]) -> Rescored:
    return Rescored(store, method, record["column"], record,
                    f"{record['column']} written ({method}, {'offline' if offline else 'online'}, {record['k']} "
                    "shadows)", record["reference_ids"])


def _lira(store: str, options: LiraOptions, strict: bool) -> Rescored:
    record = write_lira(store, online=not options.offline, fixed_variance=options.fixed_variance,
                        transform=options.transform, prior_dof=options.prior_dof)
    return _shadow_result(store, "lira", options.offline, record)


def _rmia(store: str, options: RmiaOptions, strict: bool) -> Rescored:
    record = write_rmia(store, online=not options.offline, temperature=options.temperature,
                        offline_a=options.offline_a, gamma=options.gamma, reference=options.reference, strict=strict)
    return _shadow_result(store, "rmia", options.offline, record)


@dataclass(frozen=True)
class Method:
    """One way to rescore a store."""

    name: str
    help: str
    options: type
    """Its options: a frozen dataclass of `memscore.settings` fields (default, choices, help), checked on creation."""
    run: Callable[[str, Any, bool], Rescored]
    """(store path, options, strict) -> what was written; `strict` refuses an id file with ids the store lacks."""


METHODS: dict[str, Method] = {method.name: method for method in (
    Method("alpha", "lmem at --alpha", AlphaOptions, _alpha),
    Method("per-image", "lcal from known non-members (--reference)", PerImageOptions, _per_image),
    Method("lira", "LiRA from the store's shadow victims (`score --shadows`)", LiraOptions, _lira),
    Method("rmia", "RMIA from the store's shadow victims (`score --shadows`)", RmiaOptions, _rmia),
)}
"""Every rescoring method, by name."""
DEFAULT_METHOD = "alpha"


def rescore(store: str | os.PathLike, method: str = DEFAULT_METHOD, *, strict: bool = False, **options: Any) -> Rescored:
    """Add or rewrite one score of a finished store with `method` (a key of `METHODS`) and its `options` (the
    method's declared options; those left out take their declared defaults); returns what was written. `strict`
    refuses an id file with ids the store does not hold (by default they are ignored and counted). An unknown
    method or option, or a value the declaration refuses, is refused before the store is opened."""
    if method not in METHODS:
        raise UsageError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    chosen = METHODS[method]
    flags = {field.name: option_name(field, spec) for field, spec in declared(chosen.options)}
    unknown = sorted(set(options) - set(flags))
    if unknown:
        given = ", ".join("--" + name.replace("_", "-") for name in unknown)
        raise UsageError(f"--method {method} takes no {given}; its options are {', '.join(flags.values())}")
    return chosen.run(str(store), chosen.options(**options), strict)


def command_options() -> type:
    """Every method's options as one settings dataclass, for the `memscore rescore` command
    (`memscore.settings.add_setting_arguments`): an option several methods take appears once, its help saying
    what it does in each and each one's default. Every field defaults to None (a flag to False), meaning "not
    given": the chosen method applies its own default."""
    uses: dict[str, list[tuple[str, dataclasses.Field, Setting]]] = {}
    for method in METHODS.values():
        for field, spec in declared(method.options):
            uses.setdefault(field.name, []).append((method.name, field, spec))
    fields = []
    for name, found in uses.items():
        _, field, spec = found[0]
        meanings: dict[str, list[str]] = {}  # methods that say the same share one entry: "lira, rmia: ..."
        for method, declaration, each in found:
            meanings.setdefault(each.help + _default_text(declaration), []).append(method)
        text = "; ".join(f"{', '.join(methods)}: {meaning}" for meaning, methods in meanings.items())
        fields.append((name, field.type, setting(False if field.default is False else None, text,
                                                 choices=spec.choices, parse=spec.parse, optional=True)))
    return dataclasses.make_dataclass("RescoreCommandOptions", fields, frozen=True)


def _default_text(field: dataclasses.Field) -> str:
    return "" if field.default is None or field.default is False else f" (default: {field.default})"
