"""The one configuration of a scoring run.

`ScoreConfig` is the single source of truth: the CLI builds it, the scorer reads it, the store
records it verbatim and compares it on resume (a changed key is refused, naming the key).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from .alpha import parse_alpha
from .errors import UsageError

PRESETS = ("aligned", "reference")
DIFFICULTY_SOURCES = ("target", "input")
VALUE_RANGES = ("-1,1", "0,1")
PRECISIONS = ("auto", "fp32", "bf16")


@dataclass(frozen=True)
class ScoreConfig:
    """Everything that decides a score. Two runs with equal configs give equal scores: bit for bit under the same
    process layout (threads, workers, device), to float32 rounding (relative 1e-6) across layouts, since
    parallel reductions sum in layout-dependent order; the store records each run's layout."""

    victim: str = ""
    """Victim spec: `recon:DIR`, `torchscript:PATH`, `python:MODULE:FACTORY`, `pix2pix:CKPT`, ..."""
    victim_weights: str | None = None
    victim_size: int | None = None
    """Side of the square input the victim is fed; None = the input's own size."""
    victim_range: str = "-1,1"
    """Value range of the victim's input and output tensors (pix2pix convention: -1,1)."""
    victim_options: tuple[tuple[str, Any], ...] = ()
    """Extra keyword options for the victim loader (architecture, ngf, mode, ...), as sorted pairs."""
    backbone: str = "efficientnet_lite0"
    backbone_weights: str | None = None
    weights_sha256: str = ""
    preset: str = "aligned"
    difficulty_source: str = "target"
    precision: str = "fp32"
    """Of the backbone and the victim: `bf16` runs them under bfloat16 autocast (where the hardware has it natively:
    CUDA from Ampere on, CPUs with AMX-BF16 or AVX512-BF16; the kernel stays fp32/fp64), `auto` picks bf16 there and
    fp32 elsewhere. A run resolves `auto` once, before anything is written, and the store records the result, so
    workers and resumes use one precision. The `memscore` command defaults to `auto`; this API to `fp32`, the exact
    reference values."""
    fit_fraction: float = 0.7
    ridge: float = 1e-6
    seed: int = 0
    augment: int = 1
    """Lrec averaged over this many copies of each pair: the pair itself, then seeded flips and crops."""
    defense_noise: float = 0.0
    """Std of Gaussian noise added to the victim's outputs in [0, 1] (to measure a noise defence)."""
    shadows: str | None = None
    """Folder of shadow victims (`memscore shadows train`): each image is also reconstructed by every shadow."""
    alpha: str = "fit"
    reference_ids: str | None = None
    """File of known non-member ids, for `--alpha fit:reference`."""

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise UsageError(f"preset must be one of {PRESETS}, got {self.preset!r}")
        if self.difficulty_source not in DIFFICULTY_SOURCES:
            raise UsageError(f"difficulty_source must be one of {DIFFICULTY_SOURCES}, got {self.difficulty_source!r}")
        if self.victim_range not in VALUE_RANGES:
            raise UsageError(f"victim_range must be one of {VALUE_RANGES}, got {self.victim_range!r}")
        if self.precision not in PRECISIONS:
            raise UsageError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if not 0.0 < self.fit_fraction < 1.0:
            raise UsageError(f"fit_fraction must be in (0, 1), got {self.fit_fraction}")
        if self.augment < 1:
            raise UsageError(f"augment must be >= 1 (1 = no augmentation), got {self.augment}")
        if self.defense_noise < 0:
            raise UsageError(f"defense_noise must be >= 0, got {self.defense_noise}")
        if self.ridge < 0:
            raise UsageError(f"ridge must be >= 0, got {self.ridge}")
        parse_alpha(self.alpha)  # a spec that cannot be resolved is refused before anything is scored

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, as recorded in the store."""
        out = dataclasses.asdict(self)
        out["victim_options"] = {k: v for k, v in self.victim_options}
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
