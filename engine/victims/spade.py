"""SPADE victims: the SPADEGenerator of NVlabs/SPADE (spectral-normed SPADE residual blocks), key for key.
SpadeVictim feeds it the public semantic encoding: one-hot labels (+ dontcare) and instance boundaries."""
from __future__ import annotations

import os
import re

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import spectral_norm

from ..errors import UsageError
from .checkpoint import Checkpoint, load_state_dict_strict
from .pix2pixhd import Pix2PixHDVictim, one_hot

UPSAMPLINGS = {"normal": 5, "more": 6, "most": 7}
NHIDDEN = 128  # width of the SPADE modulation MLP, hard-coded upstream
UNKNOWN_LABEL = 255  # the public dataset maps this id to label_nc ("dontcare")


def parse_norm_G(norm_G: str) -> tuple[bool, str, int]:
    """'spectralspadesyncbatch3x3' -> (spectral, param-free norm, kernel size), as the public code reads it."""
    match = re.fullmatch(r"(spectral)?spade(syncbatch|batch|instance)(\d)x\d", norm_G)
    if match is None:
        raise UsageError(f"SPADE norm_G {norm_G!r} is not of the form [spectral]spade(syncbatch|batch|instance)KxK")
    return match.group(1) is not None, match.group(2), int(match.group(3))


class SPADE(nn.Module):
    """Parameter-free norm of x, then a per-pixel scale and shift predicted from the resized segmap."""

    def __init__(self, param_free: str, ks: int, norm_nc: int, label_nc: int) -> None:
        super().__init__()
        # SynchronizedBatchNorm2d keeps the keys and eval behaviour of BatchNorm2d.
        norm = nn.InstanceNorm2d if param_free == "instance" else nn.BatchNorm2d
        self.param_free_norm = norm(norm_nc, affine=False)
        pw = ks // 2
        self.mlp_shared = nn.Sequential(nn.Conv2d(label_nc, NHIDDEN, kernel_size=ks, padding=pw), nn.ReLU())
        self.mlp_gamma = nn.Conv2d(NHIDDEN, norm_nc, kernel_size=ks, padding=pw)
        self.mlp_beta = nn.Conv2d(NHIDDEN, norm_nc, kernel_size=ks, padding=pw)

    def forward(self, x: torch.Tensor, segmap: torch.Tensor) -> torch.Tensor:
        normalized = self.param_free_norm(x)
        actv = self.mlp_shared(F.interpolate(segmap, size=x.shape[2:], mode="nearest"))
        return normalized * (1 + self.mlp_gamma(actv)) + self.mlp_beta(actv)


class SPADEResnetBlock(nn.Module):
    """SPADE -> lrelu -> conv twice, plus a (SPADE, 1x1 conv) shortcut when the width changes."""

    def __init__(self, fin: int, fout: int, norm_G: str, semantic_nc: int) -> None:
        super().__init__()
        spectral, param_free, ks = parse_norm_G(norm_G)
        sn = spectral_norm if spectral else (lambda m: m)
        self.learned_shortcut = fin != fout
        fmiddle = min(fin, fout)
        self.conv_0 = sn(nn.Conv2d(fin, fmiddle, kernel_size=3, padding=1))
        self.conv_1 = sn(nn.Conv2d(fmiddle, fout, kernel_size=3, padding=1))
        self.norm_0 = SPADE(param_free, ks, fin, semantic_nc)
        self.norm_1 = SPADE(param_free, ks, fmiddle, semantic_nc)
        if self.learned_shortcut:
            self.conv_s = sn(nn.Conv2d(fin, fout, kernel_size=1, bias=False))
            self.norm_s = SPADE(param_free, ks, fin, semantic_nc)

    def forward(self, x: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
        x_s = self.conv_s(self.norm_s(x, seg)) if self.learned_shortcut else x
        dx = self.conv_0(F.leaky_relu(self.norm_0(x, seg), 0.2))
        dx = self.conv_1(F.leaky_relu(self.norm_1(dx, seg), 0.2))
        return x_s + dx


class SPADEGenerator(nn.Module):
    """Starts from the segmap downsampled to (crop_size / 2**n_up) and upsamples through SPADE blocks
    (use_vae=False: the public deterministic path via the `fc` convolution)."""

    def __init__(
        self,
        semantic_nc: int,
        ngf: int = 64,
        num_upsampling_layers: str = "normal",
        crop_size: int = 256,
        aspect_ratio: float = 1.0,
        norm_G: str = "spectralspadesyncbatch3x3",
    ) -> None:
        super().__init__()
        if num_upsampling_layers not in UPSAMPLINGS:
            raise UsageError(f"num_upsampling_layers {num_upsampling_layers!r} is not one of {sorted(UPSAMPLINGS)}")
        self.num_upsampling_layers = num_upsampling_layers
        self.sw = crop_size // 2 ** UPSAMPLINGS[num_upsampling_layers]
        self.sh = round(self.sw / aspect_ratio)
        if self.sw < 1 or self.sh < 1:
            raise UsageError(f"crop_size {crop_size} is too small for num_upsampling_layers={num_upsampling_layers!r}")
        nf = ngf
        self.fc = nn.Conv2d(semantic_nc, 16 * nf, kernel_size=3, padding=1)
        self.head_0 = SPADEResnetBlock(16 * nf, 16 * nf, norm_G, semantic_nc)
        self.G_middle_0 = SPADEResnetBlock(16 * nf, 16 * nf, norm_G, semantic_nc)
        self.G_middle_1 = SPADEResnetBlock(16 * nf, 16 * nf, norm_G, semantic_nc)
        self.up_0 = SPADEResnetBlock(16 * nf, 8 * nf, norm_G, semantic_nc)
        self.up_1 = SPADEResnetBlock(8 * nf, 4 * nf, norm_G, semantic_nc)
        self.up_2 = SPADEResnetBlock(4 * nf, 2 * nf, norm_G, semantic_nc)
        self.up_3 = SPADEResnetBlock(2 * nf, 1 * nf, norm_G, semantic_nc)
        final_nc = nf
        if num_upsampling_layers == "most":
            self.up_4 = SPADEResnetBlock(1 * nf, nf // 2, norm_G, semantic_nc)
            final_nc = nf // 2
        self.conv_img = nn.Conv2d(final_nc, 3, kernel_size=3, padding=1)
        self.up = nn.Upsample(scale_factor=2)

    def forward(self, seg: torch.Tensor) -> torch.Tensor:
        """seg: [B, semantic_nc, H, W]; the output side is fixed by crop_size, as upstream."""
        x = self.fc(F.interpolate(seg, size=(self.sh, self.sw)))
        x = self.head_0(x, seg)
        x = self.G_middle_0(self.up(x), seg)
        if self.num_upsampling_layers in ("more", "most"):
            x = self.up(x)
        x = self.G_middle_1(x, seg)
        for block in (self.up_0, self.up_1, self.up_2, self.up_3):
            x = block(self.up(x), seg)
        if self.num_upsampling_layers == "most":
            x = self.up_4(self.up(x), seg)
        return torch.tanh(self.conv_img(F.leaky_relu(x, 0.2)))


class SpadeVictim(Pix2PixHDVictim):
    """A SPADE generator fed the public `preprocess_input` encoding.

    forward(label, inst=None, edges=None): label is a [B, 1, H, W] class-id map (id 255 is read as the
    dontcare class label_nc, as the public dataset does); with use_instance, pass the instance-id map or
    a precomputed boundary map. Returns [B, 3, h, w] in [-1, 1], h and w set by crop_size/aspect_ratio.
    """

    def __init__(self, generator: nn.Module, label_nc: int, contain_dontcare_label: bool, use_instance: bool) -> None:
        super().__init__(generator, label_nc + int(contain_dontcare_label), use_instance)
        self.unknown_id = label_nc

    def encode(self, label: torch.Tensor) -> torch.Tensor:
        label = label.long()
        return one_hot(torch.where(label == UNKNOWN_LABEL, self.unknown_id, label), self.label_nc)


def load(
    checkpoint: str | os.PathLike | Checkpoint,
    label_nc: int = 182,
    contain_dontcare_label: bool = True,
    no_instance: bool = False,
    ngf: int = 64,
    num_upsampling_layers: str = "normal",
    crop_size: int = 256,
    aspect_ratio: float = 1.0,
    norm_G: str = "spectralspadesyncbatch3x3",
) -> SpadeVictim:
    """A SPADE `*_net_G.pth` as a victim, run as the public test script runs it (eval mode).

    Defaults are the public test defaults of the COCO dataset mode. Public Cityscapes runs use
    label_nc=35, contain_dontcare_label=False, crop_size=512, aspect_ratio=2.0,
    num_upsampling_layers="more"; ADE20K runs label_nc=150, no_instance=True. Labels are the class ids
    the public dataset class hands to the model. VAE-trained (--use_vae) generators are not supported.
    """
    semantic_nc = label_nc + int(contain_dontcare_label) + (0 if no_instance else 1)
    generator = SPADEGenerator(semantic_nc, ngf, num_upsampling_layers, crop_size, aspect_ratio, norm_G)
    load_state_dict_strict(
        generator,
        checkpoint,
        family=f"SPADE ngf={ngf} label_nc={label_nc} contain_dontcare_label={contain_dontcare_label} "
        f"no_instance={no_instance} (semantic_nc {semantic_nc}) num_upsampling_layers={num_upsampling_layers} "
        f"norm_G={norm_G}",
        hint="match the training options: --label_nc, --contain_dontcare_label and --no_instance (together they set "
        "the input channels), --ngf, --num_upsampling_layers (normal, more, most), --norm_G; --use_vae generators "
        "are not supported",
    )
    return SpadeVictim(generator, label_nc, contain_dontcare_label, use_instance=not no_instance)
