"""Victims: whatever turns a conditioning input into a reconstruction of the ground truth.

`load(spec)` returns the generator as an `nn.Module`; `open_victim(spec)` wraps it (or a folder of
saved outputs) for the scorer. Specs are the command-line forms: `recon:DIR` (outputs queried beforehand, matched by
id), `torchscript:PATH`, `python:MODULE:FACTORY` (weights via `weights=`), and the public
checkpoint families `pix2pix:CKPT`, `pix2pixhd:CKPT`, `spade:CKPT`. Every victim returns, per
item, an RGB tensor in [0, 1] or the reason it could not.
"""
from __future__ import annotations

import importlib
import inspect
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data import IMAGE_SUFFIXES
from ..images import ImageError, load_rgb
from ..batch import Prepared
from ..pipeline import same_size_groups
from ..preprocess import to_tensor

Reconstruction = torch.Tensor | str


class VictimError(ValueError):
    """A victim spec or checkpoint that cannot be used; the message says what to change."""


def check_output(image: torch.Tensor, image_id: str) -> Reconstruction:
    """An output is usable when it is an RGB image of finite values; else the reason."""
    if image.dim() != 3 or image.shape[0] != 3:
        return f"{image_id}: victim output has shape {tuple(image.shape)}, expected 3 channels (RGB)"
    if not torch.isfinite(image).all():
        return f"{image_id}: victim output contains NaN or inf"
    return image


class ModelVictim:
    """An `nn.Module` generator run in batches; handles the value-range contract."""

    def __init__(self, module: nn.Module, *, device: torch.device | str = "cpu", value_range: str = "-1,1",
                 seed: int = 0) -> None:
        self.device = torch.device(device)
        self.module = module.to(self.device)
        self.signed = value_range == "-1,1"
        self.seed = seed
        self.takes_seeds = "seeds" in inspect.signature(self.module.forward).parameters
        if getattr(module, "use_instance", False):
            raise VictimError("this checkpoint expects instance maps (trained without --no_instance); memscore does "
                              "not read instance maps, so it cannot feed this model")

    @property
    def takes_labels(self) -> bool:
        """Label-map generators (pix2pixHD, SPADE with label_nc > 0) take integer class ids, not RGB."""
        return getattr(self.module, "label_nc", 0) > 0

    @torch.no_grad()
    def reconstruct(self, items: list[Prepared]) -> list[Reconstruction]:
        from ..seeding import image_seed
        results: list[Reconstruction] = [""] * len(items)
        for group in same_size_groups([item.x for item in items]):
            x = torch.stack([items[i].x for i in group]).to(self.device)
            if self.takes_labels:
                x = x.round().long()
            elif self.signed:
                x = x * 2.0 - 1.0
            if self.takes_seeds:
                seeds = torch.tensor([image_seed(self.seed, items[i].pair.id) >> 1 for i in group], dtype=torch.int64)
                out = self.module(x, seeds=seeds)
            else:
                out = self.module(x)
            out = ((out + 1.0) / 2.0 if self.signed else out).float()
            for row, index in enumerate(group):
                results[index] = check_output(out[row], items[index].pair.id)
        return results


class ReconFolder:
    """Victim outputs obtained beforehand (black-box API queries), one file per id under a folder."""

    takes_labels = False

    def __init__(self, folder: str) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise VictimError(f"recon folder {self.folder} does not exist")

    def path_for(self, image_id: str) -> Path | None:
        for suffix in IMAGE_SUFFIXES:
            candidate = self.folder / f"{image_id}{suffix}"
            if candidate.is_file():
                return candidate
        return None

    def reconstruct(self, items: list[Prepared]) -> list[Reconstruction]:
        results: list[Reconstruction] = []
        for item in items:
            path = self.path_for(item.pair.id)
            if path is None:
                results.append(f"{item.pair.id}: no reconstruction under {self.folder} (looked for {item.pair.id}.*)")
                continue
            try:
                results.append(check_output(to_tensor(load_rgb(str(path))), item.pair.id))
            except ImageError as error:
                results.append(error.reason)
        return results


def _load_python(target: str, weights: str | None) -> nn.Module:
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
        from .checkpoint import load_state_dict_strict
        load_state_dict_strict(module, weights, family="python", hint=f"weights must match {module_name}:{factory_name}()")
    return module


def load(spec: str, *, weights: str | None = None, **options: Any) -> nn.Module:
    """The generator named by `spec` as an `nn.Module` producing images in [-1, 1] (or [0, 1] by contract)."""
    kind, _, target = spec.partition(":")
    if not target:
        raise VictimError(f"victim spec {spec!r} needs KIND:TARGET (recon, torchscript, python, pix2pix, pix2pixhd, spade)")
    if kind == "torchscript":
        if not Path(target).is_file():
            raise VictimError(f"TorchScript file {target} does not exist")
        try:
            return torch.jit.load(target, map_location="cpu").eval()
        except RuntimeError as error:
            raise VictimError(f"{target}: not a loadable TorchScript module: {error}") from error
    if kind == "python":
        return _load_python(target, weights).eval()
    if kind in ("pix2pix", "pix2pixhd", "spade"):
        family = importlib.import_module(f".{kind}", __name__)
        return family.load(target, **options)
    raise VictimError(f"unknown victim kind {kind!r} in {spec!r}")


def open_victim(spec: str, *, weights: str | None = None, device: torch.device | str = "cpu", value_range: str = "-1,1",
         seed: int = 0, **options: Any) -> ModelVictim | ReconFolder:
    """A ready victim for the scorer, from its command-line spec."""
    kind, _, target = spec.partition(":")
    if kind == "recon":
        return ReconFolder(target)
    return ModelVictim(load(spec, weights=weights, **options), device=device, value_range=value_range,
                       seed=seed)
