"""Small victims for tests, loaded through `--victim python:victims_for_tests:FACTORY`."""
from __future__ import annotations

import torch
from torch import nn


class Blur(nn.Module):
    """A deterministic 'generator': a 3x3 box blur of its input (in [-1, 1])."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class BrokenOnDark(nn.Module):
    """Returns NaN for all-black inputs (mean below -0.9 in [-1, 1]); a blur otherwise."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = Blur()(x)
        dark = x.mean(dim=(1, 2, 3)) < -0.9
        out[dark] = float("nan")
        return out


class Gray(nn.Module):
    """Returns one channel: not a usable RGB output."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :1]


def blur() -> nn.Module:
    return Blur()


def broken_on_dark() -> nn.Module:
    return BrokenOnDark()


def gray() -> nn.Module:
    return Gray()
