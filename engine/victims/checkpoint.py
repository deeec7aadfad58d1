"""What the victim families (pix2pix, pix2pixHD, SPADE) share: strict, safe state-dict loading that
explains a mismatch in terms of options to change, and the frozen wrapper a loaded generator lives in."""
from __future__ import annotations

import os

import torch
from torch import nn

_CONTAINER_KEYS = ("state_dict", "model")
_EXAMPLES = 5  # keys quoted per kind of mismatch


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read or does not fit the architecture asked for."""


class FrozenVictim(nn.Module):
    """Base of the family wrappers: holds the loaded generator in eval mode for good, so neither a
    forward nor a stray `.train()` updates running statistics or spectral-norm vectors."""

    def __init__(self, generator: nn.Module) -> None:
        super().__init__()
        self.generator = generator.eval()

    def train(self, mode: bool = True) -> FrozenVictim:
        super().train(mode)
        self.generator.eval()
        return self


def load_state_dict_strict(module: nn.Module, path: str | os.PathLike, *, family: str, hint: str) -> None:
    """Load the weights at `path` into `module`, every key and shape matching.

    `family` names the architecture tried (with its options) and `hint` says which options to
    change; both go into the CheckpointError raised on a mismatch.
    """
    state = _read_state_dict(path)
    _drop_absent_instance_norm_stats(module, state)
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(_mismatch_message(module, state, path, family, hint, exc)) from None


def _read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, bad pickle, non-tensor objects, missing file, ...
        raise CheckpointError(
            f"{path}: cannot read checkpoint ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
            "is the file complete and saved with torch.save(state_dict)?"
        ) from None
    for key in _CONTAINER_KEYS:  # {'state_dict': ...} / {'model': ...} wrappers of training scripts
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: not a state dict (expected a mapping of parameter names to tensors)")
    # A fresh dict also drops `_metadata`, as the public pix2pix loader does; keys from DataParallel
    # carry a `module.` prefix.
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _drop_absent_instance_norm_stats(module: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Old (torch < 0.4) checkpoints store running stats for InstanceNorm layers that no longer keep
    them; drop those entries like the public pix2pix `__patch_instance_norm_state_dict`."""
    for name, sub in module.named_modules():
        if isinstance(sub, nn.modules.instancenorm._InstanceNorm):
            for buffer in ("running_mean", "running_var", "num_batches_tracked"):
                if getattr(sub, buffer, None) is None:
                    state.pop(f"{name}.{buffer}" if name else buffer, None)


def _mismatch_message(
    module: nn.Module,
    state: dict[str, torch.Tensor],
    path: str | os.PathLike,
    family: str,
    hint: str,
    exc: RuntimeError,
) -> str:
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs expected {shape}"
        for k, shape in expected.items()
        if k in state and tuple(state[k].shape) != shape
    ]
    lines = [f"{path}: checkpoint does not fit {family}."]
    for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)):
        if items:
            more = f" (+{len(items) - _EXAMPLES} more)" if len(items) > _EXAMPLES else ""
            lines.append(f"  {len(items)} {label}: " + "; ".join(items[:_EXAMPLES]) + more)
    if len(lines) == 1:
        lines.append(f"  {exc}")
    lines.append(f"  Hint: {hint}")
    return "\n".join(lines)
