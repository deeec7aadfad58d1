"""memscore.scores: Lrec against an independent computation, augmentation copies, the noise defence."""
from __future__ import annotations

import dataclasses
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from memscore.config import ScoreConfig
from memscore.data import AlignedFolder
from memscore.pipeline import batches
from memscore.scores import Scorer, apply_augmentation, augmentation
from memscore.synthetic import write_aligned_dataset


@pytest.fixture(scope="module")
def items(tmp_path_factory):
    root = write_aligned_dataset(tmp_path_factory.mktemp("d"), 6, size=32)
    scorer = Scorer(ScoreConfig(victim="python:victims_for_tests:blur", precision="fp32"))  # the exact reference
    batch = next(batches(AlignedFolder(root, "BtoA").pairs(), scorer.view, 6))
    return scorer, batch


def _blur01(x01: torch.Tensor) -> torch.Tensor:
    """The test victim, applied by hand in [0, 1] space."""
    return (F.avg_pool2d((x01 * 2 - 1)[None], 3, stride=1, padding=1, count_include_pad=False)[0] + 1) / 2


def test_lrec_is_the_mean_absolute_error_of_the_victims_output(items):
    scorer, batch = items
    rows = scorer.score(batch)
    for row, item in zip(rows, batch.items):
        expected = (_blur01(item.x).clamp(0, 1) - item.y).abs().mean().item()
        assert row.lrec == pytest.approx(expected, rel=1e-5)
        assert row.status == "ok" and row.ldiff > 0 and (row.out_height, row.out_width) == (32, 32)


def test_augmented_lrec_averages_seeded_flip_and_crop_copies(items):
    _, batch = items
    scorer = Scorer(ScoreConfig(victim="python:victims_for_tests:blur", augment=3))
    rows = scorer.score(batch)
    for row, item in zip(rows, batch.items):
        errors = []
        for copy in range(3):
            flip, box = augmentation(item.pair.id, copy, 0)
            assert (copy == 0) == (box == (0.0, 0.0, 1.0) and not flip)
            x, y = apply_augmentation(item.x, flip, box), apply_augmentation(item.y, flip, box)
            errors.append((_blur01(x).clamp(0, 1) - y).abs().mean().item())
        assert row.lrec == pytest.approx(np.mean(errors), rel=1e-5)
    assert augmentation("a", 1, 0) == augmentation("a", 1, 0) != augmentation("b", 1, 0)


def test_defense_noise_is_seeded_and_raises_the_error(items, tmp_path):
    _, batch = items
    for item in batch.items:  # a black-box victim that reproduces every target exactly
        Image.fromarray(np.rint(item.y.permute(1, 2, 0).numpy() * 255).astype(np.uint8)).save(tmp_path / f"{item.pair.id}.png")
    perfect = ScoreConfig(victim=f"recon:{tmp_path}")
    clean = Scorer(perfect).score(batch)
    noisy = Scorer(dataclasses.replace(perfect, defense_noise=0.1)).score(batch)
    again = Scorer(dataclasses.replace(perfect, defense_noise=0.1)).score(batch)
    assert all(c.lrec < 1e-3 for c in clean)
    assert all(0.04 < n.lrec < 0.09 for n in noisy)  # E|N(0, 0.1)| = 0.08, less where clipped at 0 or 1
    assert [n.lrec for n in noisy] == [a.lrec for a in again]
    assert [n.ldiff for n in noisy] == [c.ldiff for c in clean]  # the defence touches outputs only


def test_ldiff_from_backbone_micro_batches_equals_one_whole_batch_forward(items):
    """On CPU the backbone runs CPU_BACKBONE_IMAGES at a time; Ldiff must equal the kernel applied to
    one forward of the whole batch (channels-first, as a user would write it)."""
    from memscore.backbones import create_backbone
    from memscore.scores import CPU_BACKBONE_IMAGES
    from memscore.seeding import fit_mask
    from memscore.kernels.difficulty import predictability_error

    scorer, batch = items
    assert len(batch.items) > CPU_BACKBONE_IMAGES  # the batch really is split
    ids = [item.pair.id for item in batch.items]
    views = torch.stack([item.cnn_view for item in batch.items])
    targets = torch.stack([item.grid_target for item in batch.items])
    ours, features = scorer.difficulty(ids, views, targets)
    with torch.no_grad():
        stages = create_backbone(scorer.config.backbone, weights=scorer.config.backbone_weights).eval()(views)
    mask = fit_mask(ids, targets.shape[-1] ** 2, scorer.config.fit_fraction, scorer.config.seed)
    expected = predictability_error(stages, targets, mask, ridge=scorer.config.ridge)
    np.testing.assert_allclose(ours.numpy(), expected.numpy(), rtol=1e-4)
    maps = [stage.numpy().astype(np.float64) for stage in stages]  # calibration features, by numpy
    expected_features = np.concatenate([m.mean(axis=(2, 3)) for m in maps] + [m.std(axis=(2, 3)) for m in maps], axis=1)
    assert features.shape == (len(ids), 2 * sum(scorer.backbone.stage_channels))
    np.testing.assert_allclose(features.numpy(), expected_features, rtol=1e-3, atol=1e-5)


def test_allocator_settings_apply_on_glibc():
    from memscore.allocator import keep_freed_memory
    assert keep_freed_memory() == (platform.libc_ver()[0] == "glibc")


RSS_PROBE = """
from memscore.allocator import keep_freed_memory, release_freed_memory
def rss_mb():
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmRSS")) / 1024
keep_freed_memory()
blocks = [bytearray(1 << 20) for _ in range(200)]  # 1 MB blocks: heap memory under the mmap threshold
held = rss_mb()
del blocks
kept = rss_mb()
released = release_freed_memory()
print(held, kept, rss_mb(), released)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc" or not Path("/proc/self/status").exists(), reason="glibc and /proc only")
def test_freed_memory_is_kept_within_a_shard_and_released_between_shards():
    out = subprocess.run([sys.executable, "-c", RSS_PROBE], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    held, kept, after_release, released = out.stdout.split()
    assert float(kept) > float(held) - 20  # 200 MB freed but kept for reuse (below the trim threshold)
    assert float(after_release) < float(kept) - 150 and released == "True"
