"""SDXL base + refiner (diffusers' "ensemble of expert denoisers") for a batch of rows.

Stock diffusers' two-pipeline recipe, which a refined row equals::

    latents = base(..., num_inference_steps=steps, denoising_end=f, output_type="latent",
                   generator=g).images
    image = refiner(..., image=latents, num_inference_steps=steps, denoising_start=f,
                    generator=g).images[0]

with ``f = BatchSettings.refiner_start``, the same row inputs (prompts, guidance, sizes, crop,
mask) given to both, and the row's one generator continuing from the base into the refiner.
The refiner runs the same scheduler name (built from its own scheduler config), the batch's
mode (txt2img and img2img rows refine as stock's img2img pipeline does, inpaint rows as its
inpainting pipeline does) and decodes with its own VAE.
"""

from __future__ import annotations

import torch

from .batch import BatchSettings, PendingBatch, RowInput
from .loading import LoadedModel
from .modes import ModeError, Window
from .schedulers import check_scheduler, scheduler_name


def check_refiner(base: LoadedModel, refiner: LoadedModel, settings: BatchSettings) -> None:
    """Raise ModeError (naming the manifest column to fix) unless ``refiner`` can refine
    ``base``'s rows with these settings."""
    start = settings.refiner_start
    if start is None or not 0.0 < start < 1.0:
        raise ModeError("refiner_start", f"{start}: must be a fraction of the steps in (0, 1)")
    for role, model in (("base", base), ("refiner", refiner)):
        if model.family != "sdxl":
            raise ModeError("refiner_start", f"the {role} model {model.name} is not an SDXL model; "
                                             "base + refiner needs SDXL models for both")
    if settings.mode not in ("txt2img", "img2img", "inpaint"):
        raise ModeError("mode", f"{settings.mode} cannot be refined; base + refiner runs txt2img, img2img, inpaint")
    if refiner.unet_in_channels != refiner.latent_channels:
        raise ModeError("refiner_start", f"refiner {refiner.name} has a {refiner.unet_in_channels}-channel UNet; "
                                         f"a refiner needs a plain {refiner.latent_channels}-channel one")
    if (refiner.latent_channels, refiner.vae_scale_factor) != (base.latent_channels, base.vae_scale_factor):
        raise ModeError("refiner_start", f"refiner {refiner.name}'s latents ({refiner.latent_channels} channels, "
                                         f"scale {refiner.vae_scale_factor}) do not match base {base.name}'s")
    if min(settings.width, settings.height) < refiner.min_size:
        raise ModeError("width", f"{settings.width}x{settings.height} is too small for refiner {refiner.name}: "
                                 f"at least {refiner.min_size}x{refiner.min_size}")
    check_scheduler(settings.scheduler, refiner.pipe.scheduler)


def generate_refined(base, refiner, settings: BatchSettings, rows: list[RowInput]):
    """Images for ``rows``: the base engine runs the first ``refiner_start`` of the schedule, the
    refiner engine the rest (both ``engine.BatchedEngine``); an ``engine.PendingBatch``."""
    if refiner is None:
        raise ValueError(f"refiner_start {settings.refiner_start} needs a refiner model, and none was given")
    check_refiner(base.model, refiner.model, settings)
    base._check(settings, rows, refiner.model)
    base.speed.reserve(len(rows))
    refiner.speed.reserve(len(rows))
    generators = [torch.Generator("cpu").manual_seed(r.seed) for r in rows]
    first = base.prepare(settings, rows, generators, Window(end=settings.refiner_start))
    latents = base.denoise(first)
    second = refiner.prepare(settings, rows, generators, Window(start=settings.refiner_start), base_latents=latents)
    return PendingBatch(refiner._decode(refiner.denoise(second)), scheduler_name(first.scheduler))
