"""memscore.precision: native-bfloat16 detection from injected CPU flags, `auto` resolution, the refusal of
emulated bf16, and, where this CPU runs bf16 natively, scores under bf16 against fp32 on real Facades."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from memscore import precision
from memscore.config import ScoreConfig
from memscore.data import AlignedFolder
from memscore.pipeline import batches
from memscore.precision import autocast, cpu_flags, native_bf16, resolve_precision
from memscore.scores import Scorer
from memscore.victims import ModelVictim
from memscore.victims import pix2pix, pix2pixhd, spade

CPU = torch.device("cpu")
PLAIN_AVX512 = {"fpu", "sse2", "avx2", "avx512f", "avx512bw", "avx512_vnni"}  # Ice Lake: bf16 only emulated
needs_native_bf16 = pytest.mark.skipif(not native_bf16(CPU), reason="this CPU has no AMX-BF16 / AVX512-BF16")


def test_cpu_flags_are_read_from_cpuinfo_flags_lines(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Xeon amx_bf16 in a name\nflags\t\t: fpu avx512f amx_bf16\n\n"
                       "processor\t: 1\nflags\t\t: fpu avx512f amx_bf16 amx_tile\n")
    assert cpu_flags(cpuinfo) == {"fpu", "avx512f", "amx_bf16", "amx_tile"}
    assert cpu_flags(tmp_path / "absent") == frozenset()  # not Linux: no flags, so no native bf16


@pytest.mark.parametrize("flags, native", [
    (PLAIN_AVX512 | {"amx_bf16", "amx_tile"}, True),  # Sapphire Rapids and later
    (PLAIN_AVX512 | {"avx512_bf16"}, True),  # Cooper Lake, Zen 4
    (PLAIN_AVX512, False),
    (set(), False),
])
def test_native_bf16_on_cpu_follows_the_flags(flags, native):
    assert native_bf16(CPU, flags) is native
    assert resolve_precision("auto", CPU, flags) == ("bf16" if native else "fp32")
    assert resolve_precision("fp32", CPU, flags) == "fp32"


def test_bf16_is_refused_on_a_cpu_that_would_emulate_it():
    with pytest.raises(ValueError, match=r"no native bfloat16.*AMX-BF16.*slower than fp32.*--precision fp32"):
        resolve_precision("bf16", CPU, PLAIN_AVX512)
    assert resolve_precision("bf16", CPU, {"avx512_bf16"}) == "bf16"


def test_unknown_precision_and_unresolved_autocast_are_refused():
    with pytest.raises(ValueError, match="precision must be one of"):
        resolve_precision("fp16", CPU, PLAIN_AVX512)
    with pytest.raises(ValueError, match="resolved precision"):
        autocast("auto", CPU)


def test_scorer_resolves_auto_and_refuses_emulated_bf16(monkeypatch):
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset(PLAIN_AVX512))
    assert Scorer(ScoreConfig(victim="python:victims_for_tests:blur", precision="auto")).precision == "fp32"
    with pytest.raises(ValueError, match="--precision bf16 on cpu"):
        Scorer(ScoreConfig(victim="python:victims_for_tests:blur", precision="bf16"))
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"amx_bf16"}))
    assert Scorer(ScoreConfig(victim="python:victims_for_tests:blur", precision="auto")).precision == "bf16"


def _randomized(module: torch.nn.Module) -> torch.nn.Module:
    """Random weights with a spread like trained ones, BatchNorm affine and running statistics included."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if tensor.is_floating_point():
                tensor.copy_(torch.rand(tensor.shape, generator=generator) * 0.5 + 0.5 if name.endswith("running_var")
                             else torch.randn(tensor.shape, generator=generator) * 0.05)
    return module


def _victims() -> dict[str, tuple[torch.nn.Module, torch.Tensor]]:
    """One small generator per family, on the paths bf16 touches: per-image BatchNorm and seeded dropout
    (pix2pix train mode), BatchNorm by forward hook (pix2pixHD), SPADE's label-conditioned norms."""
    labels = torch.randint(0, 5, (2, 1, 64, 64), generator=torch.Generator().manual_seed(1))
    image = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(2)) * 2 - 1
    hd = pix2pixhd.build_generator("global", input_nc=5, ngf=8, n_downsample_global=2, n_blocks_global=2, norm="batch")
    pix2pixhd.per_image_batch_norm(hd)
    return {
        "pix2pix": (pix2pix.Pix2PixVictim(_randomized(pix2pix.build_generator("unet_64", 3, 3, 16, "batch", True))), image),
        "pix2pixhd": (pix2pixhd.Pix2PixHDVictim(_randomized(hd), label_nc=5, use_instance=False), labels),
        "spade": (spade.SpadeVictim(_randomized(spade.SPADEGenerator(6, ngf=8, crop_size=64)), 5, True, False), labels),
    }


@needs_native_bf16
@pytest.mark.parametrize("family", ["pix2pix", "pix2pixhd", "spade"])
def test_victims_under_bf16_give_finite_fp32_images_close_to_fp32(family):
    module, x = _victims()[family]
    victim = ModelVictim(module, value_range="-1,1")
    with torch.no_grad():
        reference = victim.module(x, seeds=torch.tensor([3, 4])) if victim.takes_seeds else victim.module(x)
        with autocast("bf16", CPU):
            low = victim.module(x, seeds=torch.tensor([3, 4])) if victim.takes_seeds else victim.module(x)
            alone = victim.module(x[:1], seeds=torch.tensor([3])) if victim.takes_seeds else victim.module(x[:1])
    assert low.dtype == torch.bfloat16  # autocast did run the convolutions in bf16
    assert torch.isfinite(reference).all()
    assert torch.isfinite(low.float()).all() and low.float().abs().max() <= 1
    assert (low.float() - reference).abs().mean() < 0.02 * reference.abs().mean()
    torch.testing.assert_close(alone[0], low[0])  # per-image statistics and masks: batch-independent in bf16 too


@needs_native_bf16
def test_scores_under_bf16_agree_with_fp32_on_real_facades(facades):
    """Measured on these 40 images (EfficientNet-Lite0): Ldiff median relative change 0.12% (worst 0.85%),
    Spearman 0.9994; Lrec (pix2pix, per-image BatchNorm and dropout) 7e-5 (worst 2.3e-4). Bounds: 4x or more."""
    torch.manual_seed(0)
    generator = pix2pix.Pix2PixVictim(pix2pix.build_generator("unet_128", 3, 3, 32, "batch", True))
    pairs = list(AlignedFolder(facades / "val", "BtoA").pairs(0, 40))
    scores = {}
    for name in ("fp32", "bf16"):
        scorer = Scorer(ScoreConfig(victim_size=128, precision=name), victim=ModelVictim(copy.deepcopy(generator)))
        rows, outputs = [], []
        for batch in batches(pairs, scorer.view, 32, threads=1):
            rows += scorer.score(batch)
            with scorer.autocast():
                outputs += scorer.victim.reconstruct(batch.items[:2])
        assert all(row.status == "ok" for row in rows)
        assert all(out.dtype == torch.float32 and 0 <= out.min() and out.max() <= 1 for out in outputs)
        scores[name] = {"lrec": np.array([r.lrec for r in rows]), "ldiff": np.array([r.ldiff for r in rows])}
    for column, median_bound, worst_bound in (("ldiff", 5e-3, 4e-2), ("lrec", 1e-3, 5e-3)):
        exact, low = scores["fp32"][column], scores["bf16"][column]
        relative = np.abs(low - exact) / exact
        assert np.median(relative) < median_bound and relative.max() < worst_bound, (column, relative)
        assert spearmanr(exact, low)[0] > 0.999, column
