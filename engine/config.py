"""The one configuration of a scoring run.

`ScoreConfig` is the single source of truth: each setting's default, choices and bounds are declared here once
(`memscore.settings`), the `memscore score` options are generated from them, the scorer reads it, the store
records it verbatim and compares it on resume (a changed key is refused, naming the key).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from .alpha import LABEL_FREE_FORMS, AlphaSpec, label_free_alpha, parse_alpha
from .backbones import backbone_names
from .errors import UsageError
from .precision import PRECISIONS
from .settings import FRACTION, NON_NEGATIVE, WHOLE_NON_NEGATIVE, WHOLE_POSITIVE, check_settings, setting
from .victims import default_statistic, victim_forms

PRESETS = ("aligned", "reference")
DIFFICULTY_SOURCES = ("target", "input")
VALUE_RANGES = ("-1,1", "0,1")
DEFAULT_ALPHA = parse_alpha("fit")
STATISTICS = {"lrec": "the victim's reconstruction error, mean |output - target| over its samples (black-box)",
              "ldenoise": "the victim's noise-prediction error at fixed timesteps, seeded per image (white-box)"}
"""The membership statistics a store can be built on (lower = member): its `statistic` column is the one Lmem
(= statistic - alpha * Ldiff), per-image calibration, LiRA/RMIA (with each shadow's value in `STATISTIC_shadow`)
and the dataset test read. Every store also has `lrec` when the victim was sampled (`samples` > 0)."""


def per_shadow_column(statistic: str) -> str:
    """The 2-D column holding each shadow victim's value of `statistic` (`lrec_shadow`, `ldenoise_shadow`)."""
    return f"{statistic}_shadow"


def victim_option(text: str) -> tuple[str, Any]:
    """`KEY=VALUE` -> (key with `-` as `_`, the value as int, float, bool or text)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise UsageError(f"expected KEY=VALUE, got {text!r}")
    for cast in (int, float):
        try:
            return key.replace("-", "_"), cast(value)
        except ValueError:
            pass
    return key.replace("-", "_"), {"true": True, "false": False}.get(value.lower(), value)


@dataclass(frozen=True)
class ScoreConfig:
    """Everything that decides a score, and the only home of each setting's default, choices and bounds: the
    `memscore score` options are generated from these declarations (`memscore.settings`).

    Two runs with equal configs give equal scores: bit for bit under the same process layout (threads, workers,
    device), to float32 rounding (relative 1e-6) across layouts, since parallel reductions sum in
    layout-dependent order; the store records each run's layout."""

    victim: str = setting("", "the victim: " + " | ".join(victim_forms()))
    victim_weights: str | None = setting(None, "weights for a python: victim (loaded with weights_only=True)",
                                         optional=True)
    victim_size: int | None = setting(None, "square input size the victim is fed (default: the size a memscore "
                                            "checkpoint was trained at, else the input's own)",
                                      rule=WHOLE_POSITIVE, optional=True)
    victim_range: str = setting("-1,1", "value range of the victim's input and output tensors (pix2pix: -1,1)",
                                choices=VALUE_RANGES)
    victim_options: tuple[tuple[str, Any], ...] = setting(
        (), "victim loader option, e.g. netG=unet_256, ngf=64, mode=eval (repeatable)", flag="--victim-opt",
        metavar="KEY=VALUE", parse=victim_option, repeat=True)
    backbone: str = setting("efficientnet_lite0", "the difficulty backbone", choices=backbone_names)
    backbone_weights: str | None = setting(None, "backbone weights file (default: embedded / torch hub cache)",
                                           flag="--weights", optional=True)
    weights_sha256: str = ""
    """Digest of the backbone weights the run used (resolved by the run, not given)."""
    preset: str = setting("aligned", "preprocessing: aligned, or reference (the authors' released code)",
                          choices=PRESETS)
    difficulty_source: str = setting("target", "whose difficulty Ldiff measures", choices=DIFFICULTY_SOURCES)
    precision: str = setting(
        "auto", "network arithmetic (backbone and victim; the difficulty kernel stays fp32/fp64): auto = bf16 where "
                "the hardware runs it natively (CUDA from Ampere on, CPUs with AMX-BF16 or AVX512-BF16), else fp32; "
                "bf16 is refused where it would be emulated; a run resolves it once and the store records the result",
        choices=PRECISIONS)
    fit_fraction: float = setting(0.7, "share of pixels the difficulty fit sees (the rest measure it)", rule=FRACTION)
    ridge: float = setting(1e-6, "relative ridge of the difficulty fit", rule=NON_NEGATIVE)
    seed: int = setting(0, "seed of the pixel split, augmentations, noise and dropout (per image id)")
    augment: int = setting(1, "average Lrec over K copies: the pair, then seeded flips and crops (paper's Ours-Aug)",
                           rule=WHOLE_POSITIVE, metavar="K")
    samples: int | None = setting(
        None, "reconstructions per image, each from a seed of (run seed, image id, k), for stochastic victims "
              "(diffusion samplers, train-mode dropout): Lrec is their mean and each is kept (lrec_samples); "
              "default 1, 0 for a diffusers victim (its statistic is ldenoise)",
        rule=WHOLE_NON_NEGATIVE, optional=True, metavar="K")
    statistic: str | None = setting(
        None, "the membership statistic the store is built on (Lmem, per-image calibration, LiRA/RMIA and the "
              "dataset test read it): lrec (reconstruction error, black-box) or ldenoise (noise-prediction error "
              "at fixed timesteps, white-box); default ldenoise for diffusers victims, else lrec",
        choices=tuple(STATISTICS), optional=True)
    defense_noise: float = setting(0.0, "Gaussian noise of this std added to the victim's outputs in [0, 1] "
                                        "(measures a noise defence)", rule=NON_NEGATIVE, metavar="SIGMA")
    shadows: str | None = setting(None, "folder of shadow victims (`memscore shadows train`): every image is also "
                                        "reconstructed by each shadow, for `memscore rescore --method lira|rmia`",
                                  optional=True)
    alpha: AlphaSpec = setting(DEFAULT_ALPHA, f"alpha of lmem = lrec - alpha * ldiff: {LABEL_FREE_FORMS}",
                               parse=label_free_alpha)
    reference_ids: str | None = setting(None, "ids of known non-members, for --alpha fit:reference",
                                        flag="--reference", optional=True)

    def __post_init__(self) -> None:
        statistic = self.statistic or default_statistic(self.victim)
        object.__setattr__(self, "statistic", statistic)
        if self.samples is None:
            object.__setattr__(self, "samples", 0 if statistic == "ldenoise" else 1)
        if statistic == "lrec" and self.samples == 0:
            raise UsageError("statistic lrec needs the victim's outputs: give --samples 1 or more")
        if statistic == "ldenoise" and self.defense_noise > 0:
            raise UsageError("--defense-noise measures a defence on the victim's outputs; ldenoise reads none: "
                             "measure it on --statistic lrec with --samples")
        object.__setattr__(self, "alpha", label_free_alpha(self.alpha))
        object.__setattr__(self, "victim_options", tuple(sorted(dict(self.victim_options).items())))
        check_settings(self)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, as recorded in the store."""
        out = dataclasses.asdict(self)
        out["victim_options"] = {k: v for k, v in self.victim_options}
        out["alpha"] = self.alpha.text
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ScoreConfig":
        fields = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in fields}
        kwargs["victim_options"] = tuple(sorted(dict(kwargs.get("victim_options", {})).items()))
        return cls(**kwargs)

    def differences(self, other: "ScoreConfig", *, ignore: tuple[str, ...] = ()) -> dict[str, tuple[Any, Any]]:
        """Keys whose values differ, as {key: (self's, other's)}."""
        mine, theirs = self.to_dict(), other.to_dict()
        return {k: (mine[k], theirs[k]) for k in mine if k not in ignore and mine[k] != theirs[k]}
