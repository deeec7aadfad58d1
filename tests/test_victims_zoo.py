"""Tests for the public-checkpoint victim families (engine/victims/pix2pix, pix2pixhd, spade, checkpoint).
Expected state-dict keys are derived here by hand from the public definitions, not from our modules."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from memscore.victims import pix2pix, pix2pixhd, spade
from memscore.victims.checkpoint import CheckpointError


def _shapes(module: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def _n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _randomize(module: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights and non-trivial running stats, so loading and modes are observable."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if t.is_floating_point():
                values = torch.rand(t.shape, generator=gen) * 0.5 + 0.5 if name.endswith("running_var") else \
                    torch.randn(t.shape, generator=gen) * 0.05
                t.copy_(values)
    return module


def _save(state: dict[str, torch.Tensor], path, prefix: str = "") -> str:
    torch.save({prefix + k: v for k, v in state.items()}, path)
    return str(path)


def _truncated(path, tmp_path) -> str:
    data = open(path, "rb").read()
    bad = tmp_path / "truncated.pth"
    bad.write_bytes(data[: len(data) // 2])
    return str(bad)


# ----------------------------------------------------------------------------------------- pix2pix
# Public nesting (models/networks.py): UnetSkipConnectionBlock.model is
#   outermost [downconv, sub, uprelu, upconv(bias), tanh]
#   middle    [downrelu, downconv, downnorm, sub, uprelu, upconv, upnorm, (dropout)]
#   innermost [downrelu, downconv, uprelu, upconv, upnorm]
# convs carry a bias only with instance norm; BatchNorm2d keys weight/bias/running_*/num_batches_tracked.

def _norm_keys(prefix: str, c: int, norm: str) -> dict[str, tuple[int, ...]]:
    if norm != "batch":
        return {}
    return {f"{prefix}.weight": (c,), f"{prefix}.bias": (c,), f"{prefix}.running_mean": (c,),
            f"{prefix}.running_var": (c,), f"{prefix}.num_batches_tracked": ()}


def _conv_keys(prefix: str, shape: tuple[int, ...], bias: bool, out_dim: int = 0) -> dict[str, tuple[int, ...]]:
    keys = {f"{prefix}.weight": shape}
    if bias:
        keys[f"{prefix}.bias"] = (shape[out_dim],)
    return keys


def expected_unet(num_downs: int, ngf: int, norm: str, input_nc: int = 3, output_nc: int = 3) -> dict:
    bias = norm == "instance"
    # (outer_nc, inner_nc) from the outermost level inwards
    levels = [(output_nc, ngf), (ngf, ngf * 2), (ngf * 2, ngf * 4), (ngf * 4, ngf * 8)]
    levels += [(ngf * 8, ngf * 8)] * (num_downs - 4)
    keys: dict[str, tuple[int, ...]] = {}
    prefix = "model.model"
    for depth, (outer, inner) in enumerate(levels):
        if depth == 0:
            keys |= _conv_keys(f"{prefix}.0", (inner, input_nc, 4, 4), bias)
            keys |= _conv_keys(f"{prefix}.3", (inner * 2, outer, 4, 4), True, out_dim=1)
            prefix += ".1.model"
        elif depth == len(levels) - 1:
            keys |= _conv_keys(f"{prefix}.1", (inner, outer, 4, 4), bias)
            keys |= _conv_keys(f"{prefix}.3", (inner, outer, 4, 4), bias, out_dim=1)
            keys |= _norm_keys(f"{prefix}.4", outer, norm)
        else:
            keys |= _conv_keys(f"{prefix}.1", (inner, outer, 4, 4), bias)
            keys |= _norm_keys(f"{prefix}.2", inner, norm)
            keys |= _conv_keys(f"{prefix}.5", (inner * 2, outer, 4, 4), bias, out_dim=1)
            keys |= _norm_keys(f"{prefix}.6", outer, norm)
            prefix += ".3.model"
    return keys


def expected_resnet(
    n_blocks: int, ngf: int, norm: str, use_dropout: bool, input_nc: int = 3, output_nc: int = 3
) -> dict:
    bias = norm == "instance"
    keys = _conv_keys("model.1", (ngf, input_nc, 7, 7), bias) | _norm_keys("model.2", ngf, norm)
    keys |= _conv_keys("model.4", (ngf * 2, ngf, 3, 3), bias) | _norm_keys("model.5", ngf * 2, norm)
    keys |= _conv_keys("model.7", (ngf * 4, ngf * 2, 3, 3), bias) | _norm_keys("model.8", ngf * 4, norm)
    second = 6 if use_dropout else 5  # [pad, conv, norm, relu, (dropout), pad, conv, norm]
    for b in range(n_blocks):
        for conv in (1, second):
            keys |= _conv_keys(f"model.{10 + b}.conv_block.{conv}", (ngf * 4, ngf * 4, 3, 3), bias)
            keys |= _norm_keys(f"model.{10 + b}.conv_block.{conv + 1}", ngf * 4, norm)
    i = 10 + n_blocks
    keys |= _conv_keys(f"model.{i}", (ngf * 4, ngf * 2, 3, 3), bias, out_dim=1)
    keys |= _norm_keys(f"model.{i + 1}", ngf * 2, norm)
    keys |= _conv_keys(f"model.{i + 3}", (ngf * 2, ngf, 3, 3), bias, out_dim=1)
    keys |= _norm_keys(f"model.{i + 4}", ngf, norm)
    keys |= _conv_keys(f"model.{i + 7}", (output_nc, ngf, 7, 7), True)
    return keys


@pytest.mark.parametrize("netG,num_downs", [("unet_128", 7), ("unet_256", 8)])
@pytest.mark.parametrize("norm", ["batch", "instance", "none"])
def test_pix2pix_unet_keys_match_public_layout(netG, num_downs, norm):
    g = pix2pix.build_generator(netG, ngf=4, norm=norm, use_dropout=True)
    assert _shapes(g) == expected_unet(num_downs, 4, norm)


@pytest.mark.parametrize("netG,n_blocks", [("resnet_6blocks", 6), ("resnet_9blocks", 9)])
@pytest.mark.parametrize("norm,use_dropout", [("batch", True), ("instance", False), ("none", True)])
def test_pix2pix_resnet_keys_match_public_layout(netG, n_blocks, norm, use_dropout):
    g = pix2pix.build_generator(netG, input_nc=1, output_nc=2, ngf=4, norm=norm, use_dropout=use_dropout)
    assert _shapes(g) == expected_resnet(n_blocks, 4, norm, use_dropout, input_nc=1, output_nc=2)


def test_pix2pix_parameter_counts_match_public_logs():
    # "[Network G] Total number of parameters : 54.414 M" etc., as printed by the public training scripts.
    with torch.device("meta"):
        assert round(_n_params(pix2pix.build_generator("unet_256")) / 1e6, 3) == 54.414
        assert round(_n_params(pix2pix.build_generator("resnet_9blocks", norm="instance")) / 1e6, 3) == 11.378
        assert round(_n_params(pix2pix.build_discriminator(6)) / 1e6, 3) == 2.769
        assert round(_n_params(pix2pix.build_discriminator(3, norm="instance")) / 1e6, 3) == 2.765


def test_pix2pix_discriminator_layout():
    d = pix2pix.build_discriminator(6, ndf=4, n_layers=3)
    keys = _shapes(d)
    assert keys["model.0.weight"] == (4, 6, 4, 4) and "model.0.bias" in keys
    assert keys["model.2.weight"] == (8, 4, 4, 4) and "model.2.bias" not in keys
    assert keys["model.8.weight"] == (32, 16, 4, 4) and keys["model.9.running_mean"] == (32,)
    assert keys["model.11.weight"] == (1, 32, 4, 4) and "model.11.bias" in keys
    assert d(torch.zeros(1, 6, 64, 64)).shape == (1, 1, 6, 6)


@pytest.fixture
def unet128(tmp_path):
    """A small unet_128 checkpoint in the public layout, saved with a DataParallel prefix."""
    g = _randomize(pix2pix.build_generator("unet_128", ngf=8, norm="batch", use_dropout=True))
    state = {k: v.clone() for k, v in g.state_dict().items()}
    return _save(state, tmp_path / "latest_net_G.pth", prefix="module."), state


def _load128(path, **kw):
    return pix2pix.load(path, netG="unet_128", ngf=8, **kw)


def test_pix2pix_load_strict_with_module_prefix(unet128):
    path, state = unet128
    victim = _load128(path)
    assert set(victim.generator.state_dict()) == set(state)  # the wrapper keeps the public keys
    assert all(torch.equal(victim.generator.state_dict()[k], v) for k, v in state.items())
    x = torch.rand(2, 3, 128, 128) * 2 - 1
    y = victim(x, seeds=torch.tensor([1, 2]))
    assert y.shape == (2, 3, 128, 128) and y.min() >= -1 and y.max() <= 1


def test_pix2pix_resnet6_forward(tmp_path):
    g = _randomize(pix2pix.build_generator("resnet_6blocks", ngf=8, norm="instance", use_dropout=False))
    path = _save(g.state_dict(), tmp_path / "g.pth")
    victim = pix2pix.load(path, netG="resnet_6blocks", ngf=8, norm="instance", use_dropout=False)
    y = victim(torch.rand(3, 3, 64, 64) * 2 - 1)
    assert y.shape == (3, 3, 64, 64) and y.abs().max() <= 1


def test_pix2pix_old_instance_norm_stats_are_dropped(tmp_path):
    # Checkpoints from torch < 0.4 carry InstanceNorm running stats; the public loader drops them.
    g = pix2pix.build_generator("resnet_6blocks", ngf=4, norm="instance", use_dropout=False)
    state = dict(g.state_dict())
    state["model.2.running_mean"] = torch.zeros(4)
    state["model.2.running_var"] = torch.ones(4)
    state["model.2.num_batches_tracked"] = torch.tensor(0)
    pix2pix.load(_save(state, tmp_path / "old.pth"), netG="resnet_6blocks", ngf=4, norm="instance", use_dropout=False)


def test_pix2pix_wrong_architecture_names_file_and_options(unet128):
    path, _ = unet128
    with pytest.raises(CheckpointError) as err:
        pix2pix.load(path, netG="unet_128", ngf=16)
    message = str(err.value)
    assert path in message and "ngf=16" in message and "shape mismatches" in message and "--ngf" in message
    with pytest.raises(CheckpointError) as err:
        pix2pix.load(path, netG="unet_256", ngf=8)
    assert path in str(err.value) and "missing keys" in str(err.value)


def test_pix2pix_truncated_file_names_file(unet128, tmp_path):
    bad = _truncated(unet128[0], tmp_path)
    with pytest.raises(CheckpointError, match="truncated.pth"):
        _load128(bad)


def test_pix2pix_train_mode_batch_equals_batches_of_one(unet128):
    victim = _load128(unet128[0])
    running = {k: v.clone() for k, v in victim.generator.state_dict().items()}
    x = torch.rand(4, 3, 128, 128) * 2 - 1
    seeds = torch.tensor([11, 12, 13, 14])
    with torch.no_grad():
        batched = victim(x, seeds=seeds)
        singles = torch.cat([victim(x[i : i + 1], seeds=seeds[i : i + 1]) for i in range(4)])
        again = victim(x, seeds=seeds)
        shuffled = victim(x.flip(0), seeds=seeds.flip(0)).flip(0)
        other_seeds = victim(x, seeds=seeds + 100)
        victim.mode = "eval"
        evaluated = victim(x)
    torch.testing.assert_close(batched, singles, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(batched, shuffled, atol=1e-5, rtol=1e-5)
    assert torch.equal(batched, again)
    assert not torch.allclose(batched, other_seeds, atol=1e-3)  # dropout is live
    assert not torch.allclose(batched, evaluated, atol=1e-3)
    after = victim.generator.state_dict()
    assert all(torch.equal(after[k], v) for k, v in running.items())


def test_pix2pix_train_mode_is_public_batch_of_one(unet128):
    # Without dropout, train mode must equal the public network in .train() fed one image.
    g = pix2pix.build_generator("unet_128", ngf=8, use_dropout=False)
    g.load_state_dict({k.removeprefix("module."): v for k, v in torch.load(unet128[0]).items()})
    victim = pix2pix.Pix2PixVictim(copy.deepcopy(g), mode="train")
    x = torch.rand(3, 3, 128, 128) * 2 - 1
    with torch.no_grad():
        reference = torch.cat([g.train()(x[i : i + 1]) for i in range(3)])
        torch.testing.assert_close(victim(x), reference, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(pix2pix.Pix2PixVictim(g, mode="eval")(x), g.eval()(x))


# --------------------------------------------------------------------------------------- pix2pixHD
# Public layout (models/networks.py): GlobalGenerator.model = [pad, conv, norm, relu]
#   + n_down x [conv, norm, relu] + n_blocks x ResnetBlock + n_down x [convT, norm, relu] + [pad, conv, tanh];
# ResnetBlock.conv_block = [pad, conv, norm, relu, pad, conv, norm]; every conv has a bias; InstanceNorm has no keys.

def _hd_block(prefix: str, dim: int) -> dict:
    keys = {}
    for conv in (1, 5):
        keys |= _conv_keys(f"{prefix}.conv_block.{conv}", (dim, dim, 3, 3), True)
    return keys


def expected_hd_global(input_nc: int, ngf: int, n_down: int, n_blocks: int, head: bool = True) -> dict:
    prefix = "model"
    keys = _conv_keys(f"{prefix}.1", (ngf, input_nc, 7, 7), True)
    for i in range(n_down):
        keys |= _conv_keys(f"{prefix}.{4 + 3 * i}", (ngf * 2 ** (i + 1), ngf * 2**i, 3, 3), True)
    i = 4 + 3 * n_down
    for b in range(n_blocks):
        keys |= _hd_block(f"{prefix}.{i + b}", ngf * 2**n_down)
    i += n_blocks
    for k in range(n_down):
        c = ngf * 2 ** (n_down - k)
        keys |= _conv_keys(f"{prefix}.{i + 3 * k}", (c, c // 2, 3, 3), True, out_dim=1)
    if head:
        keys |= _conv_keys(f"{prefix}.{i + 3 * n_down + 1}", (3, ngf, 7, 7), True)
    return keys


def expected_hd_local(input_nc: int, ngf: int, n_down: int, n_blocks: int, n_blocks_local: int) -> dict:
    # LocalEnhancer (one enhancer): the global part at 2*ngf without its head, then model1_1 / model1_2.
    keys = expected_hd_global(input_nc, 2 * ngf, n_down, n_blocks, head=False)
    keys |= _conv_keys("model1_1.1", (ngf, input_nc, 7, 7), True) | _conv_keys("model1_1.4", (2 * ngf, ngf, 3, 3), True)
    for b in range(n_blocks_local):
        keys |= _hd_block(f"model1_2.{b}", 2 * ngf)
    keys |= _conv_keys(f"model1_2.{n_blocks_local}", (2 * ngf, ngf, 3, 3), True, out_dim=1)
    keys |= _conv_keys(f"model1_2.{n_blocks_local + 4}", (3, ngf, 7, 7), True)
    return keys


HD_SMALL = dict(ngf=8, n_downsample_global=2, n_blocks_global=2, n_blocks_local=1)


def test_pix2pixhd_global_keys_match_public_layout():
    g = pix2pixhd.build_generator("global", input_nc=6, ngf=8, n_downsample_global=2, n_blocks_global=2)
    assert _shapes(g) == expected_hd_global(6, 8, 2, 2)
    # Default options (label_nc 35 + instance edge = 36 channels, 4 downsamplings, 9 blocks).
    with torch.device("meta"):
        assert _shapes(pix2pixhd.build_generator()) == expected_hd_global(36, 64, 4, 9)


def test_pix2pixhd_local_keys_match_public_layout():
    g = pix2pixhd.build_generator("local", input_nc=6, ngf=4, n_downsample_global=2, n_blocks_global=2,
                                  n_blocks_local=2)
    assert _shapes(g) == expected_hd_local(6, 4, 2, 2, 2)


def test_pix2pixhd_label_encoding_matches_public():
    label = torch.tensor([[[[0, 1], [4, 1]]]])
    onehot = pix2pixhd.one_hot(label, 5)
    assert onehot.shape == (1, 5, 2, 2) and torch.equal(onehot.argmax(1, keepdim=True), label)
    assert torch.equal(onehot.sum(1), torch.ones(1, 2, 2))
    inst = torch.tensor([[[[1, 1, 1, 1], [1, 1, 2, 2], [1, 1, 2, 2], [1, 1, 1, 1]]]])
    expected = torch.tensor([[[[0, 0, 1, 1], [0, 1, 1, 1], [0, 1, 1, 1], [0, 0, 1, 1]]]], dtype=torch.float32)
    assert torch.equal(pix2pixhd.instance_edges(inst), expected)
    with pytest.raises(ValueError, match="outside"):
        pix2pixhd.one_hot(torch.full((1, 1, 2, 2), 5), 5)


@pytest.fixture
def hd_global(tmp_path):
    g = _randomize(pix2pixhd.build_generator("global", input_nc=6, ngf=8, n_downsample_global=2, n_blocks_global=2))
    return _save(g.state_dict(), tmp_path / "latest_net_G.pth", prefix="module."), g


def test_pix2pixhd_load_and_forward(hd_global):
    path, reference = hd_global
    victim = pix2pixhd.load(path, label_nc=5, **HD_SMALL)
    label = torch.randint(0, 5, (2, 1, 64, 64))
    inst = torch.randint(0, 3, (2, 1, 64, 64))
    with torch.no_grad():
        y = victim(label, inst)
        edges = pix2pixhd.instance_edges(inst)
        expected = reference.eval()(torch.cat([pix2pixhd.one_hot(label, 5), edges], 1))
        torch.testing.assert_close(y, expected)
        torch.testing.assert_close(victim(label, edges=edges), y)
    assert y.shape == (2, 3, 64, 64) and y.abs().max() <= 1
    with pytest.raises(ValueError, match="inst"):
        victim(label)


def test_pix2pixhd_local_and_image_input(tmp_path):
    g = _randomize(pix2pixhd.build_generator("local", input_nc=3, **HD_SMALL))
    path = _save(g.state_dict(), tmp_path / "local.pth")
    victim = pix2pixhd.load(path, netG="local", label_nc=0, no_instance=True, **HD_SMALL)
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(victim(x), g.eval()(x))
    assert victim(x).shape == (1, 3, 64, 64)


def test_pix2pixhd_batch_norm_uses_per_image_statistics(tmp_path):
    # The public test script never calls eval(): BatchNorm sees batches of one in train mode.
    options = dict(ngf=4, n_downsample_global=1, n_blocks_global=1, norm="batch")
    g = _randomize(pix2pixhd.build_generator("global", input_nc=3, **options))
    path = _save(g.state_dict(), tmp_path / "bn.pth")
    victim = pix2pixhd.load(path, label_nc=0, no_instance=True, **options)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        reference = torch.cat([copy.deepcopy(g).train()(x[i : i + 1]) for i in range(2)])
        torch.testing.assert_close(victim(x), reference, atol=1e-5, rtol=1e-5)
    assert all(torch.equal(victim.generator.state_dict()[k], v) for k, v in g.state_dict().items())


def test_pix2pixhd_wrong_architecture_and_truncated(hd_global, tmp_path):
    path, _ = hd_global
    with pytest.raises(CheckpointError) as err:
        pix2pixhd.load(path, label_nc=5, no_instance=True, **HD_SMALL)  # 5 input channels instead of 6
    assert path in str(err.value) and "model.1.weight" in str(err.value) and "--no_instance" in str(err.value)
    with pytest.raises(CheckpointError, match="missing keys"):
        pix2pixhd.load(path, netG="local", label_nc=5, **HD_SMALL)
    with pytest.raises(CheckpointError, match="truncated.pth"):
        pix2pixhd.load(_truncated(path, tmp_path), label_nc=5, **HD_SMALL)


# ------------------------------------------------------------------------------------------- SPADE
# Public layout (models/networks/generator.py, architecture.py, normalization.py): fc conv, SPADEResnetBlocks
# head_0, G_middle_0/1, up_0..up_3 (+ up_4 for 'most'), conv_img. Block convs are spectral-normed
# (weight_orig, weight_u [out], weight_v [in*k*k]); conv_s has no bias. Each SPADE: param_free_norm
# (BatchNorm2d without affine: running stats only), mlp_shared.0 (128 hidden), mlp_gamma, mlp_beta.

def _spade_norm(prefix: str, nc: int, semantic_nc: int) -> dict:
    return {f"{prefix}.param_free_norm.running_mean": (nc,), f"{prefix}.param_free_norm.running_var": (nc,),
            f"{prefix}.param_free_norm.num_batches_tracked": (),
            f"{prefix}.mlp_shared.0.weight": (128, semantic_nc, 3, 3), f"{prefix}.mlp_shared.0.bias": (128,),
            f"{prefix}.mlp_gamma.weight": (nc, 128, 3, 3), f"{prefix}.mlp_gamma.bias": (nc,),
            f"{prefix}.mlp_beta.weight": (nc, 128, 3, 3), f"{prefix}.mlp_beta.bias": (nc,)}


def _sn_conv(prefix: str, cout: int, cin: int, k: int, bias: bool = True) -> dict:
    keys = {f"{prefix}.weight_orig": (cout, cin, k, k), f"{prefix}.weight_u": (cout,),
            f"{prefix}.weight_v": (cin * k * k,)}
    if bias:
        keys[f"{prefix}.bias"] = (cout,)
    return keys


def expected_spade(semantic_nc: int, nf: int, most: bool = False) -> dict:
    blocks = [("head_0", 16, 16), ("G_middle_0", 16, 16), ("G_middle_1", 16, 16),
              ("up_0", 16, 8), ("up_1", 8, 4), ("up_2", 4, 2), ("up_3", 2, 1)]
    keys = {"fc.weight": (16 * nf, semantic_nc, 3, 3), "fc.bias": (16 * nf,)}
    widths = [(name, fin * nf, fout * nf) for name, fin, fout in blocks] + ([("up_4", nf, nf // 2)] if most else [])
    for name, fin, fout in widths:
        mid = min(fin, fout)
        keys |= _sn_conv(f"{name}.conv_0", mid, fin, 3) | _sn_conv(f"{name}.conv_1", fout, mid, 3)
        keys |= _spade_norm(f"{name}.norm_0", fin, semantic_nc) | _spade_norm(f"{name}.norm_1", mid, semantic_nc)
        if fin != fout:
            keys |= _sn_conv(f"{name}.conv_s", fout, fin, 1, bias=False)
            keys |= _spade_norm(f"{name}.norm_s", fin, semantic_nc)
    final = nf // 2 if most else nf
    return keys | {"conv_img.weight": (3, final, 3, 3), "conv_img.bias": (3,)}


def test_spade_keys_match_public_layout():
    assert _shapes(spade.SPADEGenerator(7, ngf=8, crop_size=64)) == expected_spade(7, 8)
    most = spade.SPADEGenerator(7, ngf=8, num_upsampling_layers="most", crop_size=256)
    assert _shapes(most) == expected_spade(7, 8, most=True)


@pytest.fixture
def spade_small(tmp_path):
    # label_nc 5 + dontcare + instance edge = 7 semantic channels
    g = _randomize(spade.SPADEGenerator(7, ngf=8, crop_size=64))
    return _save(g.state_dict(), tmp_path / "latest_net_G.pth"), g


def test_spade_load_and_forward(spade_small):
    path, reference = spade_small
    victim = spade.load(path, label_nc=5, ngf=8, crop_size=64)
    label = torch.randint(0, 5, (2, 1, 64, 64))
    label[:, :, :8] = 255  # dontcare, mapped to class label_nc
    inst = torch.randint(0, 3, (2, 1, 64, 64))
    with torch.no_grad():
        y = victim(label, inst)
        onehot = pix2pixhd.one_hot(label.masked_fill(label == 255, 5), 6)
        semantics = torch.cat([onehot, pix2pixhd.instance_edges(inst)], 1)
        torch.testing.assert_close(y, reference.eval()(semantics))
        again = victim(label, inst)
    assert y.shape == (2, 3, 64, 64) and y.abs().max() <= 1
    assert torch.equal(y, again)  # eval-mode spectral norm: no power iteration between calls
    assert all(torch.equal(victim.generator.state_dict()[k], v) for k, v in reference.state_dict().items())


def test_spade_more_upsampling_with_aspect_ratio(tmp_path):
    g = _randomize(spade.SPADEGenerator(4, ngf=4, num_upsampling_layers="more", crop_size=128, aspect_ratio=2.0))
    path = _save(g.state_dict(), tmp_path / "g.pth", prefix="module.")
    victim = spade.load(path, label_nc=4, contain_dontcare_label=False, no_instance=True, ngf=4,
                        num_upsampling_layers="more", crop_size=128, aspect_ratio=2.0)
    with torch.no_grad():
        assert victim(torch.randint(0, 4, (1, 1, 64, 128))).shape == (1, 3, 64, 128)


def test_spade_wrong_architecture_and_truncated(spade_small, tmp_path):
    path, _ = spade_small
    with pytest.raises(CheckpointError) as err:
        spade.load(path, label_nc=5, ngf=8, crop_size=64, norm_G="spadesyncbatch3x3")  # no spectral norm
    message = str(err.value)
    assert path in message and "head_0.conv_0.weight_orig" in message and "--norm_G" in message
    with pytest.raises(CheckpointError, match="shape mismatches"):
        spade.load(path, label_nc=5, no_instance=True, ngf=8, crop_size=64)
    with pytest.raises(CheckpointError, match="truncated.pth"):
        spade.load(_truncated(path, tmp_path), label_nc=5, ngf=8, crop_size=64)
