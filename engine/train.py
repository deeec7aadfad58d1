"""A pix2pix victim trainer for experiments and the demo (the public recipe, small and seeded).

U-Net generator and PatchGAN discriminator from `memscore.victims.pix2pix`, vanilla GAN loss plus
L1, Adam, constant learning rate for the first half of the epochs and a linear decay to zero over
the second, and the public random jitter (resize to 286/256 of the size, random crop, random flip;
`use_jitter=False` turns it off), with the public settings below; `TrainingRecipe` holds what a user chooses. Trained on the member split only.
The checkpoint carries its own model arguments, nanoGPT style (`{"model": state_dict, "model_args":
VictimArch}`), so `--victim pix2pix:CKPT` and `open_victim("pix2pix:CKPT")` load it with no options.
"""
from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from .data import Dataset
from .devices import resolve_device
from .errors import PathError, UsageError
from .images import ImageError, load_rgb
from .outputs import write_file
from .preprocess import resize, to_tensor
from .settings import WHOLE_POSITIVE, check_settings, setting
from .victims.checkpoint import MODEL_ARGS_KEY, read_checkpoint
from .victims.pix2pix import NORMS, RESNET_BLOCKS, UNET_DOWNS, build_discriminator, build_generator

# The public recipe (junyanz/pytorch-CycleGAN-and-pix2pix train options for pix2pix)
LEARNING_RATE = 2e-4  # --lr
BETAS = (0.5, 0.999)  # --beta1 0.5
L1_WEIGHT = 100.0  # --lambda_L1
JITTER_LOAD_RATIO = 286 / 256  # --load_size 286 for --crop_size 256: images are loaded this much larger, then cropped
FLIP_PROBABILITY = 0.5  # unless --no_flip
INIT_STD = 0.02  # --init_type normal --init_gain 0.02
D_LAYERS = 3  # --netD basic
NDF = 16  # discriminator width (the tests train a smaller one)

EpochCallback = Callable[[int, int, float, float], None]
"""Called by a trainer after each epoch with (epochs done, epochs in all, the epoch's mean loss, seconds left as
estimated from this call's pace): how `memscore shadows train` shows each shadow's progress."""


def seconds_left(started: float, epochs_run: int, epochs_left: int) -> float:
    """Seconds the remaining epochs take at the pace since `started` (a `time.perf_counter()`)."""
    return (time.perf_counter() - started) / max(epochs_run, 1) * epochs_left


@dataclass(frozen=True)
class TrainingRecipe:
    """How a pix2pix victim is trained: `memscore train-victim` and every shadow of `memscore shadows train` use
    this one recipe (its options are generated from these declarations; shadows should match their victim)."""

    netG: str = setting("unet_128", "generator", choices=tuple(UNET_DOWNS) + tuple(RESNET_BLOCKS))
    size: int = setting(128, "square training size (the victim is then fed this size)", rule=WHOLE_POSITIVE)
    ngf: int = setting(16, "generator width (filters of the first layer)", rule=WHOLE_POSITIVE)
    norm: str = setting("instance", "normalisation layers", choices=NORMS)
    use_dropout: bool = setting(False, "dropout in the generator (the public pix2pix default for U-Nets)",
                                flag="--dropout")
    use_jitter: bool = setting(True, "no random resize-crop and flip (the public recipe has them)",
                               flag="--no-jitter")
    epochs: int = setting(20, "training epochs (constant rate for the first half, linear decay over the second)",
                          rule=WHOLE_POSITIVE)
    batch_size: int = setting(4, "pairs per step", rule=WHOLE_POSITIVE)

    def __post_init__(self) -> None:
        check_settings(self)

    def arch(self) -> VictimArch:
        """The generator's model arguments, as its checkpoint records them."""
        return VictimArch(netG=self.netG, ngf=self.ngf, norm=self.norm, use_dropout=self.use_dropout, size=self.size)


@dataclass(frozen=True)
class VictimArch:
    """The generator's model arguments (`pix2pix.load` options) and training size, saved in the checkpoint."""

    netG: str = "unet_128"
    ngf: int = 16
    norm: str = "instance"
    use_dropout: bool = False
    size: int = 128

    def load_options(self) -> dict:
        return {"netG": self.netG, "ngf": self.ngf, "norm": self.norm, "use_dropout": self.use_dropout}


def read_arch(checkpoint: str | Path) -> VictimArch | None:
    """The architecture a memscore-trained checkpoint carries (or, for older ones, its `CKPT.json`); None
    for a checkpoint without one, such as a public pix2pix checkpoint."""
    model_args = read_checkpoint(checkpoint).model_args
    return VictimArch(**model_args) if model_args else None


def load_pairs(dataset: Dataset, members: set[str] | None, size: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """All usable member pairs at `size` x `size`, as [N, 3, size, size] tensors in [-1, 1] (bad files skipped)."""
    xs, ys, skipped = [], [], []
    for pair in dataset.pairs():
        if members is not None and pair.id not in members:
            continue
        try:
            x = to_tensor(load_rgb(pair.input_path, pair.input_half))
            y = to_tensor(load_rgb(pair.target_path, pair.target_half))
        except ImageError as error:
            skipped.append(error.reason)
            continue
        xs.append(resize(x, (size, size)) * 2 - 1)
        ys.append(resize(y, (size, size)) * 2 - 1)
    if not xs:
        raise UsageError("no usable member pairs to train on")
    return torch.stack(xs), torch.stack(ys), skipped


def jitter(x: torch.Tensor, y: torch.Tensor, size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The public `resize_and_crop` + flip on a batch of loaded pairs (loaded at JITTER_LOAD_RATIO x `size`)."""
    load = x.shape[-1]
    crops_x, crops_y = [], []
    for index in range(x.shape[0]):
        top, left = (int(v) for v in torch.randint(0, load - size + 1, (2,), generator=generator))
        cx, cy = x[index, :, top: top + size, left: left + size], y[index, :, top: top + size, left: left + size]
        if torch.rand((), generator=generator) < FLIP_PROBABILITY:
            cx, cy = cx.flip(-1), cy.flip(-1)
        crops_x.append(cx)
        crops_y.append(cy)
    return torch.stack(crops_x), torch.stack(crops_y)


def train_pix2pix(dataset: Dataset, out: str | Path, recipe: TrainingRecipe = TrainingRecipe(), *,
                  members: set[str] | None = None, seed: int = 0, device: str = "auto", ndf: int = NDF,
                  checkpoint_every: int = 0, progress: bool = True,
                  on_checkpoint: Callable[[int, Path], None] | None = None, on_epoch: EpochCallback | None = None,
                  overwrite: bool = False) -> Path:
    """Train on the member pairs of `dataset` with `recipe`; write `out` (generator state dict and model arguments).
    An existing `out` is refused before training unless `overwrite`. `device`: as `memscore.devices.resolve_device`;
    `on_epoch` hears of every epoch (the L1 loss)."""
    if Path(out).exists() and not overwrite:
        raise PathError(f"{out} already exists; pass --overwrite to replace it, or choose another name")
    device = resolve_device(device)
    arch, epochs, batch_size, use_jitter = recipe.arch(), recipe.epochs, recipe.batch_size, recipe.use_jitter
    torch.manual_seed(seed)
    load_size = round(arch.size * JITTER_LOAD_RATIO) if use_jitter else arch.size
    x_all, y_all, skipped = load_pairs(dataset, members, load_size)
    if skipped:
        print(f"train-victim: skipped {len(skipped)} unreadable pairs, e.g. {skipped[0]}", file=sys.stderr)
    netG = build_generator(arch.netG, 3, 3, arch.ngf, arch.norm, arch.use_dropout).to(device)
    netD = build_discriminator(6, ndf, D_LAYERS, arch.norm).to(device)
    for net in (netG, netD):  # the public init: N(0, INIT_STD) convs
        for module in net.modules():
            if isinstance(module, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
                torch.nn.init.normal_(module.weight, 0.0, INIT_STD)
                if module.bias is not None:
                    torch.nn.init.zeros_(module.bias)
    opt_g = torch.optim.Adam(netG.parameters(), lr=LEARNING_RATE, betas=BETAS)
    opt_d = torch.optim.Adam(netD.parameters(), lr=LEARNING_RATE, betas=BETAS)
    decay_start = epochs // 2
    schedule = lambda e: 1.0 if e < decay_start else max(0.0, 1.0 - (e - decay_start) / max(epochs - decay_start, 1))
    sched_g = torch.optim.lr_scheduler.LambdaLR(opt_g, schedule)
    sched_d = torch.optim.lr_scheduler.LambdaLR(opt_d, schedule)
    order_gen = torch.Generator().manual_seed(seed)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    n = x_all.shape[0]
    bar = tqdm(range(epochs), desc=f"train-victim ({n} pairs)", unit="epoch", disable=not progress, file=sys.stderr)
    started = time.perf_counter()
    for epoch in bar:
        netG.train(), netD.train()
        total_l1 = 0.0
        for idx in torch.randperm(n, generator=order_gen).split(batch_size):
            x, y = x_all[idx], y_all[idx]
            if use_jitter:
                x, y = jitter(x, y, arch.size, order_gen)
            x, y = x.to(device), y.to(device)
            fake = netG(x)
            d_real = netD(torch.cat([x, y], 1))
            d_fake = netD(torch.cat([x, fake.detach()], 1))
            loss_d = 0.5 * (F.binary_cross_entropy_with_logits(d_real, torch.ones_like(d_real))
                            + F.binary_cross_entropy_with_logits(d_fake, torch.zeros_like(d_fake)))
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            opt_d.step()
            d_fake = netD(torch.cat([x, fake], 1))
            l1 = F.l1_loss(fake, y)
            loss_g = F.binary_cross_entropy_with_logits(d_fake, torch.ones_like(d_fake)) + L1_WEIGHT * l1
            opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
            opt_g.step()
            total_l1 += l1.item() * x.shape[0]
        sched_g.step(), sched_d.step()
        bar.set_postfix(l1=f"{total_l1 / n:.4f}")
        if on_epoch is not None:
            on_epoch(epoch + 1, epochs, total_l1 / n, seconds_left(started, epoch + 1, epochs - epoch - 1))
        if checkpoint_every and (epoch + 1) % checkpoint_every == 0 and epoch + 1 < epochs:
            path = out.with_name(f"{out.stem}_epoch{epoch + 1}{out.suffix}")
            save_generator(netG, arch, path, overwrite=overwrite)
            if on_checkpoint is not None:
                on_checkpoint(epoch + 1, path)
    save_generator(netG, arch, out, overwrite=overwrite)
    return out


def save_generator(netG: torch.nn.Module, arch: VictimArch, path: Path, *, overwrite: bool = False) -> None:
    """The generator's weights under "model" (where the loaders look for a wrapped state dict) and its
    model arguments beside them, both plain data that loads with weights_only=True; written whole or not at all."""
    state = {k: v.detach().cpu() for k, v in netG.state_dict().items()}
    write_file(path, lambda temporary: torch.save({"model": state, MODEL_ARGS_KEY: asdict(arch)}, temporary),
               overwrite=overwrite)
