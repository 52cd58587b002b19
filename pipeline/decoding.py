"""Latents to uint8 images, on the device, handed to the host without waiting (``host_copy``).

The decoding itself (precision, SDXL's latent statistics, stock's rounding) is ``vae.py``'s; this
runs it in chunks of ``vae_batch`` latents (the VAE's activations at 512x512 are large) and keeps
the result on the device, so that a quarter of the bytes cross to the host and, with compile on,
the rounding fuses into the decoder's last kernels. With compile on, a short last chunk is padded
to the chunk size (``static_batch``) so that one compile serves the job.
"""

from __future__ import annotations

from typing import Callable

import torch

from sdbatch.pipeline.speed.static_batch import SpeedStats, StaticBatchRunner

from . import vae
from .host_copy import PendingImages, to_host
from .loading import LoadedModel


class Decoder:
    def __init__(self, model: LoadedModel, vae_batch: int, *, stats: SpeedStats,
                 compiler: Callable[[Callable, str], Callable] | None = None):
        self.model = model
        self.vae_batch = vae_batch
        self._latent_stats: tuple[torch.Tensor, torch.Tensor] | None = None
        self._stats_made = False
        fn = self.to_uint8 if compiler is None else compiler(self.to_uint8, "vae")
        self.run = StaticBatchRunner(
            fn, name="vae_decode", device=model.device, stats=stats, pad=compiler is not None,
            compiled=compiler is not None,
        )

    def reserve(self, rows: int) -> None:
        self.run.reserve(min(self.vae_batch, rows))

    def to_uint8(self, latents: torch.Tensor) -> torch.Tensor:
        return vae.pixels_uint8(self.model, latents, self._latent_stats)

    def __call__(self, latents: torch.Tensor) -> PendingImages:
        if not self._stats_made:  # once: making them copies to the device, which waits for it
            self._latent_stats = vae.decode_stats(self.model, latents.device)
            self._stats_made = True
        dtype = self.model.vae_decode_dtype
        with vae.decoding_at(self.model):
            parts = [self.run(chunk.to(dtype)) for chunk in latents.split(self.vae_batch)]
        return to_host(parts[0] if len(parts) == 1 else torch.cat(parts))
