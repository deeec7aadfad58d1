"""pix2pixHD victims: GlobalGenerator / LocalEnhancer of NVIDIA/pix2pixHD, key for key, plus the public
label-map encoding (one-hot classes, instance-boundary channel) so a victim takes label and instance maps."""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UsageError
from .checkpoint import Checkpoint, FrozenVictim, load_state_dict_strict

NETGS = ("global", "local")
NORMS = ("instance", "batch")


def _norm(norm: str, channels: int) -> nn.Module:
    """The public `get_norm_layer`: InstanceNorm2d without affine or stats, or affine BatchNorm2d."""
    if norm == "instance":
        return nn.InstanceNorm2d(channels, affine=False)
    if norm == "batch":
        return nn.BatchNorm2d(channels, affine=True)
    raise UsageError(f"pix2pixHD norm {norm!r} is not one of {NORMS}")


class ResnetBlock(nn.Module):
    """x + [pad, conv, norm, relu, pad, conv, norm](x); convolutions keep their bias."""

    def __init__(self, dim: int, norm: str) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, kernel_size=3), _norm(norm, dim), nn.ReLU(True),
            nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, kernel_size=3), _norm(norm, dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_block(x)


def _global_layers(
    input_nc: int, output_nc: int, ngf: int, n_downsampling: int, n_blocks: int, norm: str
) -> list[nn.Module]:
    layers: list[nn.Module] = [
        nn.ReflectionPad2d(3), nn.Conv2d(input_nc, ngf, kernel_size=7), _norm(norm, ngf), nn.ReLU(True)
    ]
    for i in range(n_downsampling):
        c = ngf * 2**i
        layers += [nn.Conv2d(c, c * 2, kernel_size=3, stride=2, padding=1), _norm(norm, c * 2), nn.ReLU(True)]
    layers += [ResnetBlock(ngf * 2**n_downsampling, norm) for _ in range(n_blocks)]
    for i in range(n_downsampling):
        c = ngf * 2 ** (n_downsampling - i)
        layers += [
            nn.ConvTranspose2d(c, c // 2, kernel_size=3, stride=2, padding=1, output_padding=1),
            _norm(norm, c // 2),
            nn.ReLU(True),
        ]
    return layers + [nn.ReflectionPad2d(3), nn.Conv2d(ngf, output_nc, kernel_size=7), nn.Tanh()]


class GlobalGenerator(nn.Module):
    """pix2pixHD G1: 7x7 conv, `n_downsampling` stride-2 convs, residual blocks, mirrored decoder."""

    def __init__(
        self,
        input_nc: int,
        output_nc: int,
        ngf: int = 64,
        n_downsampling: int = 3,
        n_blocks: int = 9,
        norm: str = "instance",
    ) -> None:
        super().__init__()
        self.model = nn.Sequential(*_global_layers(input_nc, output_nc, ngf, n_downsampling, n_blocks, norm))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class LocalEnhancer(nn.Module):
    """pix2pixHD G2: a GlobalGenerator (ngf * 2**n_local_enhancers, head removed) on the input
    downsampled n_local_enhancers times, refined by `model{n}_1` (downsample) / `model{n}_2` (residual + upsample)."""

    def __init__(
        self,
        input_nc: int,
        output_nc: int,
        ngf: int = 32,
        n_downsample_global: int = 3,
        n_blocks_global: int = 9,
        n_local_enhancers: int = 1,
        n_blocks_local: int = 3,
        norm: str = "instance",
    ) -> None:
        super().__init__()
        self.n_local_enhancers = n_local_enhancers
        global_layers = _global_layers(
            input_nc, output_nc, ngf * 2**n_local_enhancers, n_downsample_global, n_blocks_global, norm
        )
        self.model = nn.Sequential(*global_layers[:-3])  # without the final pad, conv, tanh
        for n in range(1, n_local_enhancers + 1):
            c = ngf * 2 ** (n_local_enhancers - n)
            down = [
                nn.ReflectionPad2d(3), nn.Conv2d(input_nc, c, kernel_size=7), _norm(norm, c), nn.ReLU(True),
                nn.Conv2d(c, c * 2, kernel_size=3, stride=2, padding=1), _norm(norm, c * 2), nn.ReLU(True),
            ]
            up: list[nn.Module] = [ResnetBlock(c * 2, norm) for _ in range(n_blocks_local)]
            up += [
                nn.ConvTranspose2d(c * 2, c, kernel_size=3, stride=2, padding=1, output_padding=1),
                _norm(norm, c),
                nn.ReLU(True),
            ]
            if n == n_local_enhancers:
                up += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, output_nc, kernel_size=7), nn.Tanh()]
            setattr(self, f"model{n}_1", nn.Sequential(*down))
            setattr(self, f"model{n}_2", nn.Sequential(*up))
        self.downsample = nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pyramid = [x]
        for _ in range(self.n_local_enhancers):
            pyramid.append(self.downsample(pyramid[-1]))
        out = self.model(pyramid[-1])
        for n in range(1, self.n_local_enhancers + 1):
            finer = pyramid[self.n_local_enhancers - n]
            out = getattr(self, f"model{n}_2")(getattr(self, f"model{n}_1")(finer) + out)
        return out


def build_generator(
    netG: str = "global",
    input_nc: int = 36,
    output_nc: int = 3,
    ngf: int = 64,
    n_downsample_global: int = 4,
    n_blocks_global: int = 9,
    n_local_enhancers: int = 1,
    n_blocks_local: int = 3,
    norm: str = "instance",
) -> nn.Module:
    """The public `define_G` network (without weight init); input_nc counts the encoded channels."""
    _norm(norm, 1)  # validates before building
    if netG == "global":
        return GlobalGenerator(input_nc, output_nc, ngf, n_downsample_global, n_blocks_global, norm)
    if netG == "local":
        return LocalEnhancer(
            input_nc, output_nc, ngf, n_downsample_global, n_blocks_global, n_local_enhancers, n_blocks_local, norm
        )
    raise UsageError(f"pix2pixHD netG {netG!r} is not one of {NETGS}")


def one_hot(label: torch.Tensor, channels: int) -> torch.Tensor:
    """[B, 1, H, W] class ids -> [B, channels, H, W] float one-hot, the public `scatter_` encoding."""
    if label.dim() != 4 or label.shape[1] != 1:
        raise UsageError(f"label map must be [B, 1, H, W] class ids, got shape {tuple(label.shape)}")
    label = label.long()
    low, high = int(label.min()), int(label.max())
    if low < 0 or high >= channels:
        raise UsageError(f"label map values span [{low}, {high}], outside the {channels} classes the checkpoint knows")
    out = torch.zeros(label.shape[0], channels, *label.shape[2:], device=label.device)
    return out.scatter_(1, label, 1.0)


def instance_edges(inst: torch.Tensor) -> torch.Tensor:
    """The public `get_edges`: 1.0 where a pixel's instance id differs from a 4-neighbour's, else 0.0."""
    edge = torch.zeros(inst.shape, dtype=torch.bool, device=inst.device)
    horizontal = inst[..., :, 1:] != inst[..., :, :-1]
    vertical = inst[..., 1:, :] != inst[..., :-1, :]
    edge[..., :, 1:] |= horizontal
    edge[..., :, :-1] |= horizontal
    edge[..., 1:, :] |= vertical
    edge[..., :-1, :] |= vertical
    return edge.float()


class Pix2PixHDVictim(FrozenVictim):
    """A label-to-image generator fed the public encoding of its inputs.

    forward(label, inst=None, edges=None): label is a [B, 1, H, W] class-id map (or, with label_nc=0,
    the [B, C, H, W] input image itself, in [-1, 1]); with use_instance, pass the instance-id map `inst`
    (its boundary map is computed as upstream) or a precomputed 0/1 boundary map `edges`.
    Returns [B, 3, H, W] in [-1, 1].
    """

    def __init__(self, generator: nn.Module, label_nc: int, use_instance: bool) -> None:
        super().__init__(generator)
        self.label_nc = label_nc
        self.use_instance = use_instance

    def encode(self, label: torch.Tensor) -> torch.Tensor:
        return label if self.label_nc == 0 else one_hot(label, self.label_nc)

    def forward(
        self, label: torch.Tensor, inst: torch.Tensor | None = None, edges: torch.Tensor | None = None
    ) -> torch.Tensor:
        dtype = next(self.generator.parameters()).dtype
        x = self.encode(label).to(dtype)
        if self.use_instance:
            if edges is None:
                if inst is None:
                    raise UsageError(
                        "this checkpoint was trained with instance maps (no_instance=False): pass inst or edges"
                    )
                edges = instance_edges(inst)
            x = torch.cat([x, edges.to(x)], 1)
        return self.generator(x)


def per_image_batch_norm(generator: nn.Module) -> nn.Module:
    """Make every BatchNorm of `generator` normalise each image by its own statistics, as the public test script
    does (it never calls eval(), and runs one image at a time in train mode): the same scores at any batch size."""
    for module in generator.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.register_forward_hook(_instance_statistics)
    return generator


def _instance_statistics(module: nn.BatchNorm2d, args: tuple[torch.Tensor], output: torch.Tensor) -> torch.Tensor:
    return F.instance_norm(args[0], weight=module.weight, bias=module.bias, eps=module.eps)


def load(
    checkpoint: str | os.PathLike | Checkpoint,
    netG: str = "global",
    label_nc: int = 35,
    ngf: int = 64,
    no_instance: bool = False,
    input_nc: int = 3,
    output_nc: int = 3,
    n_downsample_global: int = 4,
    n_blocks_global: int = 9,
    n_local_enhancers: int = 1,
    n_blocks_local: int = 3,
    norm: str = "instance",
) -> Pix2PixHDVictim:
    """A pix2pixHD `*_net_G.pth` as a victim; defaults are the public training defaults (Cityscapes).

    input_nc only matters with label_nc=0. Checkpoints using encoded features (--instance_feat,
    --label_feat) are not supported. The public test script never calls eval(), so with norm="batch"
    every BatchNorm normalises each image by its own statistics (a batch of one in train mode).
    """
    n_in = (label_nc or input_nc) + (0 if no_instance else 1)
    generator = build_generator(
        netG, n_in, output_nc, ngf, n_downsample_global, n_blocks_global, n_local_enhancers, n_blocks_local, norm
    )
    load_state_dict_strict(
        generator,
        checkpoint,
        family=f"pix2pixHD netG={netG} ngf={ngf} label_nc={label_nc} no_instance={no_instance} (input channels {n_in}) "
        f"n_downsample_global={n_downsample_global} n_blocks_global={n_blocks_global}"
        + (f" n_local_enhancers={n_local_enhancers} n_blocks_local={n_blocks_local}" if netG == "local" else ""),
        hint="match the training options: --netG (global, local), --ngf (local models often use 32), --label_nc "
        "(0 = image input with --input_nc), --no_instance, --n_downsample_global, --n_blocks_global, "
        "--n_local_enhancers, --n_blocks_local, --norm; --instance_feat/--label_feat models are not supported",
    )
    return Pix2PixHDVictim(per_image_batch_norm(generator), label_nc, use_instance=not no_instance)
