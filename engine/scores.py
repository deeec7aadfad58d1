"""Per-batch scores: the membership statistic from the victim, Ldiff from the difficulty kernel.

`Scorer` holds the loaded backbone and victim (load once, reuse for every shard) and turns a prepared `Batch`
into rows: `lrec` (over the K samples, each kept when K > 1), `ldenoise` for a white-box statistic, `ldiff`,
`out_of_range`, status and reason. Lmem needs alpha, which may be fitted over the whole store, so it is written by
the alpha pass (`memscore.run`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch

from .allocator import keep_freed_memory
from .backbones import Backbone, create_backbone
from .batch import Batch, Prepared, View
from .config import ScoreConfig, per_shadow_column
from .devices import start_numba_threads
from .kernels.difficulty import predictability_error
from .precision import autocast, resolve_precision
from .preprocess import resize
from .seeding import fit_mask, image_seed
from .timing import StageTimes
from .victims import VictimError, at_size, open_victim, shadow_options


CPU_BACKBONE_IMAGES = 4
"""Images per backbone forward on CPU. Channels-last activations of a few images stay in cache and
reuse the allocator's memory; a whole batch's (tens of MB per layer) are fresh pages every layer
(bench/run.py's stage table shows the effect)."""

OUT_OF_RANGE_TOLERANCE = 0.01
"""Largest fraction of a victim output's values (after conversion from the victim's range) that may lie outside
[0, 1] for the image to be scored: Lrec clamps them, and the fraction is kept (`Row.out_of_range`). Beyond it the
output is not on the scale memscore reads it on (most often a wrong `--victim-range`), so clamping would silently
change the score, and the image fails instead."""


@dataclass
class Row:
    id: str
    member: int
    lrec: float = float("nan")
    ldiff: float = float("nan")
    status: str = "ok"
    reason: str = ""
    out_height: int = 0
    out_width: int = 0
    out_of_range: float = float("nan")
    """Fraction of the target victim's output values outside [0, 1] before Lrec clamps them (the most over
    augmented copies); NaN where there was no output."""
    features: np.ndarray | None = None
    """Per-image calibration features (`stage_features`); None where the image was not scored."""
    ldenoise: float = float("nan")
    """The white-box statistic (statistic `ldenoise`)."""
    lrec_samples: np.ndarray | None = None
    """Lrec of each of the K samples (`samples` > 1); `lrec` is their mean."""
    lrec_shadow: np.ndarray | None = None
    """Lrec under each shadow victim (`--shadows`, statistic lrec)."""
    ldenoise_shadow: np.ndarray | None = None
    """Ldenoise under each shadow victim (`--shadows`, statistic ldenoise)."""
    in_shadow: np.ndarray | None = None
    """1 where the image was in that shadow's training half, else 0."""


def stage_features(stages: list[torch.Tensor]) -> torch.Tensor:
    """[B, 2 * sum(C)] per image: each stage's per-channel mean over space, then its per-channel std over space.
    Compact (992 values for EfficientNet-Lite0) and enough for a model of a non-member's Lrec given the image."""
    means = [stage.mean(dim=(2, 3)) for stage in stages]
    stds = [stage.std(dim=(2, 3), unbiased=False) for stage in stages]
    return torch.cat(means + stds, dim=1)


def augmentation(image_id: str, copy: int, seed: int) -> tuple[bool, tuple[float, float, float]]:
    """Copy `copy` of a pair: (horizontal flip, crop box as (top, left, side) fractions). Copy 0 is the pair."""
    if copy == 0:
        return False, (0.0, 0.0, 1.0)
    rng = np.random.Generator(np.random.PCG64(image_seed(seed, f"{image_id}#augment{copy}")))
    side = float(rng.uniform(0.8, 1.0))
    return copy % 2 == 1, (float(rng.uniform(0, 1 - side)), float(rng.uniform(0, 1 - side)), side)


def apply_augmentation(image: torch.Tensor, flip: bool, box: tuple[float, float, float]) -> torch.Tensor:
    """Crop `box` (fractions of the image) and resize back to the image's size, then flip if asked."""
    height, width = image.shape[-2:]
    top, left, side = box
    if side < 1.0:
        y0, x0 = int(round(top * height)), int(round(left * width))
        crop = image[:, y0: y0 + max(int(round(side * height)), 1), x0: x0 + max(int(round(side * width)), 1)]
        image = resize(crop, (height, width))
    return image.flip(-1) if flip else image


def add_defense_noise(output: torch.Tensor, sigma: float, image_id: str, copy: int, seed: int) -> torch.Tensor:
    """The victim-side Gaussian noise defence, seeded per image and copy."""
    generator = torch.Generator().manual_seed(image_seed(seed, f"{image_id}#noise{copy}") >> 1)
    noise = torch.randn(output.shape, generator=generator, dtype=output.dtype) * sigma
    return (output + noise.to(output.device)).clamp(0.0, 1.0)


def out_of_range_fraction(output: torch.Tensor) -> float:
    """Fraction of `output`'s values outside [0, 1]: the values `reconstruction_error` clamps."""
    return float(((output < 0.0) | (output > 1.0)).float().mean())


def out_of_range_reason(image_id: str, fraction: float, victim_range: str) -> str:
    """Why an image whose victim output is too far out of [0, 1] fails, and what to check."""
    return (f"{image_id}: {fraction:.1%} of the victim's output values lie outside [0, 1] (tolerance "
            f"{OUT_OF_RANGE_TOLERANCE:.0%}, memscore.scores.OUT_OF_RANGE_TOLERANCE); they were read as "
            f"--victim-range {victim_range}: check that it is the range the victim outputs")


class Measured(NamedTuple):
    """A victim's answer for one pair: Lrec over its samples and copies (NaN without samples) with each sample's
    Lrec, the white-box statistic (NaN unless asked), the size of its outputs and the most any output had of its
    values outside [0, 1]."""

    lrec: float
    sample_errors: np.ndarray
    ldenoise: float
    size: tuple[int, int]
    out_of_range: float

    def statistic(self, name: str) -> float:
        return self.ldenoise if name == "ldenoise" else self.lrec


def reconstruction_error(output: torch.Tensor, target: torch.Tensor) -> float:
    """Lrec: mean |V(x) - y| in [0, 1], the target resized to the output's resolution if needed."""
    target = at_size(target.to(output.device), tuple(output.shape[-2:]))
    return float((output.clamp(0.0, 1.0) - target).abs().mean())


@dataclass
class Scorer:
    """Scores batches for one configuration on one device."""

    config: ScoreConfig
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backbone: Backbone | None = None
    victim: object = None
    times: StageTimes = field(default_factory=StageTimes)

    def __post_init__(self) -> None:
        keep_freed_memory()
        start_numba_threads()  # before any forward: starting later, it would change torch's threads mid-run
        if self.backbone is None:
            self.backbone = create_backbone(self.config.backbone, weights=self.config.backbone_weights)
        self.backbone = self.backbone.to(self.device, memory_format=torch.channels_last)
        if self.victim is None:
            self.victim = open_victim(self.config.victim, weights=self.config.victim_weights, device=self.device,
                                      value_range=self.config.victim_range, seed=self.config.seed,
                                      **dict(self.config.victim_options))
        self.shadow_victims, self.shadow_set = [], None
        if self.config.shadows:
            from .shadows import read_shadow_set
            self.shadow_set = read_shadow_set(self.config.shadows)
            victim_options = dict(self.config.victim_options)
            self.shadow_victims = [open_victim(shadow.victim_spec, device=self.device,
                                               value_range=self.config.victim_range, seed=self.config.seed,
                                               **shadow_options(shadow.victim_spec, victim_options))
                                   for shadow in self.shadow_set.shadows]
        self._require_statistic()
        self.resize_mode = "skimage" if self.config.preset == "reference" else "bilinear"
        self.precision = resolve_precision(self.config.precision, self.device)

    def _require_statistic(self) -> None:
        """Refuse, before anything is scored, a statistic the victims cannot give: K samples of a victim without
        seeds (K copies of one output), ldenoise of a victim or shadow that is not white-box."""
        if self.config.samples > 1 and not getattr(self.victim, "takes_seeds", False):
            raise VictimError(f"{self.config.victim} gives one output per image (a folder of outputs, or a model "
                              f"whose forward takes no seeds): --samples {self.config.samples} would repeat it")
        if self.config.statistic != "ldenoise":
            return
        shadows = self.shadow_set.shadows if self.shadow_set else ()
        named = [(self.config.victim, self.victim)] + [(f"shadow {shadow.index} of {self.config.shadows}", victim)
                                                       for shadow, victim in zip(shadows, self.shadow_victims)]
        for name, victim in named:
            if not getattr(victim, "takes_denoising", False):
                raise VictimError(f"statistic ldenoise needs white-box victims (diffusers:DIR, or a python: module "
                                  f"with denoising_error(x, y, seeds)); {name} is not one")

    def autocast(self):
        """The networks' autocast for the resolved precision (bfloat16, or none for fp32)."""
        return autocast(self.precision, self.device)

    @property
    def view(self) -> View:
        grid = 224 // self.backbone.stage_strides[0]
        input_kind = "labels" if getattr(self.victim, "takes_labels", False) else "rgb"
        return View(self.config.victim_size, self.backbone.mean, self.backbone.std, grid,
                    self.config.preset, self.config.difficulty_source, input_kind)

    @torch.no_grad()
    def difficulty(self, ids: list[str], cnn_views: torch.Tensor, grid_targets: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """Ldiff for a batch of CNN views and their grid targets, and the views' calibration features."""
        with self.times.stage("backbone", self.device), self.autocast():
            views = cnn_views.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
            step = len(views) if self.device.type == "cuda" else CPU_BACKBONE_IMAGES
            parts = [self.backbone(views[start: start + step]) for start in range(0, len(views), step)]
            stages = [torch.cat([part[index] for part in parts]).float() for index in range(len(parts[0]))]
        with self.times.stage("kernel", self.device):
            grid = grid_targets.shape[-1]
            mask = fit_mask(ids, grid * grid, self.config.fit_fraction, self.config.seed).to(self.device)
            ldiff = predictability_error(stages, grid_targets.to(self.device), mask, resize=self.resize_mode,
                                         ridge=self.config.ridge).cpu()
        return ldiff, stage_features(stages).cpu()

    def measure(self, items: list[Prepared], victim=None, stage: str = "victim") -> list[Measured | str]:
        """Per item: what the run's configuration asks of a victim (its K samples' Lrec, its white-box statistic),
        or why it failed. `victim`: another victim than the target (a shadow), asked only for the store's
        statistic, queried the same way but without the target's noise defence."""
        target = victim is None
        victim = self.victim if target else victim
        n_samples = self.config.samples if target or self.config.statistic == "lrec" else 0
        per_sample = [self._sample_errors(items, victim, sample, stage, target) for sample in range(n_samples)]
        denoised: list[float | str] = [float("nan")] * len(items)
        if self.config.statistic == "ldenoise":
            with self.times.stage(stage, self.device), self.autocast():
                denoised = victim.denoising_errors(items)
        results: list[Measured | str] = []
        for index, item in enumerate(items):
            answers = [sample[index] for sample in per_sample]
            failure = next((answer for answer in answers + [denoised[index]] if isinstance(answer, str)), None)
            if failure is not None:
                results.append(failure)
                continue
            errors = np.array([lrec for lrec, _, _ in answers], dtype=np.float64)
            size = answers[0][1] if answers else tuple(item.y.shape[-2:])
            results.append(Measured(float(errors.mean()) if answers else float("nan"), errors, denoised[index], size,
                                    max((fraction for _, _, fraction in answers), default=float("nan"))))
        return results

    def _sample_errors(self, items: list[Prepared], victim, sample: int, stage: str, target: bool
                       ) -> list[tuple[float, tuple[int, int], float] | str]:
        """Per item, sample `sample` of the victim's output: Lrec averaged over the item's augmented copies, the
        output's size and the most a copy had of its values outside [0, 1] (measured before the noise defence,
        which clamps); or why it failed."""
        n_copies, seed = self.config.augment, self.config.seed
        plans = [[augmentation(item.pair.id, copy, seed) for copy in range(n_copies)] for item in items]
        queries = [dataclasses.replace(item, x=apply_augmentation(item.x, flip, box))
                   for item, plan in zip(items, plans) for flip, box in plan]
        with self.times.stage(stage, self.device), self.autocast():
            outputs = victim.reconstruct(queries, sample=sample)
        results: list[tuple[float, tuple[int, int], float] | str] = []
        for index, (item, plan) in enumerate(zip(items, plans)):
            copies = outputs[index * n_copies: (index + 1) * n_copies]
            failure = next((output for output in copies if isinstance(output, str)), None)
            if failure is not None:
                results.append(failure)
                continue
            errors = []
            for copy, (output, (flip, box)) in enumerate(zip(copies, plan)):
                if target and self.config.defense_noise > 0:
                    output = add_defense_noise(output, self.config.defense_noise, item.pair.id,
                                               copy + sample * n_copies, seed)
                errors.append(reconstruction_error(output, apply_augmentation(item.y, flip, box)))
            results.append((float(np.mean(errors)), tuple(copies[0].shape[-2:]),
                            max(out_of_range_fraction(output) for output in copies)))
        return results

    def score(self, batch: Batch) -> list[Row]:
        """Rows for every pair of the batch, failures included, in the batch's order of ids."""
        rows = [Row(f.pair.id, f.pair.member, status="failed", reason=f.reason) for f in batch.failures]
        if not batch.items:
            return rows
        scored = []
        statistic = self.config.statistic
        for item, result in zip(batch.items, self.measure(batch.items)):
            if isinstance(result, str):
                rows.append(Row(item.pair.id, item.pair.member, status="failed", reason=result))
                continue
            if result.out_of_range > OUT_OF_RANGE_TOLERANCE:
                rows.append(Row(item.pair.id, item.pair.member, status="failed", out_of_range=result.out_of_range,
                                reason=out_of_range_reason(item.pair.id, result.out_of_range,
                                                           self.config.victim_range)))
                continue
            row = Row(item.pair.id, item.pair.member, lrec=result.lrec, ldenoise=result.ldenoise,
                      lrec_samples=result.sample_errors if self.config.samples > 1 else None,
                      out_of_range=result.out_of_range, out_height=int(result.size[0]), out_width=int(result.size[1]))
            if not np.isfinite(result.statistic(statistic)):
                row.status, row.reason = "failed", f"{row.id}: {statistic} is not finite"
                rows.append(row)
                continue
            rows.append(row)
            scored.append((row, item))
        if scored:
            ldiff, features = self.difficulty([item.pair.id for _, item in scored],
                                              torch.stack([item.cnn_view for _, item in scored]),
                                              torch.stack([item.grid_target for _, item in scored]))
            for (row, _), value, feature in zip(scored, ldiff.tolist(), features.numpy()):
                if np.isfinite(value):
                    row.ldiff, row.features = value, feature
                else:
                    row.status, row.reason = "failed", f"{row.id}: difficulty score is not finite"
            self._score_shadows(scored)
        return rows

    def _score_shadows(self, scored: list[tuple[Row, Prepared]]) -> None:
        """Each shadow victim's value of the statistic (NaN where a shadow could not give it) and the shadows'
        memberships."""
        if not self.shadow_victims:
            return
        from .shadows import in_shadow_matrix  # imported with the shadow set in __post_init__: costs nothing here
        items = [item for _, item in scored]
        statistic = self.config.statistic
        per_shadow = [self.measure(items, victim, "shadows") for victim in self.shadow_victims]
        in_shadow = in_shadow_matrix([row.id for row, _ in scored], self.shadow_set)
        for index, (row, _) in enumerate(scored):
            values = np.array([np.nan if isinstance(results[index], str) else results[index].statistic(statistic)
                               for results in per_shadow], dtype=np.float32)
            setattr(row, per_shadow_column(statistic), values)
            row.in_shadow = in_shadow[index]
