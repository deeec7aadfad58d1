"""memscore.victims: one spec parser and one registry of kinds, option checking, TorchScript victims, the
refusals (instance-map checkpoints, pickled checkpoints) and recon folders that stay inside their folder."""
from __future__ import annotations

import builtins
from types import SimpleNamespace
from typing import Optional

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from memscore.victims import (VICTIM_KINDS, ModelVictim, ReconFolder, VictimError, load, open_victim,
                            parse_victim_spec, same_size_groups, trained_size)
from memscore.victims import pix2pix, pix2pixhd, spade
from memscore.victims.checkpoint import CheckpointError


def _items(*tensors: torch.Tensor, ids: list[str] | None = None) -> list[SimpleNamespace]:
    """What a victim reads of a prepared pair: its id and the input x in [0, 1]."""
    ids = ids or [f"img{i}" for i in range(len(tensors))]
    return [SimpleNamespace(pair=SimpleNamespace(id=image_id), x=x) for image_id, x in zip(ids, tensors)]


def test_specs_are_parsed_once_against_the_registry():
    spec = parse_victim_spec("python:victims_for_tests:blur")
    assert (spec.kind, spec.target, str(spec)) == ("python", "victims_for_tests:blur", "python:victims_for_tests:blur")
    assert parse_victim_spec("pix2pix:/a:b/c.pth").target == "/a:b/c.pth"
    assert set(VICTIM_KINDS) == {"recon", "torchscript", "python", "pix2pix", "pix2pixhd", "spade", "diffusers"}
    with pytest.raises(VictimError, match=r"'stylegan:g.pkl': unknown kind 'stylegan'.*recon:DIR.*spade:CKPT"):
        parse_victim_spec("stylegan:g.pkl")
    with pytest.raises(VictimError, match=r"'g.pth' is not KIND:TARGET.*pix2pix:CKPT"):
        parse_victim_spec("g.pth")
    for spec in ("pix2pix", "pix2pix:"):
        with pytest.raises(VictimError, match=f"victim spec '{spec}' lacks its target: write pix2pix:CKPT"):
            parse_victim_spec(spec)


def test_options_per_kind_come_from_the_family_loaders():
    assert VICTIM_KINDS["pix2pix"].options[:2] == ("netG", "ngf") and "mode" in VICTIM_KINDS["pix2pix"].options
    assert "label_nc" in VICTIM_KINDS["spade"].options and "no_instance" in VICTIM_KINDS["pix2pixhd"].options
    assert VICTIM_KINDS["recon"].options == VICTIM_KINDS["python"].options == ()


def test_an_unknown_option_is_a_victim_error_listing_the_valid_ones(tmp_path):
    path = tmp_path / "g.pth"
    torch.save(pix2pix.build_generator("unet_64", ngf=4, norm="instance").state_dict(), path)
    with pytest.raises(VictimError) as error:
        open_victim(f"pix2pix:{path}", netG="unet_64", ngf=4, norm="instance", bogus=1)
    assert "bogus" in str(error.value) and "netG, ngf, norm" in str(error.value)
    with pytest.raises(VictimError, match="bogus.*takes no options"):
        open_victim("python:victims_for_tests:blur", bogus=1)
    with pytest.raises(VictimError, match="--victim-weights is for python"):
        open_victim(f"pix2pix:{path}", weights=str(path))


class _Seeded(nn.Module):
    """A generator with per-image seeds, like pix2pix in train mode: adds seed / 100 to its input."""

    def forward(self, x: torch.Tensor, seeds: Optional[torch.Tensor] = None) -> torch.Tensor:
        return x if seeds is None else x + seeds.view(-1, 1, 1, 1).to(x.dtype) / 100


def test_torchscript_victim_is_scored_through_open_victim(tmp_path):
    torch.manual_seed(0)
    module = nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), nn.Tanh())
    path = tmp_path / "g.pt"
    torch.jit.save(torch.jit.script(module), path)
    victim = open_victim(f"torchscript:{path}")
    assert isinstance(victim, ModelVictim) and not victim.takes_labels
    x = torch.rand(2, 3, 16, 16)
    out = victim.reconstruct(_items(x[0], x[1]))
    with torch.no_grad():
        expected = (module(x * 2 - 1) + 1) / 2
    torch.testing.assert_close(torch.stack(out), expected)
    torch.jit.save(torch.jit.script(_Seeded()), tmp_path / "seeded.pt")
    assert open_victim(f"torchscript:{tmp_path / 'seeded.pt'}").takes_seeds  # read from the TorchScript schema
    with pytest.raises(VictimError, match="not a loadable TorchScript"):
        (tmp_path / "bad.pt").write_bytes(b"not a zip")
        open_victim(f"torchscript:{tmp_path / 'bad.pt'}")


def test_checkpoints_trained_with_instance_maps_are_refused(tmp_path):
    hd = pix2pixhd.build_generator("global", input_nc=5, ngf=4, n_downsample_global=1, n_blocks_global=1)
    torch.save(hd.state_dict(), tmp_path / "hd.pth")
    options = dict(label_nc=4, ngf=4, n_downsample_global=1, n_blocks_global=1)
    with pytest.raises(VictimError, match="instance maps"):
        open_victim(f"pix2pixhd:{tmp_path / 'hd.pth'}", **options)
    # the same weights read as 5 label channels and no instance map: not refused
    assert open_victim(f"pix2pixhd:{tmp_path / 'hd.pth'}", **{**options, "label_nc": 5}, no_instance=True).takes_labels
    sp = spade.SPADEGenerator(4 + 1 + 1, ngf=2, crop_size=32)  # 4 labels + dontcare + instance edge
    torch.save(sp.state_dict(), tmp_path / "spade.pth")
    with pytest.raises(VictimError, match="instance maps"):
        open_victim(f"spade:{tmp_path / 'spade.pth'}", label_nc=4, ngf=2, crop_size=32)


class _Payload:
    """Unpickling this runs code: it creates `marker`."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return builtins.exec, (f"open({self.marker!r}, 'w').close()",)


def test_a_checkpoint_that_needs_unpickling_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pth"
    torch.save({"model.0.weight": torch.zeros(1), "extra": _Payload(str(marker))}, path)
    for spec, weights in ((f"pix2pix:{path}", None), ("python:victims_for_tests:blur", str(path))):
        with pytest.raises(CheckpointError) as error:
            open_victim(spec, weights=weights)
        message = str(error.value)
        assert str(path) in message and "refused" in message and "exec" in message
        assert "torchscript:PATH" in message and "python:MODULE:FACTORY" in message and "--victim-weights" in message
        assert "weights_only" not in message
        assert not marker.exists()
    torch.load(path, weights_only=False)  # the payload is live: unpickling it does run code
    assert marker.exists()


def test_recon_ids_cannot_read_outside_the_folder(tmp_path):
    (tmp_path / "recon" / "sub").mkdir(parents=True)
    for name in ("recon/a.png", "recon/sub/b.png", "secret.png"):
        Image.fromarray(np.full((4, 4, 3), 200, np.uint8)).save(tmp_path / name)
    victim = open_victim(f"recon:{tmp_path / 'recon'}")
    assert isinstance(victim, ReconFolder)
    ids = ["a", "sub/b", "../secret", "sub/../../secret", str(tmp_path / "secret")]
    results = victim.reconstruct(_items(*[torch.zeros(3, 4, 4)] * len(ids), ids=ids))
    assert [tuple(r.shape) for r in results[:2]] == [(3, 4, 4)] * 2
    for image_id, reason in zip(ids[2:], results[2:]):
        assert isinstance(reason, str) and reason.startswith(f"{image_id}:") and "outside" in reason


def test_same_size_groups_keeps_order_within_each_size():
    tensors = [torch.zeros(3, 4, 4), torch.zeros(3, 8, 8), torch.zeros(3, 4, 4), torch.zeros(1, 4, 4)]
    assert same_size_groups(tensors) == [[0, 2], [1], [3]]


def test_load_returns_models_and_refuses_folders(tmp_path):
    assert isinstance(load("python:victims_for_tests:blur"), nn.Module)
    with pytest.raises(VictimError, match="folder of outputs"):
        load(f"recon:{tmp_path}")
    assert trained_size(f"recon:{tmp_path}") is None and trained_size("python:victims_for_tests:blur") is None


def test_an_unknown_victim_opt_stops_the_run_before_a_store_is_made(tmp_path, capsys):
    from memscore.cli import main
    from memscore.synthetic import write_aligned_dataset
    write_aligned_dataset(tmp_path / "data", 2, size=16)
    argv = ["score", str(tmp_path / "data"), "--out", str(tmp_path / "s.zarr"), "--no-progress",
            "--victim", "python:victims_for_tests:blur", "--victim-opt", "bogus=1"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "unknown victim option(s) bogus" in err and "takes no options" in err
    assert not (tmp_path / "s.zarr").exists()
