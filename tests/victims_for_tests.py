"""Small victims for tests, loaded through `--victim python:victims_for_tests:FACTORY`."""
from __future__ import annotations

import os
import time

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


class SlowBlur(Blur):
    """A blur that takes its time (MEMSCORE_TEST_DELAY seconds a batch), so a run can be interrupted."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(float(os.environ.get("MEMSCORE_TEST_DELAY", "0.3")))
        return super().forward(x)


class DieOnce(Blur):
    """Kills its own process the first time it runs while MEMSCORE_TEST_DIE_MARKER does not exist."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        marker = os.environ.get("MEMSCORE_TEST_DIE_MARKER")
        if marker and not os.path.exists(marker):
            open(marker, "w").close()
            os._exit(1)
        return super().forward(x)


def slow_blur() -> nn.Module:
    return SlowBlur()


def die_once() -> nn.Module:
    return DieOnce()


class OutOfMemoryOnDark(Blur):
    """Runs out of host memory on an all-black input (mean below -0.9), every time: a fault of the process, not
    of an image, so the shard holding it can never be scored."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.mean(dim=(1, 2, 3)) < -0.9).any():
            raise MemoryError("this victim runs out of memory on a black input")
        return super().forward(x)


def out_of_memory_on_dark() -> nn.Module:
    return OutOfMemoryOnDark()


CHOSEN_ID = "3"
"""The one image the id-aware victims below single out (the scorer's default seed 0 is assumed)."""


def _chosen(seeds: torch.Tensor) -> torch.Tensor:
    """[B] bool: which images of the batch are `CHOSEN_ID` (the victim sees ids only through their seeds)."""
    from memscore.seeding import image_seed
    return seeds == image_seed(0, CHOSEN_ID) >> 1


class RaiseOnChosen(Blur):
    """A blur that raises whenever its batch holds `CHOSEN_ID`: one image it cannot handle."""

    def forward(self, x: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
        if _chosen(seeds).any():
            raise RuntimeError("this victim cannot reconstruct\nimage 3")
        return super().forward(x)


def raise_on_chosen() -> nn.Module:
    return RaiseOnChosen()


class OutOfRange(Blur):
    """A blur whose first output value is 1.5 (0.75 above [-1, 1]: 1 of 3072 values of a 32 px image, clamped), and
    whose output for `CHOSEN_ID` is 50 times too large (most values far outside: a wrong value range)."""

    def forward(self, x: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        out[:, 0, 0, 0] = 1.5
        out[_chosen(seeds)] *= 50
        return out


def out_of_range() -> nn.Module:
    return OutOfRange()
