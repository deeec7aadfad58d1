"""memscore.victims.diffusion: a conditional diffusers UNet2DModel as a victim (`diffusers:DIR`). The white-box
denoising error matches a loop written from diffusers' own forward process; sampled outputs depend on each image's
seed alone, for every sampler; the folder is read from safetensors only, and malformed folders are refused with one
line naming the problem."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler, UNet2DModel
from torch import nn

from memscore.batch import Prepared
from memscore.data import Pair
from memscore.errors import UsageError
from memscore.seeding import image_seed, noise_seed, sample_seed
from memscore.victims import ModelVictim, VictimError, at_size, open_victim, trained_size
from memscore.victims.diffusion import DiffusionVictim, load_diffusers, parse_timesteps, sample_size_of

SIZE = 16


def _unet(in_channels: int = 6, seed: int = 0, layers_per_block: int = 1) -> UNet2DModel:
    torch.manual_seed(seed)
    return UNet2DModel(sample_size=SIZE, in_channels=in_channels, out_channels=3, layers_per_block=layers_per_block,
                       block_out_channels=(16, 32), down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=8).eval()


def _save(folder: Path, unet: UNet2DModel | None = None, prediction_type: str = "epsilon") -> Path:
    """A DDPMPipeline-layout folder as save_pretrained writes it."""
    (unet or _unet()).save_pretrained(folder / "unet", safe_serialization=True)
    DDPMScheduler(num_train_timesteps=1000, prediction_type=prediction_type).save_pretrained(folder / "scheduler")
    return folder


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    return _save(tmp_path_factory.mktemp("diffusers"))


def _images(n: int, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("concat", ["noisy-first", "condition-first"])
def test_denoising_error_matches_a_loop_over_images_timesteps_and_draws(tmp_path, prediction_type, concat):
    unet = _unet()
    victim = load_diffusers(str(_save(tmp_path, unet, prediction_type)), concat=concat, timesteps="50/300",
                            noises=2).eval()
    x, y, seeds = _images(3, seed=1), _images(3, seed=2), torch.tensor([5, 6, 7])
    with torch.no_grad():
        got = victim.denoising_error(x, y, seeds)
    scheduler = DDPMScheduler(num_train_timesteps=1000, prediction_type=prediction_type)
    expected = []
    for i in range(3):
        errors = []
        for t in (50, 300):
            for draw in range(2):
                eps = torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(noise_seed(5 + i, t, draw)))
                x0 = y[i:i + 1]
                noisy = scheduler.add_noise(x0, eps, torch.tensor([t]))
                pair = (noisy, x[i:i + 1]) if concat == "noisy-first" else (x[i:i + 1], noisy)
                with torch.no_grad():
                    prediction = unet(torch.cat(pair, dim=1), t).sample
                abar = scheduler.alphas_cumprod[t]
                target = eps if prediction_type == "epsilon" else abar.sqrt() * eps - (1 - abar).sqrt() * x0
                errors.append(np.mean((prediction - target).numpy() ** 2))
        expected.append(np.mean(errors))
    assert got.dtype == torch.float32 and got.shape == (3,)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5)


@pytest.mark.parametrize("sampler, eta", [("ddim", 1.0), ("ddpm", 0.0), ("dpm-solver", 0.0)])
def test_an_images_sample_depends_on_its_seed_alone(saved, sampler, eta):
    victim = load_diffusers(str(saved), sampler=sampler, steps=3, eta=eta).eval()
    x, seeds = _images(3), torch.tensor([11, 22, 33])
    with torch.no_grad():
        batch = victim(x, seeds)
        alone = victim(x[1:2], seeds[1:2])
        again = victim(x, seeds)
        other_seed = victim(x[1:2], torch.tensor([44]))
    assert batch.shape == x.shape and batch.abs().max() <= 1
    torch.testing.assert_close(alone[0], batch[1], rtol=0, atol=1e-4)  # float rounding differs with batch size
    assert torch.equal(again, batch)
    assert (other_seed[0] - batch[1]).abs().max() > 1e-3


def _prepared(n: int, target_size: int) -> list[Prepared]:
    generator = torch.Generator().manual_seed(3)
    return [Prepared(Pair(f"img{i}", f"in{i}.png", f"tg{i}.png"), torch.rand(3, SIZE, SIZE, generator=generator),
                     torch.rand(3, target_size, target_size, generator=generator), torch.zeros(3), torch.zeros(1))
            for i in range(n)]


def test_open_victim_gives_samples_and_denoising_errors(saved):
    victim = open_victim(f"diffusers:{saved}", steps=3, timesteps="50,100", noises=1)
    assert isinstance(victim, ModelVictim) and victim.takes_seeds and victim.takes_denoising
    items = _prepared(2, target_size=2 * SIZE)
    outputs, others = victim.reconstruct(items), victim.reconstruct(items, sample=1)
    for output, other in zip(outputs, others):
        assert output.shape == (3, SIZE, SIZE) and 0 <= output.min() and output.max() <= 1
        assert (output - other).abs().max() > 1e-3
    errors = victim.denoising_errors(items)
    assert all(isinstance(error, float) and np.isfinite(error) for error in errors)
    seeds = torch.tensor([sample_seed(0, item.pair.id, 0) for item in items])
    x = torch.stack([item.x for item in items]) * 2 - 1
    y = torch.stack([at_size(item.y, (SIZE, SIZE)) for item in items]) * 2 - 1
    with torch.no_grad():
        expected = victim.module.denoising_error(x, y, seeds)
    np.testing.assert_allclose(errors, expected.numpy(), rtol=1e-6)
    plain = ModelVictim(nn.Identity())
    assert not plain.takes_denoising
    with pytest.raises(VictimError, match="Identity gives no denoising error.*denoising_error\\(x, y, seeds\\)"):
        plain.denoising_errors(items)


def test_sample_zero_keeps_the_seed_victims_always_had():
    assert sample_seed(4, "a/b", 0) == image_seed(4, "a/b") >> 1
    seeds = {sample_seed(4, "a/b", k) for k in range(5)} | {noise_seed(9, t, j) for t in (50, 100) for j in (0, 1)}
    assert len(seeds) == 9 and all(0 <= seed < 2 ** 63 for seed in seeds)


def _refusal(folder: Path, **options) -> str:
    with pytest.raises(UsageError) as error:
        open_victim(f"diffusers:{folder}", **options)
    message = str(error.value)
    assert "\n" not in message
    return message


def _edit_json(path: Path, **changes) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def test_malformed_folders_are_refused_in_one_line(tmp_path, saved):
    assert "does not exist" in _refusal(tmp_path / "absent")
    no_config = _save(tmp_path / "no_config")
    (no_config / "unet" / "config.json").unlink()
    assert "unet/config.json: missing" in _refusal(no_config)
    no_scheduler = _save(tmp_path / "no_scheduler")
    (no_scheduler / "scheduler" / "scheduler_config.json").unlink()
    assert "scheduler/scheduler_config.json: missing" in _refusal(no_scheduler)
    bad_json = _save(tmp_path / "bad_json")
    (bad_json / "scheduler" / "scheduler_config.json").write_text("{not json")
    assert "scheduler_config.json: not readable JSON" in _refusal(bad_json)
    three = _save(tmp_path / "three", _unet(in_channels=3))
    assert "unet/config.json: in_channels=3, out_channels=3" in _refusal(three)
    other_class = _save(tmp_path / "other_class")
    _edit_json(other_class / "unet" / "config.json", _class_name="UNet2DConditionModel")
    assert "'UNet2DConditionModel'; memscore loads UNet2DModel only" in _refusal(other_class)
    pickled = _save(tmp_path / "pickled")
    (pickled / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    torch.save(_unet().state_dict(), pickled / "unet" / "diffusion_pytorch_model.bin")
    message = _refusal(pickled)
    assert "diffusion_pytorch_model.bin" in message and "safetensors only" in message
    assert "safe_serialization=True" in message
    unfit = _save(tmp_path / "unfit")
    _edit_json(unfit / "unet" / "config.json", layers_per_block=2)
    assert "diffusion_pytorch_model.safetensors: weights do not fit unet/config.json (missing keys" in _refusal(unfit)
    prediction = _save(tmp_path / "prediction")
    _edit_json(prediction / "scheduler" / "scheduler_config.json", prediction_type="flow")
    assert "prediction_type 'flow' is unknown" in _refusal(prediction)
    schedule = _save(tmp_path / "schedule")
    _edit_json(schedule / "scheduler" / "scheduler_config.json", beta_schedule="wavy")
    assert "scheduler/scheduler_config.json cannot make a DDPMScheduler (NotImplementedError" in _refusal(schedule)
    assert "sampler='euler' is unknown; one of ddim, ddpm, dpm-solver" in _refusal(saved, sampler="euler")
    assert "concat='after' is unknown" in _refusal(saved, concat="after")
    assert "timesteps=(50, 1000) must be whole numbers from 0 to 999" in _refusal(saved, timesteps="50/1000")
    assert "timesteps='50;100' must be whole numbers" in _refusal(saved, timesteps="50;100")
    assert "steps=0 must be" in _refusal(saved, steps=0) and "noises=0 must be" in _refusal(saved, noises=0)
    assert "eta=-1 must be a number >= 0" in _refusal(saved, eta=-1)
    with pytest.raises(VictimError, match="unknown victim option.*guidance.*concat, sampler, steps"):
        open_victim(f"diffusers:{saved}", guidance=2)


def test_timesteps_come_as_ints_or_text():
    assert parse_timesteps("50/100/200") == parse_timesteps("50,100,200") == parse_timesteps((50, 100, 200))
    assert parse_timesteps(50) == (50,) and parse_timesteps([7]) == (7,)


def test_trained_size_is_the_unets_sample_size(saved, tmp_path):
    assert trained_size(f"diffusers:{saved}") == SIZE == sample_size_of(str(saved))
    assert isinstance(load_diffusers(str(saved)), DiffusionVictim) and load_diffusers(str(saved)).sample_size == SIZE
    square = _save(tmp_path / "square")
    _edit_json(square / "unet" / "config.json", sample_size=[SIZE, SIZE])
    assert trained_size(f"diffusers:{square}") == SIZE
    _edit_json(square / "unet" / "config.json", sample_size=[SIZE, 2 * SIZE])
    with pytest.raises(UsageError, match="sample_size \\[16, 32\\] is not square"):
        trained_size(f"diffusers:{square}")
