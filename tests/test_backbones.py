"""memscore.backbones: real embedded weights load and see a building; missing weights say where to put them."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from memscore.backbones import WeightsMissing, create_backbone, torch_hub_checkpoints, weights_sha256
from memscore.images import load_rgb
from memscore.preprocess import normalise, resize_shorter_center_crop, to_tensor

BUILDING_CLASSES = {"prison", "palace", "monastery", "church", "library", "boathouse", "triumphal arch",
                    "cinema", "bell cote", "planetarium", "mosque", "dome", "castle", "apiary", "patio",
                    "vault", "sliding door", "window shade", "window screen", "picket fence", "restaurant",
                    "barbershop", "bakery", "tobacco shop", "bookshop", "grocery store", "toyshop"}


def _classify(backbone, x: torch.Tensor) -> list[list[str]]:
    """The ImageNet classifier head of the same weights file, on top of the backbone's last stage."""
    from torchvision.models import ResNet50_Weights
    categories = ResNet50_Weights.IMAGENET1K_V1.meta["categories"]
    state = torch.load(backbone.weights_path, map_location="cpu", weights_only=True)
    h = backbone(x)[-1]
    h = F.conv2d(h, state["_conv_head.weight"])
    h = F.relu6(F.batch_norm(h, state["_bn1.running_mean"], state["_bn1.running_var"], state["_bn1.weight"],
                             state["_bn1.bias"], eps=1e-3))
    logits = F.linear(h.mean((2, 3)), state["_fc.weight"], state["_fc.bias"])
    return [[categories[i] for i in row] for row in logits.topk(5).indices.tolist()]


def test_efficientnet_lite0_embedded_weights_recognise_facades(facades):
    backbone = create_backbone("efficientnet_lite0")
    assert backbone.stage_channels == (24, 40, 112, 320) and backbone.stage_strides == (4, 8, 16, 32)
    photos = [load_rgb(str(facades / "train" / f"{i}.jpg"), "left") for i in range(1, 9)]
    x = torch.stack([normalise(resize_shorter_center_crop(to_tensor(p)), backbone.mean, backbone.std) for p in photos])
    with torch.no_grad():
        stages = backbone(x)
        top5 = _classify(backbone, x)
    assert [tuple(s.shape[1:]) for s in stages] == [(24, 56, 56), (40, 28, 28), (112, 14, 14), (320, 7, 7)]
    hits = sum(bool(BUILDING_CLASSES & set(row)) for row in top5)
    assert hits >= 6, f"real weights should see buildings in facade photos; top-5s were {top5}"
    assert len(weights_sha256(backbone.weights_path)) == 64


def test_wide_resnet_stages_and_missing_weights_message(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(WeightsMissing) as caught:
        create_backbone("wide_resnet50_2")
    message = str(caught.value)
    assert "wide_resnet50_2-95faca4d.pth" in message and str(torch_hub_checkpoints()) in message
    assert "--weights" in message
    backbone = create_backbone("wide_resnet50_2", pretrained=False)
    with torch.no_grad():
        stages = backbone(torch.randn(1, 3, 224, 224))
    assert [tuple(s.shape[1:]) for s in stages] == [(256, 56, 56), (512, 28, 28), (1024, 14, 14), (2048, 7, 7)]
    assert weights_sha256(backbone.weights_path) == "random-init"


def test_explicit_weights_path_is_used_and_checked(tmp_path):
    net = create_backbone("wide_resnet50_2", pretrained=False)
    from torchvision.models import wide_resnet50_2
    reference = wide_resnet50_2(weights=None)
    path = tmp_path / "wrn.pth"
    torch.save(reference.state_dict(), path)
    loaded = create_backbone("wide_resnet50_2", weights=str(path))
    assert torch.equal(loaded.stages[0][0].conv1.weight, reference.layer1[0].conv1.weight)
    assert loaded.weights_path == str(path) and net.weights_path is None
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="bad.pth"):
        create_backbone("wide_resnet50_2", weights=str(bad))
