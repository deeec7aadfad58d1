"""pix2pix victims: the generators and PatchGAN of junyanz/pytorch-CycleGAN-and-pix2pix, key for key.
Pix2PixVictim replays the public test script (train-mode BatchNorm and dropout, one image at a time) batched."""
from __future__ import annotations

import os
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UsageError
from .checkpoint import Checkpoint, FrozenVictim, load_state_dict_strict

UNET_DOWNS = {"unet_64": 6, "unet_128": 7, "unet_256": 8}  # unet_64: the public UnetGenerator with 6 downs
RESNET_BLOCKS = {"resnet_6blocks": 6, "resnet_9blocks": 9}
NORMS = ("batch", "instance", "none")
MODES = ("train", "eval")


def _norm_layer(norm: str) -> Callable[[int], nn.Module]:
    """The public `get_norm_layer`; 'none' gives parameter-free identities so indices stay put."""
    if norm == "batch":
        return lambda c: nn.BatchNorm2d(c, affine=True, track_running_stats=True)
    if norm == "instance":
        return lambda c: nn.InstanceNorm2d(c, affine=False, track_running_stats=False)
    if norm == "none":
        return lambda c: nn.Identity()
    raise UsageError(f"pix2pix norm {norm!r} is not one of {NORMS}")


class UnetSkipConnectionBlock(nn.Module):
    """x -> [x, up(sub(down(x)))]; the outermost block returns the branch alone."""

    def __init__(
        self,
        outer_nc: int,
        inner_nc: int,
        input_nc: int | None = None,
        submodule: nn.Module | None = None,
        outermost: bool = False,
        innermost: bool = False,
        norm: str = "batch",
        use_dropout: bool = False,
    ) -> None:
        super().__init__()
        self.outermost = outermost
        norm_layer, use_bias = _norm_layer(norm), norm == "instance"
        input_nc = outer_nc if input_nc is None else input_nc
        downconv = nn.Conv2d(input_nc, inner_nc, kernel_size=4, stride=2, padding=1, bias=use_bias)
        downrelu = nn.LeakyReLU(0.2, True)
        uprelu = nn.ReLU(True)
        if outermost:
            upconv = nn.ConvTranspose2d(inner_nc * 2, outer_nc, kernel_size=4, stride=2, padding=1)
            layers = [downconv, submodule, uprelu, upconv, nn.Tanh()]
        elif innermost:
            upconv = nn.ConvTranspose2d(inner_nc, outer_nc, kernel_size=4, stride=2, padding=1, bias=use_bias)
            layers = [downrelu, downconv, uprelu, upconv, norm_layer(outer_nc)]
        else:
            upconv = nn.ConvTranspose2d(inner_nc * 2, outer_nc, kernel_size=4, stride=2, padding=1, bias=use_bias)
            layers = [downrelu, downconv, norm_layer(inner_nc), submodule, uprelu, upconv, norm_layer(outer_nc)]
            if use_dropout:
                layers.append(nn.Dropout(0.5))
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The in-place LeakyReLU opening self.model also rewrites x before the concatenation, as upstream.
        return self.model(x) if self.outermost else torch.cat([x, self.model(x)], 1)


class UnetGenerator(nn.Module):
    """U-Net with `num_downs` halvings (7 for 128x128, 8 for 256x256 inputs down to 1x1)."""

    def __init__(
        self,
        input_nc: int,
        output_nc: int,
        num_downs: int,
        ngf: int = 64,
        norm: str = "batch",
        use_dropout: bool = False,
    ) -> None:
        super().__init__()
        block = UnetSkipConnectionBlock(ngf * 8, ngf * 8, norm=norm, innermost=True)
        for _ in range(num_downs - 5):
            block = UnetSkipConnectionBlock(ngf * 8, ngf * 8, submodule=block, norm=norm, use_dropout=use_dropout)
        block = UnetSkipConnectionBlock(ngf * 4, ngf * 8, submodule=block, norm=norm)
        block = UnetSkipConnectionBlock(ngf * 2, ngf * 4, submodule=block, norm=norm)
        block = UnetSkipConnectionBlock(ngf, ngf * 2, submodule=block, norm=norm)
        self.model = UnetSkipConnectionBlock(
            output_nc, ngf, input_nc=input_nc, submodule=block, outermost=True, norm=norm
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class ResnetBlock(nn.Module):
    """x + conv_block(x), reflect padding, optional dropout between the two convolutions."""

    def __init__(self, dim: int, norm: str, use_dropout: bool, use_bias: bool) -> None:
        super().__init__()
        norm_layer = _norm_layer(norm)
        layers = [
            nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, kernel_size=3, bias=use_bias), norm_layer(dim), nn.ReLU(True)
        ]
        if use_dropout:
            layers.append(nn.Dropout(0.5))
        layers += [nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, kernel_size=3, bias=use_bias), norm_layer(dim)]
        self.conv_block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_block(x)


class ResnetGenerator(nn.Module):
    """Johnson-style encoder, `n_blocks` residual blocks at 1/4 resolution, transposed-conv decoder."""

    def __init__(
        self,
        input_nc: int,
        output_nc: int,
        ngf: int = 64,
        norm: str = "batch",
        use_dropout: bool = False,
        n_blocks: int = 6,
    ) -> None:
        super().__init__()
        norm_layer, use_bias = _norm_layer(norm), norm == "instance"
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(3),
            nn.Conv2d(input_nc, ngf, kernel_size=7, bias=use_bias),
            norm_layer(ngf),
            nn.ReLU(True),
        ]
        for mult in (1, 2):
            layers += [
                nn.Conv2d(ngf * mult, ngf * mult * 2, kernel_size=3, stride=2, padding=1, bias=use_bias),
                norm_layer(ngf * mult * 2),
                nn.ReLU(True),
            ]
        layers += [ResnetBlock(ngf * 4, norm, use_dropout, use_bias) for _ in range(n_blocks)]
        for mult in (4, 2):
            layers += [
                nn.ConvTranspose2d(
                    ngf * mult, ngf * mult // 2, kernel_size=3, stride=2, padding=1, output_padding=1, bias=use_bias
                ),
                norm_layer(ngf * mult // 2),
                nn.ReLU(True),
            ]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, output_nc, kernel_size=7), nn.Tanh()]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class NLayerDiscriminator(nn.Module):
    """PatchGAN: `n_layers` stride-2 convolutions, then two stride-1 ones down to one logit map."""

    def __init__(self, input_nc: int, ndf: int = 64, n_layers: int = 3, norm: str = "batch") -> None:
        super().__init__()
        norm_layer, use_bias = _norm_layer(norm), norm == "instance"
        layers: list[nn.Module] = [
            nn.Conv2d(input_nc, ndf, kernel_size=4, stride=2, padding=1), nn.LeakyReLU(0.2, True)
        ]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2**n, 8)
            stride = 2 if n < n_layers else 1
            layers += [
                nn.Conv2d(ndf * prev, ndf * mult, kernel_size=4, stride=stride, padding=1, bias=use_bias),
                norm_layer(ndf * mult),
                nn.LeakyReLU(0.2, True),
            ]
        layers.append(nn.Conv2d(ndf * mult, 1, kernel_size=4, stride=1, padding=1))
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def build_generator(
    netG: str, input_nc: int = 3, output_nc: int = 3, ngf: int = 64, norm: str = "batch", use_dropout: bool = False
) -> nn.Module:
    """The public `define_G` network (without weight init) for netG in unet_128/256, resnet_6/9blocks."""
    _norm_layer(norm)  # validates before building
    if netG in UNET_DOWNS:
        return UnetGenerator(input_nc, output_nc, UNET_DOWNS[netG], ngf, norm, use_dropout)
    if netG in RESNET_BLOCKS:
        return ResnetGenerator(input_nc, output_nc, ngf, norm, use_dropout, RESNET_BLOCKS[netG])
    raise UsageError(f"pix2pix netG {netG!r} is not one of {sorted(UNET_DOWNS) + sorted(RESNET_BLOCKS)}")


def build_discriminator(input_nc: int, ndf: int = 64, n_layers: int = 3, norm: str = "batch") -> nn.Module:
    """The public NLayerDiscriminator (netD 'basic' is n_layers=3); input_nc = input + output channels."""
    return NLayerDiscriminator(input_nc, ndf, n_layers, norm)


class Pix2PixVictim(FrozenVictim):
    """A pix2pix generator run the way the public test script runs it.

    mode "eval" is `netG.eval()` (the public `--eval` flag). mode "train" is the default public
    behaviour, one image per batch: every BatchNorm normalises each image by its own statistics and
    dropout stays on, image b drawing its masks from a torch.Generator seeded with seeds[b] (every
    image uses `dropout_seed` when seeds is None). Outputs therefore do not depend on batch
    composition, and the checkpoint's running statistics are never touched.
    """

    def __init__(self, generator: nn.Module, mode: str = "train", dropout_seed: int = 0) -> None:
        if mode not in MODES:
            raise UsageError(f"pix2pix mode {mode!r} is not one of {MODES}")
        super().__init__(generator)
        self.mode = mode
        self.dropout_seed = dropout_seed

    def forward(self, x: torch.Tensor, seeds: torch.Tensor | None = None) -> torch.Tensor:
        """x: [B, C, H, W] in [-1, 1]; seeds: optional int64 [B] per-image dropout seeds."""
        if self.mode == "eval":
            return self.generator(x)
        if seeds is None:
            per_image = [self.dropout_seed] * x.shape[0]
        else:
            per_image = [int(s) for s in seeds.reshape(-1).tolist()]
            if len(per_image) != x.shape[0]:
                raise UsageError(f"got {len(per_image)} seeds for a batch of {x.shape[0]} images")
        gens = [torch.Generator(device=x.device).manual_seed(s) for s in per_image]
        return self._run(self.generator, x, gens)

    def _run(self, module: nn.Module, x: torch.Tensor, gens: list[torch.Generator]) -> torch.Tensor:
        """The generator's own forward, with BatchNorm and Dropout replaced by their per-image forms."""
        if isinstance(module, (UnetGenerator, ResnetGenerator)):
            return self._run(module.model, x, gens)
        if isinstance(module, nn.Sequential):
            for layer in module:
                x = self._run(layer, x, gens)
            return x
        if isinstance(module, UnetSkipConnectionBlock):
            branch = self._run(module.model, x, gens)
            return branch if module.outermost else torch.cat([x, branch], 1)
        if isinstance(module, ResnetBlock):
            return x + self._run(module.conv_block, x, gens)
        if isinstance(module, nn.BatchNorm2d):
            # Train-mode BatchNorm of a batch of one = biased per-image statistics, no stat update.
            return F.instance_norm(x, weight=module.weight, bias=module.bias, eps=module.eps)
        if isinstance(module, nn.Dropout):
            keep = 1.0 - module.p
            shape = x.shape[1:]
            masks = [torch.empty(shape, device=x.device, dtype=x.dtype).bernoulli_(keep, generator=g) for g in gens]
            return x * torch.stack(masks) / keep
        return module(x)


def load(
    checkpoint: str | os.PathLike | Checkpoint,
    netG: str = "unet_256",
    ngf: int = 64,
    norm: str = "batch",
    use_dropout: bool = True,
    input_nc: int = 3,
    output_nc: int = 3,
    mode: str = "train",
    dropout_seed: int = 0,
) -> Pix2PixVictim:
    """A pix2pix `*_net_G.pth` as a victim; defaults are the public pix2pix training defaults.

    use_dropout=False matches `--no_dropout`; for U-Nets it changes no key, so it cannot be checked.
    """
    generator = build_generator(netG, input_nc, output_nc, ngf, norm, use_dropout)
    load_state_dict_strict(
        generator,
        checkpoint,
        family=f"pix2pix netG={netG} ngf={ngf} norm={norm} use_dropout={use_dropout} "
        f"input_nc={input_nc} output_nc={output_nc}",
        hint="match the training options: --netG (unet_256, unet_128, resnet_9blocks, resnet_6blocks), --ngf, "
        "--norm (batch, instance, none), --input_nc/--output_nc, and --no_dropout for resnet generators",
    )
    return Pix2PixVictim(generator, mode, dropout_seed)
