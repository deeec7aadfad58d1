"""A victim that fails a whole batch, for tests of shards that fail on every try
(`--victim python:victims_that_fail:raise_on_black`)."""
from __future__ import annotations

import torch
from torch import nn


class RaiseOnBlack(nn.Module):
    """A 3x3 box blur that raises when any input of the batch is all black (-1 everywhere in [-1, 1])."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.amax(dim=(1, 2, 3)) <= -0.99).any():
            raise RuntimeError("the victim crashed on a black input")
        return nn.functional.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


def raise_on_black() -> nn.Module:
    return RaiseOnBlack()
