"""The batched denoising engine: the seed article's loop (steps 4 to 11), run for many rows at once.

A batch shares model, mode, size, steps, scheduler and strength; prompt, negative prompt, seed,
guidance scale and input images vary per row. A row's image depends only on the model and the row:

* every random draw for a row (VAE encode samples, initial noise, and any noise an ancestral
  scheduler draws) comes from its own ``torch.Generator("cpu").manual_seed(seed)``, in the order
  and with the shapes stock diffusers uses for one image, so the stream is the one diffusers draws;
* guidance is applied per row; rows with guidance scale <= 1 skip the unconditional branch, as
  stock diffusers does for such a scale, and cost one UNet sample instead of two;
* cond and uncond samples of every row go through the UNet in one call.

All four modes run this one loop; what differs per mode (timesteps, start, extra UNet input
channels, 4-channel inpainting's blend) is in ``modes.py``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from .batch import BatchSettings, RowInput
from .loading import LoadedModel
from .modes import STARTS, BatchContext, check_model_supports, denoising_timesteps
from .schedulers import make_scheduler, scheduler_name, step_kwargs
from .text import PromptEncoder

__all__ = ["BatchedEngine", "BatchResult", "BatchSettings", "RowInput"]

log = logging.getLogger(__name__)


@dataclass
class BatchResult:
    images: np.ndarray  # (N, H, W, 3) uint8
    scheduler: str  # the scheduler actually used, by sdbatch name


class BatchedEngine:
    """Runs batches through one loaded model."""

    def __init__(self, model: LoadedModel, vae_batch: int = 8):
        self.model = model
        self.pipe = model.pipe
        self.device = model.device
        self.dtype = model.dtype
        self.vae_batch = vae_batch
        self.prompts = PromptEncoder(self.pipe.tokenizer, self.pipe.text_encoder, self.device, self.dtype)

    # -- pieces ---------------------------------------------------------------------------
    def _check(self, settings: BatchSettings, rows: list[RowInput]) -> None:
        """Refuse what the loop cannot run, naming the cause (the worker checks rows one by one
        before batching; this guards every other caller)."""
        f, smallest = self.model.vae_scale_factor, self.model.min_size
        w, h = settings.width, settings.height
        if w % f or h % f:
            raise ValueError(f"width and height must be multiples of {f}, got {w}x{h}")
        if w < smallest or h < smallest:
            raise ValueError(f"{w}x{h} is too small for this model: at least {smallest}x{smallest}")
        for i, row in enumerate(rows):
            check_model_supports(self.model, settings.mode, has_depth_map=row.depth_map is not None)
            for name, image in (("init_image", row.init_image), ("mask_image", row.mask_image)):
                if image is not None and image.size != (w, h):
                    raise ValueError(f"row {i}: {name} is {image.width}x{image.height}, the batch is {w}x{h}")

    def _embeddings(self, rows: list[RowInput], cfg: list[int]) -> torch.Tensor:
        """[uncond of the guided rows..., cond of every row...], each text encoded once."""
        texts = [rows[i].negative_prompt for i in cfg] + [r.prompt for r in rows]
        unique, index = self.prompts.encode_unique(texts)
        return unique[torch.tensor(index, device=self.device)]

    def _decode(self, latents: torch.Tensor) -> np.ndarray:
        vae = self.pipe.vae
        out = []
        for chunk in latents.split(self.vae_batch):
            image = vae.decode(chunk / vae.config.scaling_factor, return_dict=False)[0]
            image = (image * 0.5 + 0.5).clamp(0, 1)  # VaeImageProcessor.denormalize
            image = (image.float() * 255).round().to(torch.uint8)  # numpy_to_pil's rounding
            out.append(image.permute(0, 2, 3, 1).cpu())
        return torch.cat(out).numpy()

    # -- the loop -------------------------------------------------------------------------
    @torch.inference_mode()
    def generate(self, settings: BatchSettings, rows: list[RowInput]) -> BatchResult:
        self._check(settings, rows)
        cfg = [i for i, r in enumerate(rows) if r.guidance_scale > 1.0]
        embeds = self._embeddings(rows, cfg)
        guidance = torch.tensor([rows[i].guidance_scale for i in cfg], dtype=self.dtype, device=self.device)
        guidance = guidance.view(-1, 1, 1, 1)
        cfg_index = torch.tensor(cfg, dtype=torch.long, device=self.device)

        scheduler = make_scheduler(settings.scheduler, self.pipe.scheduler)
        scheduler.set_timesteps(settings.steps, device=self.device)
        timesteps = denoising_timesteps(scheduler, settings)
        generators = [torch.Generator("cpu").manual_seed(r.seed) for r in rows]
        ctx = BatchContext(self.model, settings, rows, scheduler, timesteps, generators, self.vae_batch)
        start = STARTS[settings.mode](ctx)
        latents, condition = start.latents, start.condition
        if condition is not None and cfg:
            condition = torch.cat([condition[cfg_index], condition])
        extra = step_kwargs(scheduler, generators)

        for i, t in enumerate(timesteps):
            model_input = torch.cat([latents[cfg_index], latents]) if cfg else latents
            model_input = scheduler.scale_model_input(model_input, t)
            if condition is not None:
                model_input = torch.cat([model_input, condition], dim=1)
            noise_pred = self.pipe.unet(model_input, t, encoder_hidden_states=embeds, return_dict=False)[0]
            if cfg:
                uncond, cond = noise_pred[: len(cfg)], noise_pred[len(cfg):]
                guided = uncond + guidance * (cond[cfg_index] - uncond)
                noise_pred = cond.index_copy(0, cfg_index, guided)
            latents = scheduler.step(noise_pred, t, latents, **extra, return_dict=False)[0]
            if start.known is not None:
                latents = start.known.blend(latents, scheduler, timesteps, i)

        return BatchResult(images=self._decode(latents), scheduler=scheduler_name(scheduler))
