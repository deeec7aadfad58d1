"""A conditional diffusion victim trainer for experiments and shadows (small, seeded, resumable).

A diffusers `UNet2DModel` takes the noisy target and the conditioning image concatenated on channels (noisy
first, as `memscore.victims.diffusion` reads it) and learns the DDPM loss ||eps - eps_theta(x_t, t, c)||^2 with
a linear-beta `DDPMScheduler` of `TRAIN_TIMESTEPS` steps; AdamW at a constant rate for the first half of the
epochs and a linear decay to zero over the second, the pix2pix recipe's jitter (`memscore.train.jitter`), bf16
autocast where the hardware runs it natively. Trained on the member split only.

The result is a `diffusers:` folder as `save_pretrained` writes a DDPMPipeline (`unet/`, `scheduler/`, safetensors
weights) plus `memscore_training.json` (recipe, seed, members digest, final loss). While training, the state
(weights, optimiser, random generators, epoch) is saved every `checkpoint_every` epochs to `OUT.training/`: a
rerun of the same training resumes there and ends bit-identical to an uninterrupted one.
"""
from __future__ import annotations

import hashlib
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from tqdm import tqdm

from .data import Dataset, ids_digest
from .devices import resolve_device
from .errors import PathError
from .outputs import build_folder, claim_folder, remove_folder, require_replaceable, write_file, write_json
from .precision import PRECISIONS, autocast, resolve_precision
from .settings import WHOLE_POSITIVE, Rule, check_settings, setting
from .train import JITTER_LOAD_RATIO, EpochCallback, jitter, load_pairs, seconds_left

if TYPE_CHECKING:
    from diffusers import DDPMScheduler, UNet2DModel

TRAIN_TIMESTEPS = 1000
LEARNING_RATE = 2e-4
LEVELS = (1, 2, 2, 4)
"""Channel multipliers of the UNet's levels (each level halves the resolution)."""
NORM_GROUPS = 8
"""Groups of the UNet's group norms (fewer for a narrower first level)."""
STATE = "state.pt"
STATE_SUFFIX = ".training"
"""The state of an interrupted training of OUT lies in the folder OUT.training, beside it."""
TRAINING_RECORD = "memscore_training.json"


class TrainingStateError(PathError):
    """An interrupted training that this call cannot resume (another recipe, seed or training data)."""


SIZE_RULE = Rule(lambda v: isinstance(v, int) and v >= 2 ** (len(LEVELS) - 1) and v % 2 ** (len(LEVELS) - 1) == 0,
                 f"a multiple of {2 ** (len(LEVELS) - 1)} (each of the UNet's {len(LEVELS)} levels halves it)")
WIDTH_RULE = Rule(lambda v: isinstance(v, int) and v >= 1 and v % min(NORM_GROUPS, v) == 0,
                  f"a whole number from 1 to {NORM_GROUPS}, or a multiple of {NORM_GROUPS} (the groups of its norms)")


@dataclass(frozen=True)
class DiffusionRecipe:
    """How a diffusion victim is trained: `memscore train-victim --kind diffusion` and every shadow of
    `memscore shadows train --kind diffusion` use this one recipe (options generated from these declarations)."""

    size: int = setting(32, "square training size (the model's sample_size: the victim is then fed this size)",
                        rule=SIZE_RULE)
    width: int = setting(32, "UNet width (channels of its first level; the levels have 1, 2, 2, 4 times it)",
                         rule=WIDTH_RULE)
    use_jitter: bool = setting(True, "no random resize-crop and flip (the pix2pix recipe has them)",
                               flag="--no-jitter")
    epochs: int = setting(300, "training epochs (constant rate for the first half, linear decay over the second)",
                          rule=WHOLE_POSITIVE)
    batch_size: int = setting(16, "pairs per step", rule=WHOLE_POSITIVE)
    precision: str = setting("auto", "network arithmetic: auto = bf16 where the hardware runs it natively, else fp32",
                             choices=PRECISIONS)

    def __post_init__(self) -> None:
        check_settings(self)

    def build_unet(self) -> UNet2DModel:
        """A freshly initialised conditional UNet for this recipe (noisy target + RGB condition -> noise)."""
        from diffusers import UNet2DModel
        levels = len(LEVELS)
        return UNet2DModel(sample_size=self.size, in_channels=6, out_channels=3, layers_per_block=2,
                           block_out_channels=tuple(self.width * m for m in LEVELS),
                           down_block_types=("DownBlock2D",) * levels, up_block_types=("UpBlock2D",) * levels,
                           norm_num_groups=min(NORM_GROUPS, self.width))


def noise_scheduler() -> DDPMScheduler:
    """The forward process every memscore-trained diffusion victim uses (saved beside its UNet)."""
    from diffusers import DDPMScheduler
    return DDPMScheduler(num_train_timesteps=TRAIN_TIMESTEPS, beta_schedule="linear", prediction_type="epsilon")


@dataclass
class _Training:
    """What a resumed training needs: the model, the optimiser, the schedules and the generators."""

    unet: torch.nn.Module
    optimizer: torch.optim.Optimizer
    rate: torch.optim.lr_scheduler.LambdaLR
    order: torch.Generator
    noise: torch.Generator
    epoch: int = 0

    def state(self, identity: dict) -> dict:
        return {"identity": identity, "epoch": self.epoch, "unet": self.unet.state_dict(),
                "optimizer": self.optimizer.state_dict(), "rate": self.rate.state_dict(),
                "order": self.order.get_state(), "noise": self.noise.get_state()}

    def restore(self, state: dict) -> None:
        self.unet.load_state_dict(state["unet"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.rate.load_state_dict(state["rate"])
        self.order.set_state(state["order"])
        self.noise.set_state(state["noise"])
        self.epoch = int(state["epoch"])


def train_diffusion(dataset: Dataset, out: str | Path, recipe: DiffusionRecipe = DiffusionRecipe(), *,
                    members: set[str] | None = None, seed: int = 0, device: str = "auto", checkpoint_every: int = 10,
                    progress: bool = True, on_epoch: EpochCallback | None = None, overwrite: bool = False) -> Path:
    """Train on the member pairs of `dataset` with `recipe` and write the `diffusers:` folder `out`.

    An existing `out` is refused before training unless `overwrite` (and then replaced only if memscore made it).
    An interrupted training of the same recipe, seed and members resumes from `OUT.training/`; one of another is
    refused, naming what differs, unless `overwrite`."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise PathError(f"{out} already exists; pass --overwrite to replace it, or choose another name")
    if out.exists():
        require_replaceable(out, "victim")
    torch_device = resolve_device(device)
    precision = resolve_precision(recipe.precision, torch_device)
    load_size = round(recipe.size * JITTER_LOAD_RATIO) if recipe.use_jitter else recipe.size
    x_all, y_all, skipped = load_pairs(dataset, members, load_size)
    if skipped:
        print(f"train-victim: skipped {len(skipped)} unreadable pairs, e.g. {skipped[0]}", file=sys.stderr)
    identity = {"recipe": asdict(recipe), "seed": seed, "members_sha256": ids_digest(sorted(members or [])),
                "pairs": int(x_all.shape[0]), "data_sha256": _tensors_digest(x_all, y_all)}
    torch.manual_seed(seed)
    unet = recipe.build_unet().to(torch_device)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=LEARNING_RATE)
    half = recipe.epochs // 2
    rate = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda e: 1.0 if e < half else max(0.0, 1.0 - (e - half) / max(recipe.epochs - half, 1)))
    training = _Training(unet, optimizer, rate, torch.Generator().manual_seed(seed),
                         torch.Generator().manual_seed(seed + 1))
    state_dir = state_folder(out)
    _resume(training, state_dir, identity, overwrite)
    scheduler = noise_scheduler()
    n = x_all.shape[0]
    bar = tqdm(total=recipe.epochs, initial=training.epoch, desc=f"train diffusion ({n} pairs)", unit="epoch",
               disable=not progress, file=sys.stderr, dynamic_ncols=True)
    started, first_epoch, loss = time.perf_counter(), training.epoch, float("nan")
    while training.epoch < recipe.epochs:
        loss = _train_epoch(training, scheduler, x_all, y_all, recipe, torch_device, precision)
        training.epoch += 1
        rate.step()
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}")
        if on_epoch is not None:
            on_epoch(training.epoch, recipe.epochs, loss,
                     seconds_left(started, training.epoch - first_epoch, recipe.epochs - training.epoch))
        if checkpoint_every and training.epoch % checkpoint_every == 0 and training.epoch < recipe.epochs:
            write_file(state_dir / STATE, lambda path: torch.save(training.state(identity), path), overwrite=True)
    bar.close()
    record = {**identity, "epochs_done": training.epoch, "final_loss": loss, "timesteps": TRAIN_TIMESTEPS}
    build_folder(out, "victim", lambda folder: _save(unet, scheduler, record, folder), overwrite=overwrite)
    if state_dir.exists():
        remove_folder(state_dir, "training")
    return out


def state_folder(out: str | Path) -> Path:
    """Where the state of an interrupted training of `out` is kept (a folder memscore marks as `training`)."""
    return Path(out).with_name(Path(out).name + STATE_SUFFIX)


def _tensors_digest(*tensors: torch.Tensor) -> str:
    """sha256 of the pairs as trained on (pixels of every input and target, in order): the training data itself,
    whatever its dataset, direction or file names."""
    digest = hashlib.sha256()
    for tensor in tensors:
        digest.update(tensor.contiguous().numpy().tobytes())
    return digest.hexdigest()


def _resume(training: _Training, state_dir: Path, identity: dict, overwrite: bool) -> None:
    """Continue from the saved state of the same training; start over (with `overwrite`) or refuse otherwise."""
    claim_folder(state_dir, "training")
    path = state_dir / STATE
    if not path.is_file():
        return
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        saved = dict(state["identity"])
    except Exception as error:  # unreadable, or not a state this trainer wrote
        saved, reason = None, f"cannot be read as a training state ({type(error).__name__}: {error})"
    else:
        differs = sorted(k for k in identity if saved.get(k) != identity[k])
        reason = f"holds an interrupted training with another {', '.join(differs)}"
    if saved == identity:
        training.restore(state)
        return
    if not overwrite:
        raise TrainingStateError(f"{path} {reason}; rerun the training as it was to resume, or pass --overwrite to "
                                 "start over")
    remove_folder(state_dir, "training")
    claim_folder(state_dir, "training")


def _train_epoch(training: _Training, scheduler, x_all: torch.Tensor, y_all: torch.Tensor, recipe: DiffusionRecipe,
                 device: torch.device, precision: str) -> float:
    """One pass over the pairs in a seeded order; the mean DDPM loss."""
    training.unet.train()
    total, n = 0.0, x_all.shape[0]
    for index in torch.randperm(n, generator=training.order).split(recipe.batch_size):
        x, y = x_all[index], y_all[index]
        if recipe.use_jitter:
            x, y = jitter(x, y, recipe.size, training.order)
        noise = torch.randn(y.shape, generator=training.noise)
        t = torch.randint(0, TRAIN_TIMESTEPS, (y.shape[0],), generator=training.noise)
        noisy = scheduler.add_noise(y, noise, t)
        with autocast(precision, device):
            predicted = training.unet(torch.cat([noisy, x], 1).to(device), t.to(device)).sample
        loss = F.mse_loss(predicted.float(), noise.to(device))
        training.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        training.optimizer.step()
        total += loss.item() * y.shape[0]
    return total / n


def _save(unet: torch.nn.Module, scheduler, record: dict, folder: Path) -> None:
    """The DDPMPipeline layout (`unet/`, `scheduler/`, safetensors) and how the model was trained."""
    unet.save_pretrained(folder / "unet", safe_serialization=True)
    scheduler.save_pretrained(folder / "scheduler")
    write_json(folder / TRAINING_RECORD, record)

