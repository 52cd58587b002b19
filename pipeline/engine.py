"""The batched denoising engine: the steps of a diffusers pipeline's ``__call__`` (1. check inputs,
2. encode prompts, 3. timesteps, 4. starting latents, 5. the denoising loop, 6. decode), run for
many rows at once; the numbered comments in ``submit`` and ``prepare`` follow them.

A batch shares model, mode, size, steps, scheduler, strength, refiner start and LoRAs; prompts
(in any prompt syntax, with any clip skip), negative prompts, seed, guidance scale and rescale,
SDXL's second prompts and size/crop conditioning, and input images vary per row. A row's image depends only on the model and the row:

* every random draw for a row (VAE encode samples, initial noise, and any noise an ancestral
  scheduler draws) comes from its own ``torch.Generator("cpu").manual_seed(seed)``, in the order
  and with the shapes stock diffusers uses for one image, so the stream is the one diffusers draws;
* guidance is applied per row (``guidance.py``); rows with guidance scale <= 1 skip the
  unconditional branch, as stock diffusers does for such a scale, and cost one UNet sample
  instead of two;
* cond and uncond samples of every row go through the UNet in one call.

All four modes and both families run this one loop: what differs per mode (timesteps, start, extra
UNet input channels, 4-channel inpainting's blend) is in ``modes.py``, what differs per family
(text encoders, SDXL's added conditioning) in ``conditioning.py``, the VAE's precision in ``vae.py``.
A refined row (SDXL base + refiner) runs the loop twice, on two engines (``refiner.py``).

Speed (``speed/acceleration.py``): the UNet and the VAE decode run through the callables ``accelerate``
returns (compiled, fixed shapes, an attention backend, when switched on). The scheduler keeps its
schedule on the host, so no step waits for the GPU to read a timestep, and images come back through
pinned memory (``submit`` returns before they have arrived).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from sdbatch.pipeline.speed.acceleration import SpeedOptions, accelerate

from . import vae
from .adapters import LoraAdapters
from .batch import BatchResult, BatchSettings, PendingBatch, RowInput
from .conditioning import Conditioning, conditioner_for
from .families import check_row_fields
from .guidance import Guidance
from .host_copy import PendingImages, to_device
from .loading import LoadedModel
from .modes import STARTS, BatchContext, Start, Window, check_model_supports, denoising_timesteps, start_refiner
from .refiner import generate_refined
from .schedulers import check_scheduler, make_scheduler, scheduler_name, step_kwargs

__all__ = ["BatchedEngine", "BatchResult", "BatchSettings", "PendingBatch", "RowInput"]

log = logging.getLogger(__name__)


@dataclass
class Run:
    """One batch prepared on one model: everything the loop reads."""

    scheduler: Any
    timesteps: torch.Tensor
    start: Start
    conditioning: Conditioning
    guidance: Guidance
    step_extra: dict[str, Any]


class BatchedEngine:
    """Runs batches through one loaded model."""

    def __init__(self, model: LoadedModel, vae_batch: int = 8, speed: SpeedOptions | None = None,
                 batch_size: int | None = None):
        """``speed``: the switches (default all off); ``batch_size``: the job's rows per batch,
        the size compiled calls are padded to (``accelerate``)."""
        self.model = model
        self.pipe = model.pipe
        self.device = model.device
        self.dtype = model.dtype
        self.vae_batch = vae_batch
        self.conditioner = conditioner_for(model)
        self.adapters = LoraAdapters(model)
        vae.prepare_vae(model)
        self.speed = accelerate(model, speed, batch_size=batch_size, vae_batch=vae_batch)

    # -- pieces ---------------------------------------------------------------------------
    def _check(self, settings: BatchSettings, rows: list[RowInput], *others: LoadedModel) -> None:
        """Refuse what the loop cannot run, naming the cause (the worker checks rows one by one
        before batching; this guards every other caller). ``others``: a refiner, whose inputs
        the rows may also carry."""
        f, smallest = self.model.vae_scale_factor, self.model.min_size
        w, h = settings.width, settings.height
        if w % f or h % f:
            raise ValueError(f"width and height must be multiples of {f}, got {w}x{h}")
        if w < smallest or h < smallest:
            raise ValueError(f"{w}x{h} is too small for this model: at least {smallest}x{smallest}")
        check_scheduler(settings.scheduler, self.pipe.scheduler)
        for i, row in enumerate(rows):
            check_model_supports(self.model, settings.mode, has_depth_map=row.depth_map is not None)
            check_row_fields(row, self.model, *others)
            for name, image in (("init_image", row.init_image), ("mask_image", row.mask_image)):
                if image is not None and image.size != (w, h):
                    raise ValueError(f"row {i}: {name} is {image.width}x{image.height}, the batch is {w}x{h}")

    def _decode(self, latents: torch.Tensor) -> PendingImages:
        return self.speed.decode(latents)

    # -- the loop -------------------------------------------------------------------------
    def prepare(self, settings: BatchSettings, rows: list[RowInput], generators: list[torch.Generator],
                window: Window = Window(), base_latents: torch.Tensor | None = None) -> Run:
        """Scheduler, timesteps, starting latents and conditioning for ``rows`` on this model.
        ``base_latents``: this model refines them (a refiner's window) instead of the mode's start."""
        # 2. encode the prompts (per row: syntax, clip skip, guidance; SDXL's added conditioning)
        guidance = Guidance.for_rows(rows, self.device, self.dtype)
        conditioning = self.conditioner(settings, rows, guidance)
        # 3. timesteps: the mode's (strength) and the window's (refiner) part of the schedule
        scheduler = make_scheduler(settings.scheduler, self.pipe.scheduler)
        scheduler.set_timesteps(settings.steps, device="cpu")  # host-side schedule: steps never wait
        timesteps = denoising_timesteps(scheduler, settings, window, self.model.family)
        # 4. starting latents: each row's noise from its own generator, the mode's image latents
        ctx = BatchContext(self.model, settings, rows, scheduler, timesteps, generators, self.vae_batch)
        start = STARTS[settings.mode](ctx) if base_latents is None else start_refiner(ctx, base_latents)
        return Run(scheduler, timesteps, start, conditioning, guidance, step_kwargs(scheduler, generators))

    def denoise(self, run: Run) -> torch.Tensor:
        """Run the loop; the final latents, one per row."""
        start, guidance, scheduler = run.start, run.guidance, run.scheduler
        latents = start.latents
        condition = guidance.expand(start.condition) if start.condition is not None else None
        unet_kwargs = run.conditioning.unet_kwargs()
        unet = self.speed.unet_for(adapters=bool(self.adapters.active))  # LoRA batches: eager
        unet_timesteps = to_device(run.timesteps, self.device)
        for i, t in enumerate(run.timesteps):
            model_input = scheduler.scale_model_input(guidance.expand(latents), t)
            if condition is not None:
                model_input = torch.cat([model_input, condition], dim=1)
            noise_pred = unet(model_input, unet_timesteps[i], **unet_kwargs, return_dict=False)[0]
            noise_pred = guidance.combine(noise_pred)
            latents = scheduler.step(noise_pred, t, latents, **run.step_extra, return_dict=False)[0]
            if start.known is not None:
                latents = start.known.blend(latents, scheduler, run.timesteps, i)
        return latents

    def generate(self, settings: BatchSettings, rows: list[RowInput],
                 refiner: BatchedEngine | None = None) -> BatchResult:
        """Images for ``rows``. A batch whose settings have a ``refiner_start`` needs ``refiner``,
        the engine of the refiner model (see ``refiner.generate_refined``); other batches ignore it.
        The batch's LoRAs are made this model's active adapters first (``adapters.py``)."""
        return self.submit(settings, rows, refiner).result()

    @torch.inference_mode()
    def submit(self, settings: BatchSettings, rows: list[RowInput],
               refiner: BatchedEngine | None = None) -> PendingBatch:
        """``generate``, returning once the batch's work is queued: ``.result()`` waits for the
        images. On a GPU the host is free meanwhile (to write the previous batch's images)."""
        # 1. check the inputs; the batch's LoRAs become the model's active adapters
        self.speed.check_loras(settings.loras)
        if self.adapters.activate(settings.loras):
            self.speed.adapters_changed()
        if settings.refiner_start is not None:
            return generate_refined(self, refiner, settings, rows)  # steps 2-6 on two engines
        self._check(settings, rows)
        self.speed.reserve(len(rows))
        generators = [torch.Generator("cpu").manual_seed(r.seed) for r in rows]
        run = self.prepare(settings, rows, generators)  # 2.-4.
        latents = self.denoise(run)  # 5. the denoising loop
        return PendingBatch(self._decode(latents), scheduler_name(run.scheduler))  # 6. decode (on its way)
