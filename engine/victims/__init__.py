"""Victims: whatever turns a conditioning input into a reconstruction of the ground truth.

A victim spec is `KIND:TARGET`, parsed once by `parse_victim_spec`; `VICTIM_KINDS` maps each kind to
its opener and the options it takes: `recon:DIR` (outputs queried beforehand, matched by id),
`torchscript:PATH`, `python:MODULE:FACTORY` (weights via `weights=`), the public checkpoint
families `pix2pix:CKPT`, `pix2pixhd:CKPT`, `spade:CKPT`, and conditional diffusion models saved by
diffusers, `diffusers:DIR` (`memscore.victims.diffusion`). A family checkpoint written by `memscore
train-victim` carries its model arguments; options given explicitly win over them.

`load(spec)` returns the generator as an `nn.Module`; `open_victim(spec)` wraps it (or a folder of
saved outputs) for the scorer. Every victim returns, per item, an RGB tensor in [0, 1] or the reason
it could not.

A module (a `python:MODULE:FACTORY` victim's too) may be stochastic or white-box:
- stochastic: `forward(x, seeds)`, where seeds is int64 [N], one per image and sample
  (`memscore.seeding.sample_seed`); every random draw for image i must come from seeds[i] alone, so
  an output does not depend on the rest of its batch;
- white-box: `denoising_error(x, y, seeds) -> [N]`, a per-image statistic (lower = better fit) of
  the condition x and the target y, both [N, 3, H, W] in the victim's value range.
"""
from __future__ import annotations

import importlib
import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..batch import Prepared
from ..data import IMAGE_SUFFIXES, DatasetError, confined_path
from ..errors import UsageError
from ..images import ImageError, load_rgb
from ..preprocess import to_tensor
from ..seeding import sample_seed
from . import pix2pix, pix2pixhd, spade
from .checkpoint import load_state_dict_strict, read_checkpoint

Reconstruction = torch.Tensor | str


class VictimError(UsageError):
    """A victim spec or checkpoint that cannot be used; the message says what to change."""


def same_size_groups(tensors: list[torch.Tensor]) -> list[list[int]]:
    """Indices grouped by spatial size, so a victim without a fixed input size runs in batches."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for index, tensor in enumerate(tensors):
        groups.setdefault(tuple(tensor.shape), []).append(index)
    return list(groups.values())


def check_output(image: torch.Tensor, image_id: str) -> Reconstruction:
    """An output is usable when it is an RGB image of finite values; else the reason."""
    if image.dim() != 3 or image.shape[0] != 3:
        return f"{image_id}: victim output has shape {tuple(image.shape)}, expected 3 channels (RGB)"
    if not torch.isfinite(image).all():
        return f"{image_id}: victim output contains NaN or inf"
    return image


def at_size(image: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """`image` [C, H, W] resized (bilinear, antialiased) to `size`, as Lrec resizes its target; itself if it fits."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    return F.interpolate(image[None], size=tuple(size), mode="bilinear", align_corners=False, antialias=True)[0]


def _forward_arguments(module: nn.Module) -> list[str]:
    """Names of the module's forward arguments; a TorchScript method has a schema, not a Python signature."""
    if isinstance(module, torch.jit.ScriptModule):
        return [argument.name for argument in module.forward.schema.arguments]
    return list(inspect.signature(module.forward).parameters)


class ModelVictim:
    """An `nn.Module` generator run in batches; handles the value-range contract."""

    def __init__(self, module: nn.Module, *, device: torch.device | str = "cpu", value_range: str = "-1,1",
                 seed: int = 0) -> None:
        if getattr(module, "use_instance", False):
            raise VictimError("this checkpoint expects instance maps (trained without --no_instance); memscore does "
                              "not read instance maps, so it cannot feed this model")
        self.device = torch.device(device)
        self.module = module.to(self.device)
        self.signed = value_range == "-1,1"
        self.seed = seed
        self.takes_seeds = "seeds" in _forward_arguments(self.module)

    @property
    def takes_denoising(self) -> bool:
        """White-box victims give a denoising error (`denoising_error(x, y, seeds)`), see the module docstring."""
        return callable(getattr(self.module, "denoising_error", None))

    @property
    def takes_labels(self) -> bool:
        """Label-map generators (pix2pixHD, SPADE with label_nc > 0) take integer class ids, not RGB."""
        return getattr(self.module, "label_nc", 0) > 0

    def _seeds(self, items: list[Prepared], sample: int) -> torch.Tensor:
        return torch.tensor([sample_seed(self.seed, item.pair.id, sample) for item in items], dtype=torch.int64)

    @torch.no_grad()
    def reconstruct(self, items: list[Prepared], sample: int = 0) -> list[Reconstruction]:
        """Per item its output, or why there is none; `sample` k > 0 draws a stochastic victim's k-th other sample."""
        results: list[Reconstruction] = [""] * len(items)
        for group in same_size_groups([item.x for item in items]):
            x = torch.stack([items[i].x for i in group]).to(self.device)
            if self.takes_labels:
                x = x.round().long()
            elif self.signed:
                x = x * 2.0 - 1.0
            if self.takes_seeds:
                out = self.module(x, seeds=self._seeds([items[i] for i in group], sample))
            else:
                out = self.module(x)
            out = ((out + 1.0) / 2.0 if self.signed else out).float()
            for row, index in enumerate(group):
                results[index] = check_output(out[row], items[index].pair.id)
        return results

    @torch.no_grad()
    def denoising_errors(self, items: list[Prepared]) -> list[float | str]:
        """Per item the white-box victim's denoising error of its target given its input, or why there is none."""
        if not self.takes_denoising:
            raise VictimError(f"{type(self.module).__name__} gives no denoising error: a white-box victim's module "
                              "defines denoising_error(x, y, seeds) -> [N]")
        results: list[float | str] = [""] * len(items)
        for group in same_size_groups([item.x for item in items]):
            x = torch.stack([items[i].x for i in group]).to(self.device)
            y = torch.stack([at_size(items[i].y.to(self.device), x.shape[-2:]) for i in group])
            if self.signed:
                x, y = x * 2.0 - 1.0, y * 2.0 - 1.0
            errors = self.module.denoising_error(x, y, self._seeds([items[i] for i in group], 0)).float().tolist()
            for error, index in zip(errors, group):
                image_id = items[index].pair.id
                results[index] = error if math.isfinite(error) else f"{image_id}: denoising error is not finite"
        return results


class ReconFolder:
    """Victim outputs obtained beforehand (black-box API queries), one file per id under a folder.

    Ids come from manifests and may be hostile: a file name made from an id must stay inside the
    folder (`confined_path`), so `../x` fails that id instead of reading outside.
    """

    takes_labels = False

    def __init__(self, folder: str) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise VictimError(f"recon folder {self.folder} does not exist")

    def path_for(self, image_id: str) -> Path | None:
        """The saved output for `image_id` (any image suffix), None if there is none; DatasetError for an id
        that would name a file outside the folder."""
        for suffix in IMAGE_SUFFIXES:
            candidate = confined_path(self.folder, f"{image_id}{suffix}")
            if candidate.is_file():
                return candidate
        return None

    def reconstruct(self, items: list[Prepared], sample: int = 0) -> list[Reconstruction]:
        """The saved output of each item: a folder holds one per image, every `sample` of it (the scorer refuses
        `--samples` > 1 for victims without seeds)."""
        results: list[Reconstruction] = []
        for item in items:
            try:
                path = self.path_for(item.pair.id)
            except DatasetError as error:
                results.append(f"{item.pair.id}: no reconstruction read: {error}")
                continue
            if path is None:
                results.append(f"{item.pair.id}: no reconstruction under {self.folder} (looked for {item.pair.id}.*)")
                continue
            try:
                results.append(check_output(to_tensor(load_rgb(str(path))), item.pair.id))
            except ImageError as error:
                results.append(error.reason)
        return results


# ------------------------------------------------------------------------------------------ kinds

Opener = Callable[..., "nn.Module | ReconFolder"]


@dataclass(frozen=True)
class VictimKind:
    """One kind of victim spec: how to open its target, and the loader options it accepts."""

    name: str
    usage: str
    """The spec's form, e.g. `pix2pix:CKPT`."""
    open: Opener
    """(target, weights, **options) -> an nn.Module generator, or a ReconFolder."""
    options: tuple[str, ...] = ()
    takes_weights: bool = False
    """Whether `--victim-weights` applies (python: victims, whose module comes without weights)."""
    checkpoint: bool = False
    """Whether the target is a checkpoint that may carry its model arguments."""
    statistic: str = "lrec"
    """The membership statistic a store of this kind is built on unless asked otherwise (`ldenoise`: white-box)."""
    query_options: tuple[str, ...] = ()
    """The options that say how a model is queried rather than what it is (a sampler, its steps, ldenoise's
    timesteps): shadows of this kind are queried with the victim's (`shadow_options`)."""


VICTIM_KINDS: dict[str, VictimKind] = {}


def register_victim(name: str, usage: str, *, options: tuple[str, ...] = (), takes_weights: bool = False,
                    checkpoint: bool = False, statistic: str = "lrec",
                    query_options: tuple[str, ...] = ()) -> Callable[[Opener], Opener]:
    """Decorator: make `opener` the way to open `name:TARGET` specs."""
    def register(opener: Opener) -> Opener:
        VICTIM_KINDS[name] = VictimKind(name, usage, opener, options, takes_weights, checkpoint, statistic,
                                        query_options)
        return opener
    return register


@dataclass(frozen=True)
class VictimSpec:
    """A parsed victim spec: its kind (a key of VICTIM_KINDS) and target (folder, file, or MODULE:FACTORY)."""

    kind: str
    target: str

    def __str__(self) -> str:
        return f"{self.kind}:{self.target}"


def victim_forms() -> tuple[str, ...]:
    """How each registered kind of victim is written (`recon:DIR`, `pix2pix:CKPT`, ...), in registry order."""
    return tuple(entry.usage for entry in VICTIM_KINDS.values())


def parse_victim_spec(spec: str) -> VictimSpec:
    """`KIND:TARGET` -> VictimSpec; VictimError naming the valid forms when the spec has none of them."""
    kind, sep, target = spec.partition(":")
    forms = ", ".join(victim_forms())
    if not sep and kind not in VICTIM_KINDS:
        raise VictimError(f"victim spec {spec!r} is not KIND:TARGET; a victim is one of: {forms}")
    if kind not in VICTIM_KINDS:
        raise VictimError(f"victim spec {spec!r}: unknown kind {kind!r}; a victim is one of: {forms}")
    if not target:
        raise VictimError(f"victim spec {spec!r} lacks its target: write {VICTIM_KINDS[kind].usage}")
    return VictimSpec(kind, target)


def _open(spec: str, weights: str | None, options: dict[str, Any]) -> nn.Module | ReconFolder:
    """Parse `spec`, check that its kind takes the options and weights given, and open it."""
    parsed = parse_victim_spec(spec)
    kind = VICTIM_KINDS[parsed.kind]
    unknown = sorted(set(options) - set(kind.options))
    if unknown:
        valid = f"valid options: {', '.join(kind.options)}" if kind.options else "it takes no options"
        raise VictimError(f"unknown victim option(s) {', '.join(unknown)} for {kind.usage}; {valid}")
    if weights and not kind.takes_weights:
        raise VictimError(f"--victim-weights is for python:MODULE:FACTORY victims; {kind.usage} takes none")
    return kind.open(parsed.target, weights, **options)


def _register_family(name: str, load_family: Callable[..., nn.Module]) -> None:
    """`name:CKPT` opens with `load_family`, whose parameters after the checkpoint are the kind's options."""
    options = tuple(inspect.signature(load_family).parameters)[1:]

    def open_family(target: str, weights: str | None, **explicit: Any) -> nn.Module:
        checkpoint = read_checkpoint(target)
        # nanoGPT style: the checkpoint's own model arguments, then what the caller names explicitly
        own = {key: value for key, value in checkpoint.model_args.items() if key in options}
        return load_family(checkpoint, **{**own, **explicit})

    register_victim(name, f"{name}:CKPT", options=options, checkpoint=True)(open_family)


@register_victim("recon", "recon:DIR")
def _open_recon(target: str, weights: str | None) -> ReconFolder:
    return ReconFolder(target)


@register_victim("torchscript", "torchscript:PATH")
def _open_torchscript(target: str, weights: str | None) -> nn.Module:
    if not Path(target).is_file():
        raise VictimError(f"TorchScript file {target} does not exist")
    try:
        return torch.jit.load(target, map_location="cpu")
    except RuntimeError as error:
        raise VictimError(f"{target}: not a loadable TorchScript module: {error}") from error


@register_victim("python", "python:MODULE:FACTORY", takes_weights=True)
def _open_python(target: str, weights: str | None) -> nn.Module:
    module_name, _, factory_name = target.partition(":")
    if not module_name or not factory_name:
        raise VictimError(f"python victim spec must be python:MODULE:FACTORY, got python:{target}")
    try:
        factory = getattr(importlib.import_module(module_name), factory_name)
    except (ImportError, AttributeError) as error:
        raise VictimError(f"cannot import {factory_name} from {module_name}: {error}") from error
    module = factory()
    if not isinstance(module, nn.Module):
        raise VictimError(f"{module_name}:{factory_name}() returned {type(module).__name__}, not an nn.Module")
    if weights:
        load_state_dict_strict(module, weights, family="python", hint=f"weights must match {module_name}:{factory_name}()")
    return module


for _name, _family in (("pix2pix", pix2pix), ("pix2pixhd", pix2pixhd), ("spade", spade)):
    _register_family(_name, _family.load)


def _diffusion():
    """`memscore.victims.diffusion`, imported when a diffusers victim is first asked for (diffusers takes seconds to
    import)."""
    from . import diffusion
    return diffusion


@register_victim("diffusers", "diffusers:DIR", options=("concat", "sampler", "steps", "eta", "timesteps", "noises"),
                 statistic="ldenoise", query_options=("sampler", "steps", "eta", "timesteps", "noises"))
def _open_diffusers(target: str, weights: str | None, **options: Any) -> nn.Module:
    return _diffusion().load_diffusers(target, **options)


# ------------------------------------------------------------------------------------------ entry points

def load(spec: str, *, weights: str | None = None, **options: Any) -> nn.Module:
    """The generator named by `spec` as an `nn.Module` producing images in [-1, 1] (or [0, 1] by contract)."""
    opened = _open(spec, weights, options)
    if not isinstance(opened, nn.Module):
        raise VictimError(f"{spec}: a folder of outputs, not a model to load")
    return opened.eval()


def open_victim(spec: str, *, weights: str | None = None, device: torch.device | str = "cpu", value_range: str = "-1,1",
                seed: int = 0, **options: Any) -> ModelVictim | ReconFolder:
    """A ready victim for the scorer, from its spec; VictimError for an unknown kind or option."""
    opened = _open(spec, weights, options)
    if isinstance(opened, ReconFolder):
        return opened
    return ModelVictim(opened.eval(), device=device, value_range=value_range, seed=seed)


def default_statistic(spec: str) -> str:
    """The statistic a store of this victim is built on unless asked otherwise: `ldenoise` for white-box kinds
    (diffusers), else `lrec` (also for a spec not written yet, such as the API's empty default)."""
    kind = VICTIM_KINDS.get(spec.partition(":")[0])
    return kind.statistic if kind is not None else "lrec"


def shadow_options(shadow_spec: str, victim_options: dict[str, Any]) -> dict[str, Any]:
    """The victim's options a shadow (`shadow_spec`) is queried with too, so the victim and every shadow are measured
    alike: those of the shadow kind's `query_options` (none for the GAN families, whose checkpoints carry all)."""
    kind = VICTIM_KINDS[parse_victim_spec(shadow_spec).kind]
    return {key: value for key, value in victim_options.items() if key in kind.query_options}


def trained_size(spec: str) -> int | None:
    """The square side a `memscore train-victim` checkpoint was trained at (its model arguments' `size`) or a
    diffusers unet's sample_size, so a run can feed it images of that size; None for other victims."""
    parsed = parse_victim_spec(spec)
    if parsed.kind == "diffusers":
        return _diffusion().sample_size_of(parsed.target)
    if not VICTIM_KINDS[parsed.kind].checkpoint:
        return None
    return read_checkpoint(parsed.target).model_args.get("size")
