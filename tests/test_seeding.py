"""memscore.seeding: the pixel split depends only on (seed, id)."""
from __future__ import annotations

import torch

from memscore.seeding import fit_mask


def test_split_has_exact_fraction_and_depends_only_on_seed_and_id():
    ids = [f"train/{i}" for i in range(10)]
    mask = fit_mask(ids, 3136, 0.7, seed=3)
    assert mask.shape == (10, 3136) and mask.dtype == torch.bool
    assert (mask.sum(1) == round(0.7 * 3136)).all()
    reordered = fit_mask(list(reversed(ids)), 3136, 0.7, seed=3)
    assert torch.equal(reordered, mask.flip(0))
    assert torch.equal(fit_mask(ids[3:4], 3136, 0.7, seed=3), mask[3:4])
    assert not torch.equal(fit_mask(ids, 3136, 0.7, seed=4), mask)
    assert not torch.equal(mask[0], mask[1])
