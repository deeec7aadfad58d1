"""The kinds of victim memscore trains (`train-victim --kind`, `shadows train --kind`): each kind's recipe, its
trainer, and how the trained result is opened as a victim. A new kind is one entry of `TRAINERS`."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .train import TrainingRecipe, train_pix2pix
from .train_diffusion import DiffusionRecipe, train_diffusion


@dataclass(frozen=True)
class TrainerKind:
    """One kind of trained victim."""

    name: str
    recipe: type
    """Its settings dataclass (the command's options are generated from its declarations)."""
    train: Callable[..., Path]
    """(dataset, out, recipe, *, members, seed, device, progress, on_epoch, overwrite) -> out."""
    victim_kind: str
    """The victim spec kind that opens the result (`memscore.victims.VICTIM_KINDS`)."""
    output_name: str
    """What a shadow's result is called inside its folder (a checkpoint file or a model folder)."""

    def victim_spec(self, path: str | Path) -> str:
        """How a result of this kind at `path` is opened as a victim (`diffusers:PATH`, `pix2pix:PATH`)."""
        return f"{self.victim_kind}:{path}"


TRAINERS: dict[str, TrainerKind] = {kind.name: kind for kind in (
    TrainerKind("pix2pix", TrainingRecipe, train_pix2pix, "pix2pix", "generator.pth"),
    TrainerKind("diffusion", DiffusionRecipe, train_diffusion, "diffusers", "victim"),
)}
RECIPES: dict[str, type] = {name: kind.recipe for name, kind in TRAINERS.items()}
