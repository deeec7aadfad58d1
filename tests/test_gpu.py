"""CUDA paths (marker `gpu`; skipped without a CUDA device): the kernel and a whole run agree with the CPU."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr

from memscore.config import ScoreConfig
from memscore.run import RunOptions, run_scoring
from memscore.work import DatasetSpec
from memscore.seeding import fit_mask
from memscore.synthetic import write_aligned_dataset
from memscore.kernels.difficulty import predictability_error

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")]


def test_fused_kernel_on_cuda_matches_cpu():
    generator = torch.Generator().manual_seed(0)
    stages = [torch.randn(8, c, s, s, generator=generator) for c, s in ((24, 56), (40, 28), (112, 14), (320, 7))]
    target = torch.rand(8, 3, 56, 56, generator=generator)
    mask = fit_mask([str(i) for i in range(8)], 56 * 56, 0.7, 0)
    cpu = predictability_error(stages, target, mask)
    cuda = predictability_error([s.cuda() for s in stages], target.cuda(), mask.cuda()).cpu()
    torch.testing.assert_close(cuda, cpu, rtol=1e-4, atol=1e-6)


def test_scoring_on_cuda_matches_cpu_and_bf16_stays_close(tmp_path):
    data = write_aligned_dataset(tmp_path / "d", 16, size=64)
    spec = DatasetSpec(str(data), direction="BtoA")
    runs = {}
    for name, device, precision in (("cpu", "cpu", "fp32"), ("cuda", "cuda", "fp32"), ("bf16", "cuda", "bf16")):
        config = ScoreConfig(victim="python:victims_for_tests:blur", precision=precision)
        run_scoring(spec, config, tmp_path / f"{name}.zarr", RunOptions(device=device), progress=False)
        runs[name] = xr.open_zarr(tmp_path / f"{name}.zarr")
    for column in ("lrec", "ldiff"):
        np.testing.assert_allclose(runs["cuda"][column].values, runs["cpu"][column].values, rtol=1e-3)
        np.testing.assert_allclose(runs["bf16"][column].values, runs["cpu"][column].values, rtol=0.1)
