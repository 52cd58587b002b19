"""The per-mode pieces of the one denoising loop (engine.py): where a mode starts, what it adds.

A mode contributes only

* its timesteps: all of them for txt2img; for the image modes the last ``strength`` share, with
  the scheduler's begin index set, as stock diffusers' ``get_timesteps`` does;
* its starting latents, drawn from each row's own generator in exactly the order the stock
  pipeline draws for one image (the order is what keeps a row's image equal to stock's);
* extra UNet input channels per row: mask and masked-image latents for a 9-channel inpainting
  UNet, the depth map for a depth UNet;
* for inpainting with a plain 4-channel UNet, the known region blended back after every step.

Each row's generator is drawn from as stock draws from a one-image generator:

=========  ==================================================================================
txt2img    noise
img2img    VAE encode sample of the image, noise
depth2img  (depth estimation draws nothing) VAE encode sample of the image, noise
inpaint    [VAE encode sample of the image: 4-channel UNet, or strength < 1], noise,
           VAE encode sample of the masked image
=========  ==================================================================================

then whatever the scheduler draws per step (ancestral schedulers).

The same holds for SDXL models, whose pipelines draw in the same order. A refined row (SDXL base +
refiner, ``BatchSettings.refiner_start``) runs its mode's start and the first part of the
schedule on the base (diffusers' ``denoising_end``), then the rest on the refiner from the base's
latents (``denoising_start``): ``start_refiner`` draws nothing for txt2img and img2img rows and one
noise for inpaint rows, as stock's refiner pipelines do, with the same generators continuing.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable

import torch
import torch.nn.functional as F
from diffusers.image_processor import VaeImageProcessor
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

from . import vae
from .batch import BatchSettings, RowInput
from .loading import LoadedModel


class ModeError(ValueError):
    """A mode the model cannot run, or mode input the engine cannot use; ``column`` names the
    manifest column to fix."""

    def __init__(self, column: str, message: str):
        super().__init__(message)
        self.column = column


def check_model_supports(model: LoadedModel, mode: str, has_depth_map: bool = False) -> None:
    """Raise ModeError unless ``model`` can run ``mode`` (judged by its UNet's input channels)."""
    if mode not in STARTS:
        raise ModeError("mode", f"unknown mode {mode!r}; choose one of {', '.join(STARTS)}")
    if model.family == "sdxl" and mode == "depth2img":
        raise ModeError("mode", f"model {model.name} is an SDXL model; depth2img needs an SD 2 depth model "
                                "(a 5-channel depth UNet, e.g. stabilityai/stable-diffusion-2-depth)")
    if model.requires_aesthetics_score and mode == "txt2img":
        raise ModeError("mode", f"model {model.name} is an SDXL refiner-style model (requires_aesthetics_score): "
                                "it refines images (img2img, inpaint, or as --refiner), txt2img needs a base model")
    channels, latent = model.unet_in_channels, model.latent_channels
    kind = {latent: "plain", 2 * latent + 1: "inpainting", latent + 1: "depth"}.get(channels, "unknown")
    unet = f"model {model.name} has a {channels}-channel {kind} UNet"
    if mode in ("txt2img", "img2img") and channels != latent:
        raise ModeError("mode", f"{unet}; {mode} needs a plain {latent}-channel one")
    if mode == "inpaint" and channels not in (latent, 2 * latent + 1):
        raise ModeError("mode", f"{unet}; inpaint needs an inpainting ({2 * latent + 1}-channel) or plain one")
    if mode == "depth2img":
        if channels != latent + 1:
            raise ModeError("mode", f"{unet}; depth2img needs a depth model ({latent + 1}-channel UNet)")
        if not has_depth_map and not model.has_depth_estimator:
            raise ModeError("depth_map", f"not given, and model {model.name} has no depth estimator to make one")


def strength_steps(steps: int, strength: float) -> int:
    """How many of ``steps`` an image mode runs: the last ``int(steps * strength)``, as stock."""
    return max(min(int(steps * strength), steps), 0)


@dataclass(frozen=True)
class Window:
    """Which part of the schedule one model runs: all of it (the default), the base's part of a
    refined row (``end``: diffusers' ``denoising_end``), or the refiner's (``start``:
    ``denoising_start``); both are fractions of the training timesteps."""

    end: float | None = None
    start: float | None = None


def _cutoff(scheduler, fraction: float) -> int:
    n = scheduler.config.num_train_timesteps
    return int(round(n - fraction * n))


def _set_begin(scheduler, begin: int) -> None:
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(begin)


def denoising_timesteps(scheduler, settings: BatchSettings, window: Window = Window(),
                        family: str = "sd") -> torch.Tensor:
    """The timesteps a batch runs; call after ``set_timesteps``. Raises when strength leaves none.

    txt2img runs every timestep (SDXL's pipeline also sets the begin index to 0), image modes the
    last ``strength`` share, as stock ``get_timesteps`` does; a refiner's window starts where the
    base's ended, whatever the strength, and a 2nd-order scheduler's window never starts between
    its two evaluations (stock's +1)."""
    if window.start is not None:
        run = int((scheduler.timesteps < _cutoff(scheduler, window.start)).sum().item())
        if scheduler.order == 2 and run % 2 == 0:
            run += 1
        begin = len(scheduler.timesteps) - run
        _set_begin(scheduler, begin)
        return scheduler.timesteps[begin:]
    if settings.mode == "txt2img":
        timesteps = scheduler.timesteps
        if family == "sdxl":
            _set_begin(scheduler, 0)
    else:
        run = strength_steps(settings.steps, settings.strength)
        if run < 1:
            raise ModeError("strength", f"strength {settings.strength} with {settings.steps} steps leaves no "
                                        "denoising step (int(steps * strength) must be at least 1)")
        begin = (settings.steps - run) * scheduler.order
        _set_begin(scheduler, begin)
        timesteps = scheduler.timesteps[begin:]
    if window.end is not None:
        cutoff = _cutoff(scheduler, window.end)
        timesteps = timesteps[: sum(1 for t in timesteps if t >= cutoff)]
    return timesteps


@dataclass
class BatchContext:
    """Everything a mode's start reads: the model, the batch and its prepared scheduler."""

    model: LoadedModel
    settings: BatchSettings
    rows: list[RowInput]
    scheduler: Any
    timesteps: torch.Tensor
    generators: list[torch.Generator]
    vae_batch: int

    @property
    def latent_size(self) -> tuple[int, int]:
        f = self.model.vae_scale_factor
        return self.settings.height // f, self.settings.width // f


@dataclass
class KnownRegion:
    """4-channel inpainting: the kept part of the image, noised to each next step's level and
    pasted over the latents after every step (stock ``StableDiffusionInpaintPipeline``)."""

    image_latents: torch.Tensor
    noise: torch.Tensor
    mask: torch.Tensor  # latent size, 1 where the row repaints

    def blend(self, latents: torch.Tensor, scheduler, timesteps: torch.Tensor, i: int) -> torch.Tensor:
        known = self.image_latents
        if i < len(timesteps) - 1:
            known = scheduler.add_noise(known, self.noise, timesteps[i + 1 : i + 2])
        return (1 - self.mask) * known + self.mask * latents


@dataclass
class Start:
    """Where a batch's loop starts, and what each step adds to it."""

    latents: torch.Tensor
    condition: torch.Tensor | None = None  # extra UNet input channels, one entry per row
    known: KnownRegion | None = None


# -- shared pieces ---------------------------------------------------------------------------
@lru_cache(maxsize=None)
def _image_processor(vae_scale_factor: int) -> VaeImageProcessor:
    return VaeImageProcessor(vae_scale_factor=vae_scale_factor)


@lru_cache(maxsize=None)
def _mask_processor(vae_scale_factor: int) -> VaeImageProcessor:
    """The inpainting pipeline's mask processor: grayscale, [0, 1], binarised at 0.5."""
    return VaeImageProcessor(vae_scale_factor=vae_scale_factor, do_normalize=False, do_binarize=True,
                             do_convert_grayscale=True)


def _pixels(ctx: BatchContext, column: str, processor: VaeImageProcessor) -> torch.Tensor:
    """Every row's image of ``column`` (the mode needs it) as the processor prepares it."""
    images = [getattr(r, column) for r in ctx.rows]
    missing = [i for i, image in enumerate(images) if image is None]
    if missing:
        raise ModeError(column, f"row {missing[0]}: {ctx.settings.mode} needs {column}")
    s = ctx.settings
    return processor.preprocess(images, height=s.height, width=s.width).to(dtype=torch.float32)


def _noise(ctx: BatchContext) -> torch.Tensor:
    """One (1, C, h, w) draw per row from the row's own generator, as randn_tensor does."""
    shape = (len(ctx.rows), ctx.model.latent_channels, *ctx.latent_size)
    return randn_tensor(shape, generator=ctx.generators, device=ctx.model.device, dtype=ctx.model.dtype)


def _encode(ctx: BatchContext, pixels: torch.Tensor, use_latent_stats: bool = False) -> torch.Tensor:
    """VAE latents sampled with each row's generator, in chunks of ``vae_batch`` rows."""
    return vae.encode(ctx.model, pixels, ctx.generators, ctx.vae_batch, use_latent_stats)


def _latent_mask(ctx: BatchContext) -> tuple[torch.Tensor, torch.Tensor]:
    """The rows' masks at pixel size ([0, 1], binarised) and at latent size (nearest)."""
    mask = _pixels(ctx, "mask_image", _mask_processor(ctx.model.vae_scale_factor))
    latent = F.interpolate(mask, size=ctx.latent_size).to(device=ctx.model.device, dtype=ctx.model.dtype)
    return mask, latent


def _noised(ctx: BatchContext, image_latents: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    first = ctx.timesteps[:1].repeat(len(ctx.rows))
    return ctx.scheduler.add_noise(image_latents, noise, first)


def _estimated_depth(ctx: BatchContext, images: list[Image.Image]) -> torch.Tensor:
    """The model's depth estimator on the rows' images: (N, H', W'), larger is nearer."""
    pipe, device, dtype = ctx.model.pipe, ctx.model.device, ctx.model.dtype
    pixel_values = pipe.feature_extractor(images=images, return_tensors="pt").pixel_values
    # stock runs the estimator under autocast to the model dtype (a no-op for float32)
    with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
        return pipe.depth_estimator(pixel_values.to(device=device, dtype=dtype)).predicted_depth


def _normalised_depth(depth: torch.Tensor, size: tuple[int, int], dtype: torch.dtype, source: str) -> torch.Tensor:
    """(1, H, W) depth -> (1, 1, h, w) in [-1, 1] at latent size (bicubic), as stock does."""
    depth = F.interpolate(depth.unsqueeze(1), size=size, mode="bicubic", align_corners=False)
    low = torch.amin(depth, dim=[1, 2, 3], keepdim=True)
    high = torch.amax(depth, dim=[1, 2, 3], keepdim=True)
    if bool((high == low).all()):
        raise ModeError("depth_map", f"the {source} depth map is constant: no depth for the model to follow")
    return (2.0 * (depth - low) / (high - low) - 1.0).to(dtype)


def _depth_condition(ctx: BatchContext) -> torch.Tensor:
    device, dtype = ctx.model.device, ctx.model.dtype
    depths: list[torch.Tensor | None] = [
        None if r.depth_map is None else torch.from_numpy(r.depth_map)[None].to(device=device, dtype=dtype)
        for r in ctx.rows
    ]
    missing = [i for i, d in enumerate(depths) if d is None]
    if missing:
        estimated = _estimated_depth(ctx, [ctx.rows[i].init_image for i in missing])
        for j, i in enumerate(missing):
            depths[i] = estimated[j : j + 1]
    sources = ["given" if r.depth_map is not None else "estimated" for r in ctx.rows]
    return torch.cat([_normalised_depth(d, ctx.latent_size, dtype, s) for d, s in zip(depths, sources)])


# -- the modes -------------------------------------------------------------------------------
def start_txt2img(ctx: BatchContext) -> Start:
    return Start(_noise(ctx) * ctx.scheduler.init_noise_sigma)


def start_img2img(ctx: BatchContext) -> Start:
    image = _pixels(ctx, "init_image", _image_processor(ctx.model.vae_scale_factor))
    image_latents = _encode(ctx, image, use_latent_stats=True)  # SDXL img2img normalises; SD has no stats
    return Start(_noised(ctx, image_latents, _noise(ctx)))


def start_depth2img(ctx: BatchContext) -> Start:
    condition = _depth_condition(ctx)
    return Start(start_img2img(ctx).latents, condition=condition)


def start_inpaint(ctx: BatchContext) -> Start:
    image = _pixels(ctx, "init_image", _image_processor(ctx.model.vae_scale_factor))
    mask, latent_mask = _latent_mask(ctx)
    plain_unet = ctx.model.unet_in_channels == ctx.model.latent_channels
    strength_max = ctx.settings.strength == 1.0
    image_latents = _encode(ctx, image) if plain_unet or not strength_max else None
    noise = _noise(ctx)
    latents = noise * ctx.scheduler.init_noise_sigma if strength_max else _noised(ctx, image_latents, noise)
    if plain_unet:
        # stock encodes the masked image here even though a 4-channel UNet ignores it
        vae.skip_encode_draw(ctx.model, ctx.latent_size, ctx.generators)
        return Start(latents, known=KnownRegion(image_latents, noise, latent_mask))
    masked_latents = _encode(ctx, image * (mask < 0.5))
    return Start(latents, condition=torch.cat([latent_mask, masked_latents], dim=1))


def start_refiner(ctx: BatchContext, base_latents: torch.Tensor) -> Start:
    """A refiner's start from the base's latents (stock: ``image=latents, denoising_start=...``):
    no noise is added; for inpaint rows stock's inpainting pipeline still draws one noise, used to
    re-noise the known region, which is the base's latents (it cannot mask latents)."""
    latents = base_latents.to(device=ctx.model.device, dtype=ctx.model.dtype)
    if ctx.settings.mode != "inpaint":
        return Start(latents)
    noise = _noise(ctx)
    _, latent_mask = _latent_mask(ctx)
    return Start(latents, known=KnownRegion(latents, noise, latent_mask))


STARTS: dict[str, Callable[[BatchContext], Start]] = {
    "txt2img": start_txt2img,
    "img2img": start_img2img,
    "inpaint": start_inpaint,
    "depth2img": start_depth2img,
}
