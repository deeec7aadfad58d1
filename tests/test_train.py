"""memscore.train: a trained victim's checkpoint carries its model arguments, so the API (`open_victim` with no
options) and the CLI load it alike; checkpoints of earlier versions (architecture in `CKPT.json`) still load."""
from __future__ import annotations

import json
from dataclasses import asdict
from types import SimpleNamespace

import pytest
import torch

from memscore.cli import build_parser
from memscore.config import ScoreConfig
from memscore.data import AlignedFolder
from memscore.run import resolve_config
from memscore.settings import settings_from_arguments
from memscore.synthetic import write_aligned_dataset
from memscore.train import TrainingRecipe, VictimArch, read_arch, train_pix2pix
from memscore.victims import open_victim, trained_size
from memscore.victims.checkpoint import CheckpointError

ARCH = VictimArch(netG="unet_64", ngf=4, norm="instance", use_dropout=False, size=64)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("train")
    write_aligned_dataset(root / "data", 4, size=64, split={"train": range(4)})
    recipe = TrainingRecipe(netG=ARCH.netG, size=ARCH.size, ngf=ARCH.ngf, norm=ARCH.norm, use_jitter=False, epochs=1,
                            batch_size=2)
    return str(train_pix2pix(AlignedFolder(root / "data", "BtoA"), root / "victim" / "g.pth", recipe, ndf=4,
                             device="cpu", progress=False))


def _outputs(victim, x: torch.Tensor) -> torch.Tensor:
    items = [SimpleNamespace(pair=SimpleNamespace(id=f"img{i}"), x=image) for i, image in enumerate(x)]
    return torch.stack(victim.reconstruct(items))


def test_trained_victim_opens_with_no_options_as_the_cli_opens_it(trained, tmp_path):
    spec = f"pix2pix:{trained}"
    api = resolve_config(ScoreConfig(victim=spec), "cpu")
    args = build_parser().parse_args(["score", "--victim", spec, "--out", str(tmp_path / "s.zarr")])
    assert resolve_config(settings_from_arguments(ScoreConfig, args), "cpu") == api  # one resolution for both
    assert api.victim_size == ARCH.size == trained_size(spec) and read_arch(trained) == ARCH
    assert resolve_config(ScoreConfig(victim=spec, victim_size=32), "cpu").victim_size == 32  # explicit size wins
    x = torch.rand(3, 3, 64, 64)
    opened = _outputs(open_victim(spec), x)
    explicit = _outputs(open_victim(spec, **ARCH.load_options()), x)  # what the CLI passed before
    assert torch.equal(opened, explicit)


def test_explicit_options_win_over_the_checkpoint_arguments(trained):
    with pytest.raises(CheckpointError, match="ngf=8"):
        open_victim(f"pix2pix:{trained}", ngf=8)


def test_checkpoints_with_the_architecture_beside_them_still_load(trained, tmp_path):
    legacy = tmp_path / "old.pth"
    torch.save(torch.load(trained, weights_only=True)["model"], legacy)  # a plain state dict, as before
    (tmp_path / "old.pth.json").write_text(json.dumps(asdict(ARCH)))
    x = torch.rand(2, 3, 64, 64)
    torch.testing.assert_close(_outputs(open_victim(f"pix2pix:{legacy}"), x),
                               _outputs(open_victim(f"pix2pix:{trained}"), x), rtol=0, atol=0)
    assert trained_size(f"pix2pix:{legacy}") == 64 and read_arch(legacy) == ARCH
    (tmp_path / "old.pth.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"old.pth.json: architecture file is not valid JSON"):
        open_victim(f"pix2pix:{legacy}")


def test_public_checkpoints_have_no_arguments_and_take_the_public_defaults(trained, tmp_path):
    plain = tmp_path / "public.pth"
    torch.save(torch.load(trained, weights_only=True)["model"], plain)
    assert read_arch(plain) is None and trained_size(f"pix2pix:{plain}") is None
    with pytest.raises(CheckpointError, match="netG=unet_256"):  # the public default architecture
        open_victim(f"pix2pix:{plain}")
