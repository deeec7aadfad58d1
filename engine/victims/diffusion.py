"""Conditional diffusion models as victims (`diffusers:DIR`): a diffusers `UNet2DModel` that denoises the target
with the RGB conditioning image concatenated on the channel axis, and its noise schedule.

As a black box it samples: the reverse chain from noise drawn per image (`forward(x, seeds)`), so every seed is
another output. As a white box it gives the denoising error at fixed timesteps (`denoising_error(x, y, seeds)`),
with noise drawn from the image's seed, the timestep and the draw alone (`memscore.seeding.noise_seed`), so the
victim and every shadow see the same noise for an image (docs/ALGORITHM.md, "Conditional diffusion models as
victims"). Weights are read from safetensors only: a pickled file could run code when loaded.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, UNet2DModel
from diffusers.utils.torch_utils import randn_tensor
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from ..errors import UsageError
from ..seeding import noise_seed

CONCATS = ("noisy-first", "condition-first")
"""Channel order of the unet's input: the noisy target then the condition (diffusers' InstructPix2Pix), or the
condition first (Palette, SR3)."""
SAMPLERS = {"ddim": DDIMScheduler, "ddpm": DDPMScheduler, "dpm-solver": DPMSolverMultistepScheduler}
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
DEFAULT_TIMESTEPS = (50, 100, 200, 300, 500)
WEIGHTS = "diffusion_pytorch_model.safetensors"
PICKLED_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")


class DiffusersError(UsageError):
    """A diffusers folder or option that cannot be used; the message names the file or option."""


class DiffusionVictim(nn.Module):
    """A conditional UNet2DModel and its scheduler config: samples with `forward`, scores with `denoising_error`.
    Inputs and outputs are images in [-1, 1]."""

    def __init__(self, unet: UNet2DModel, scheduler_config: dict, *, concat: str = "noisy-first",
                 sampler: str = "ddim", steps: int = 20, eta: float = 0.0,
                 timesteps: tuple[int, ...] = DEFAULT_TIMESTEPS, noises: int = 4) -> None:
        super().__init__()
        self.unet = unet
        self.scheduler_config = dict(scheduler_config)
        self.noise_scheduler = _scheduler(DDPMScheduler, self.scheduler_config)
        self.prediction_type = self.noise_scheduler.config.prediction_type
        n_train = self.noise_scheduler.config.num_train_timesteps
        if self.prediction_type not in PREDICTION_TYPES:
            raise DiffusersError(f"the scheduler config's prediction_type {self.prediction_type!r} is unknown; "
                                 f"one of {', '.join(PREDICTION_TYPES)}")
        if concat not in CONCATS:
            raise DiffusersError(f"concat={concat!r} is unknown; one of {', '.join(CONCATS)}")
        if sampler not in SAMPLERS:
            raise DiffusersError(f"sampler={sampler!r} is unknown; one of {', '.join(SAMPLERS)}")
        _scheduler(SAMPLERS[sampler], self.scheduler_config)  # a config the sampler cannot take is refused here
        if not _is_int(steps) or not 1 <= steps <= n_train:
            raise DiffusersError(f"steps={steps!r} must be a whole number from 1 to {n_train}")
        if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not eta >= 0:
            raise DiffusersError(f"eta={eta!r} must be a number >= 0")
        if not timesteps or not all(_is_int(t) and 0 <= t < n_train for t in timesteps):
            raise DiffusersError(f"timesteps={timesteps!r} must be whole numbers from 0 to {n_train - 1}")
        if not _is_int(noises) or noises < 1:
            raise DiffusersError(f"noises={noises!r} must be a whole number >= 1")
        self.concat, self.sampler, self.steps, self.eta = concat, sampler, steps, float(eta)
        self.timesteps, self.noises = tuple(timesteps), noises

    @property
    def sample_size(self) -> int | None:
        """The square side the unet was trained at (None when its config does not say)."""
        return _side(self.unet.config.sample_size, "the unet config")

    def _unet(self, noisy: torch.Tensor, condition: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The unet's prediction in float32 (it may run under a bf16 autocast)."""
        pair = (noisy, condition) if self.concat == "noisy-first" else (condition, noisy)
        return self.unet(torch.cat(pair, dim=1), t).sample.float()

    def forward(self, x: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
        """Samples [N, 3, H, W] in [-1, 1] for conditions x [N, 3, H, W]; every random draw of image i comes from
        its own generator seeded with seeds[i], so an output does not depend on the rest of its batch."""
        x = x.float()
        generators = [torch.Generator().manual_seed(seed) for seed in seeds.tolist()]
        scheduler = SAMPLERS[self.sampler].from_config(self.scheduler_config)  # schedulers keep state: one per call
        scheduler.set_timesteps(self.steps, device=x.device)
        sample = randn_tensor(tuple(x.shape), generator=generators, device=x.device) * scheduler.init_noise_sigma
        extra = {"eta": self.eta} if self.sampler == "ddim" else {}
        for t in scheduler.timesteps:
            prediction = self._unet(scheduler.scale_model_input(sample, t), x, t)
            sample = scheduler.step(prediction, t, sample, generator=generators, **extra).prev_sample
        return sample.clamp(-1.0, 1.0)

    def denoising_error(self, x: torch.Tensor, y: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
        """Per image, float32 [N]: the mean over `timesteps` and `noises` draws of the mean squared error of the
        unet's prediction for the target y noised to timestep t, given the condition x (both [N, 3, H, W] in
        [-1, 1]); the noise of image i, t and draw j is seeded with noise_seed(seeds[i], t, j)."""
        x, y = x.float(), y.float()
        total = torch.zeros(len(y), device=y.device)
        for t in self.timesteps:
            t_batch = torch.full((len(y),), t, dtype=torch.long, device=y.device)
            for draw in range(self.noises):
                noise = torch.stack([
                    torch.randn(tuple(y.shape[1:]), generator=torch.Generator().manual_seed(noise_seed(seed, t, draw)))
                    for seed in seeds.tolist()]).to(y.device)
                noisy = self.noise_scheduler.add_noise(y, noise, t_batch)
                if self.prediction_type == "epsilon":
                    target = noise
                elif self.prediction_type == "v_prediction":
                    target = self.noise_scheduler.get_velocity(y, noise, t_batch)
                else:
                    target = y
                total += (self._unet(noisy, x, t_batch) - target).square().mean(dim=(1, 2, 3))
        return total / (len(self.timesteps) * self.noises)


def _scheduler(kind: type, config: dict) -> Any:
    """A scheduler of `kind` from the folder's config; DiffusersError when diffusers refuses the config."""
    try:
        return kind.from_config(config)
    except Exception as error:  # diffusers raises ValueError, TypeError, NotImplementedError, ... for bad configs
        raise DiffusersError(f"scheduler/scheduler_config.json cannot make a {kind.__name__} "
                             f"({type(error).__name__}: {error})") from None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _side(sample_size: Any, where: str) -> int | None:
    """A config's sample_size as one square side: an int, or a square [H, W]."""
    if sample_size is None or _is_int(sample_size):
        return sample_size
    if isinstance(sample_size, (list, tuple)) and len(sample_size) == 2 and sample_size[0] == sample_size[1]:
        return int(sample_size[0])
    raise DiffusersError(f"{where}: sample_size {sample_size!r} is not square; memscore feeds square images")


def parse_timesteps(value: Any) -> tuple[int, ...]:
    """The `timesteps` option: ints, one int, or text such as `50/100/200` or `50,100,200` (as the CLI gives)."""
    if isinstance(value, (list, tuple)):
        return tuple(value)
    try:
        return tuple(int(part) for part in str(value).replace(",", "/").split("/"))
    except ValueError:
        raise DiffusersError(f"timesteps={value!r} must be whole numbers such as 50/100/200") from None


def _read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise DiffusersError(f"{path}: missing; a diffusers folder holds {what} (as save_pretrained writes it)")
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DiffusersError(f"{path}: not readable JSON ({error})") from None
    if not isinstance(config, dict):
        raise DiffusersError(f"{path}: not a JSON object of settings")
    return config


def _unet_config(folder: Path) -> dict:
    if not folder.is_dir():
        raise DiffusersError(f"diffusers folder {folder} does not exist")
    path = folder / "unet" / "config.json"
    config = _read_json(path, "unet/config.json")
    if config.get("_class_name", "UNet2DModel") != "UNet2DModel":
        raise DiffusersError(f"{path}: _class_name is {config['_class_name']!r}; memscore loads UNet2DModel only")
    return config


def sample_size_of(folder: str) -> int | None:
    """The square side the unet in `folder` was trained at, from its config alone (no weights are read)."""
    path = Path(folder) / "unet" / "config.json"
    return _side(_unet_config(Path(folder)).get("sample_size"), str(path))


def _weights(unet_folder: Path) -> dict[str, torch.Tensor]:
    path = unet_folder / WEIGHTS
    if not path.is_file():
        pickled = sorted(p.name for p in unet_folder.iterdir() if p.suffix in PICKLED_SUFFIXES)
        if pickled:
            raise DiffusersError(
                f"{unet_folder}: only pickled weights ({', '.join(pickled)}); memscore loads safetensors only, since "
                f"unpickling can run code: re-save with unet.save_pretrained(DIR, safe_serialization=True)")
        raise DiffusersError(f"{path}: missing; a diffusers folder holds the unet's weights there")
    try:
        return load_file(path)
    except (OSError, SafetensorError) as error:
        raise DiffusersError(f"{path}: cannot read safetensors weights ({error})") from None


def load_diffusers(folder: str, **options: Any) -> DiffusionVictim:
    """The conditional diffusion model saved in `folder` as DDPMPipeline.save_pretrained writes it:
    unet/config.json, unet/diffusion_pytorch_model.safetensors and scheduler/scheduler_config.json; `options` are
    `DiffusionVictim`'s (`timesteps` also as text such as 50/100/200)."""
    root = Path(folder)
    config = _unet_config(root)
    config_path = root / "unet" / "config.json"
    scheduler_config = _read_json(root / "scheduler" / "scheduler_config.json", "scheduler/scheduler_config.json")
    try:
        unet = UNet2DModel.from_config(config)
    except (TypeError, ValueError) as error:
        raise DiffusersError(f"{config_path}: cannot build a UNet2DModel from it ({error})") from None
    if unet.config.out_channels != 3 or unet.config.in_channels != 6:
        raise DiffusersError(
            f"{config_path}: in_channels={unet.config.in_channels}, out_channels={unet.config.out_channels}; a "
            f"conditional unet takes the noisy RGB target and the RGB condition (6) and predicts RGB (3)")
    state = _weights(root / "unet")
    try:
        unet.load_state_dict(state, strict=True)
    except RuntimeError as error:
        expected = set(unet.state_dict())
        parts = [f"{label} {', '.join(sorted(keys)[:3])}" for label, keys in
                 (("missing keys", expected - set(state)), ("unexpected keys", set(state) - expected)) if keys]
        detail = "; ".join(parts) or str(error).splitlines()[-1].strip()  # else a shape mismatch
        raise DiffusersError(f"{root / 'unet' / WEIGHTS}: weights do not fit unet/config.json ({detail})") from None
    try:
        if "timesteps" in options:
            options["timesteps"] = parse_timesteps(options["timesteps"])
        return DiffusionVictim(unet, scheduler_config, **options)
    except DiffusersError as error:
        raise DiffusersError(f"{folder}: {error}") from None
