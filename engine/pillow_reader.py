"""The Pillow reader: one pair -> its prepared tensors (`prepare`), on every machine.

It is the reference: the DALI reader (`memscore.dali_reader`) matches it within stated tolerances and
hands it every file it cannot decode exactly alike. Each pair is prepared on its own terms, so one
bad file becomes one `Failure` with its reason and never stops the batch.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .batch import Failure, Prepared, View
from .data import Half, Pair
from .images import ImageError, load_labels, load_rgb, require_min_side
from .preprocess import difficulty_target, normalise, resize, resize_shorter_center_crop, to_tensor


def prepare(pair: Pair, view: View) -> Prepared | Failure:
    """Decode and prepare one pair; any problem becomes a `Failure` with its reason."""
    if pair.problem:
        return Failure(pair, pair.problem)
    try:
        y_image = _load(load_rgb, pair.target_path, pair.target_half)
        if view.input_kind == "labels":
            x = torch.from_numpy(_load(load_labels, pair.input_path, pair.input_half)).float()[None]
            size = (view.victim_size, view.victim_size) if view.victim_size is not None else tuple(x.shape[-2:])
            x = F.interpolate(x[None], size=size, mode="nearest")[0]
        if view.input_kind != "labels" or view.difficulty_source == "input":
            x_image = _load(load_rgb, pair.input_path, pair.input_half)
    except ImageError as error:
        return Failure(pair, error.reason)
    if view.input_kind != "labels":
        x = to_tensor(x_image)
        if view.victim_size is not None:
            x = resize(x, (view.victim_size, view.victim_size))
    source = y_image if view.difficulty_source == "target" else x_image
    cnn_view = normalise(resize_shorter_center_crop(to_tensor(source)), view.mean, view.std)
    return Prepared(pair, x, to_tensor(y_image), cnn_view, difficulty_target(y_image, view.grid, view.preset))


def _load(loader: Callable[[str, Half], np.ndarray], path: str, half: Half) -> np.ndarray:
    """`loader(path, half)`, refused (ImageError) when smaller than `MIN_SIDE` on a side."""
    array = loader(path, half)
    require_min_side(path, array.shape[1], array.shape[0], half)
    return array
