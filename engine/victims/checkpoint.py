"""What the victim families (pix2pix, pix2pixHD, SPADE) share: safe checkpoint reading (weights and the
model arguments a memscore-trained checkpoint carries), strict state-dict loading that explains a mismatch in
terms of options to change, and the frozen wrapper a loaded generator lives in."""
from __future__ import annotations

import json
import os
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import UsageError

_CONTAINER_KEYS = ("state_dict", "model")
MODEL_ARGS_KEY = "model_args"
_EXAMPLES = 5  # keys quoted per kind of mismatch
SUPPORTED_FORMS = (
    "memscore reads: state-dict checkpoints of the public pix2pix, pix2pixHD and SPADE code "
    "(pix2pix:CKPT, pix2pixhd:CKPT, spade:CKPT); TorchScript files (torchscript:PATH, written by "
    "torch.jit.save(torch.jit.script(model), PATH)); or your own module as python:MODULE:FACTORY with its "
    "state dict in --victim-weights (torch.save(model.state_dict(), PATH))"
)


class CheckpointError(UsageError):
    """A checkpoint file that cannot be read or does not fit the architecture asked for."""


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint's weights and, for one written by `memscore train-victim`, the arguments that rebuild its
    model (empty for public checkpoints, whose architecture the user names with options)."""

    path: str
    state: dict[str, torch.Tensor]
    model_args: dict[str, Any] = field(default_factory=dict)


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


def read_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """The weights at `path` (loaded with weights_only=True: a file that needs arbitrary unpickling is refused)
    and the model arguments they were saved with: the `model_args` entry of the file, or for checkpoints of
    earlier memscore versions the `PATH.json` written beside them."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "WeightsUnpickler" not in str(exc):
            raise CheckpointError(_unreadable(path, exc)) from None
        found = re.search(r"GLOBAL (\S+) was not an allowed global", str(exc))
        what = f" ({found.group(1)})" if found else ""
        raise CheckpointError(
            f"{path}: refused: the file holds pickled Python objects{what}, and unpickling them could run any "
            f"code, so memscore never loads it that way. {SUPPORTED_FORMS}."
        ) from None
    except Exception as exc:  # truncated zip, not a torch file, missing file, ...
        raise CheckpointError(_unreadable(path, exc)) from None
    model_args = obj.get(MODEL_ARGS_KEY) if isinstance(obj, dict) else None
    for key in _CONTAINER_KEYS:  # {'state_dict': ...} / {'model': ...} wrappers of training scripts
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: not a state dict (expected a mapping of parameter names to tensors)")
    if model_args is None:
        model_args = _legacy_model_args(Path(f"{path}.json"))
    if not isinstance(model_args, dict):
        raise CheckpointError(f"{path}: its model arguments are not a mapping of option names to values")
    # A fresh dict also drops `_metadata`, as the public pix2pix loader does; keys from DataParallel
    # carry a `module.` prefix.
    return Checkpoint(str(path), {k.removeprefix("module."): v for k, v in obj.items()}, dict(model_args))


def _legacy_model_args(sidecar: Path) -> dict[str, Any]:
    """The architecture file `memscore train-victim` wrote beside its checkpoints before they carried it."""
    if not sidecar.is_file():
        return {}
    try:
        return json.loads(sidecar.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{sidecar}: architecture file is not valid JSON ({exc}); fix or remove it") from None


def _unreadable(path: str | os.PathLike, exc: Exception) -> str:
    first_line = str(exc).splitlines()[0] if str(exc) else ""
    return (f"{path}: cannot read checkpoint ({type(exc).__name__}: {first_line}); "
            "is the file complete and saved with torch.save(state_dict)?")


def load_state_dict_strict(module: nn.Module, source: Checkpoint | str | os.PathLike, *, family: str,
                           hint: str) -> None:
    """Load the weights of `source` (a checkpoint read already, or its path) into `module`, every key and
    shape matching.

    `family` names the architecture tried (with its options) and `hint` says which options to
    change; both go into the CheckpointError raised on a mismatch.
    """
    checkpoint = source if isinstance(source, Checkpoint) else read_checkpoint(source)
    state = dict(checkpoint.state)
    _drop_absent_instance_norm_stats(module, state)
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(_mismatch_message(module, state, checkpoint.path, family, hint, exc)) from None


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
