"""The batched denoising engine: the seed article's loop (steps 4 to 11), run for many rows at once.

A batch shares model, mode, size, steps and scheduler; prompt, negative prompt, seed and guidance
scale vary per row. A row's image depends only on the model and the row:

* its initial noise (and any noise an ancestral scheduler draws) comes from its own
  ``torch.Generator("cpu").manual_seed(seed)``, drawn with the shapes stock diffusers uses for one
  image, so the stream is the one diffusers would draw;
* guidance is applied per row; rows with guidance scale <= 1 skip the unconditional branch, as
  stock diffusers does for such a scale, and cost one UNet sample instead of two;
* cond and uncond samples of every row go through the UNet in one call.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from .loading import LoadedModel
from .schedulers import make_scheduler, scheduler_name, step_kwargs
from .text import PromptEncoder

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchSettings:
    """What every row of one batch shares."""

    width: int
    height: int
    steps: int
    scheduler: str | None = None
    mode: str = "txt2img"
    strength: float = 0.8


@dataclass(frozen=True)
class RowInput:
    """What may vary from row to row inside a batch."""

    prompt: str
    seed: int
    guidance_scale: float = 7.5
    negative_prompt: str = ""


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
    def _check(self, settings: BatchSettings) -> None:
        f = self.model.vae_scale_factor
        if settings.width % f or settings.height % f:
            raise ValueError(f"width and height must be multiples of {f}, got {settings.width}x{settings.height}")
        if settings.mode != "txt2img":
            raise ValueError(f"mode {settings.mode!r} is not supported by this engine")

    def _embeddings(self, rows: list[RowInput], cfg: list[int]) -> torch.Tensor:
        """[uncond of the guided rows..., cond of every row...], each text encoded once."""
        texts = [rows[i].negative_prompt for i in cfg] + [r.prompt for r in rows]
        unique, index = self.prompts.encode_unique(texts)
        return unique[torch.tensor(index, device=self.device)]

    def _noise(self, shape: tuple[int, ...], generators: list[torch.Generator]) -> torch.Tensor:
        """Per-row noise from each row's own CPU generator, shape (1, ...) per draw as diffusers."""
        draws = [torch.randn((1, *shape), generator=g, dtype=self.dtype) for g in generators]
        return torch.cat(draws).to(self.device)

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
        self._check(settings)
        n = len(rows)
        cfg = [i for i, r in enumerate(rows) if r.guidance_scale > 1.0]
        embeds = self._embeddings(rows, cfg)
        guidance = torch.tensor([rows[i].guidance_scale for i in cfg], dtype=self.dtype, device=self.device)
        guidance = guidance.view(-1, 1, 1, 1)
        cfg_index = torch.tensor(cfg, dtype=torch.long, device=self.device)

        scheduler = make_scheduler(settings.scheduler, self.pipe.scheduler)
        scheduler.set_timesteps(settings.steps, device=self.device)
        generators = [torch.Generator("cpu").manual_seed(r.seed) for r in rows]
        f = self.model.vae_scale_factor
        shape = (self.model.latent_channels, settings.height // f, settings.width // f)
        latents = self._noise(shape, generators) * scheduler.init_noise_sigma
        extra = step_kwargs(scheduler, generators)

        for t in scheduler.timesteps:
            model_input = torch.cat([latents[cfg_index], latents]) if cfg else latents
            model_input = scheduler.scale_model_input(model_input, t)
            noise_pred = self.pipe.unet(model_input, t, encoder_hidden_states=embeds, return_dict=False)[0]
            if cfg:
                uncond, cond = noise_pred[: len(cfg)], noise_pred[len(cfg):]
                guided = uncond + guidance * (cond[cfg_index] - uncond)
                noise_pred = cond.index_copy(0, cfg_index, guided)
            latents = scheduler.step(noise_pred, t, latents, **extra, return_dict=False)[0]

        return BatchResult(images=self._decode(latents), scheduler=scheduler_name(scheduler))
