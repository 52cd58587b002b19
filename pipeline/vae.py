"""The VAE's two jobs, images -> latents and latents -> pixels, at the precision stock diffusers uses.

SDXL pipelines run the VAE in float32 when its config says ``force_upcast`` (SDXL's VAE overflows
in fp16): always for encoding, for decoding when the model is fp16 (``LoadedModel.vae_encode_dtype``
/ ``vae_decode_dtype``). Stock casts the VAE there and back around each call; a cast to float32
and back is exact, so when both jobs want the same precision the VAE is cast once (``prepare_vae``)
and the result is the same. SD pipelines use the model's dtype for both.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_img2img import retrieve_latents

from .loading import LoadedModel


def prepare_vae(model: LoadedModel) -> None:
    """Cast the VAE once to the precision both jobs use, when they agree."""
    vae = model.pipe.vae
    if model.vae_encode_dtype == model.vae_decode_dtype != vae.dtype:
        vae.to(dtype=model.vae_encode_dtype)


@contextmanager
def _vae_at(model: LoadedModel, dtype: torch.dtype):
    vae = model.pipe.vae
    before = vae.dtype
    if before != dtype:
        vae.to(dtype=dtype)
    try:
        yield vae
    finally:
        if before != dtype:
            vae.to(dtype=before)


def _latent_stats(model: LoadedModel, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """SDXL pipelines' per-channel latent mean and std, when the VAE config has them."""
    config = model.pipe.vae.config
    mean, std = config.get("latents_mean"), config.get("latents_std")
    if model.family != "sdxl" or mean is None or std is None:
        return None
    shape = (1, len(mean), 1, 1)
    return (torch.tensor(mean).view(shape).to(like.device, like.dtype),
            torch.tensor(std).view(shape).to(like.device, like.dtype))


def encode(model: LoadedModel, pixels: torch.Tensor, generators: list[torch.Generator], vae_batch: int,
           use_latent_stats: bool = False) -> torch.Tensor:
    """Latents sampled with each row's generator, chunks of ``vae_batch`` rows, in the model dtype.

    ``use_latent_stats``: normalise with the VAE's latent mean/std when it has them, as SDXL's
    img2img pipeline does (its inpainting pipeline does not)."""
    scaling = model.pipe.vae.config.scaling_factor
    pixels = pixels.to(device=model.device, dtype=model.dtype)  # stock rounds to the model dtype first
    out = []
    with _vae_at(model, model.vae_encode_dtype) as vae:
        for first in range(0, len(pixels), vae_batch):
            chunk = slice(first, first + vae_batch)
            dist = vae.encode(pixels[chunk].to(model.vae_encode_dtype))
            out.append(retrieve_latents(dist, generator=generators[chunk]))
    latents = torch.cat(out).to(model.dtype)
    stats = _latent_stats(model, latents) if use_latent_stats else None
    if stats is not None:
        mean, std = stats
        return (latents - mean) * scaling / std
    return scaling * latents


def skip_encode_draw(model: LoadedModel, latent_size: tuple[int, int], generators: list[torch.Generator]) -> None:
    """Advance each generator past one VAE encode sample without encoding (what a draw whose
    result stock discards costs the stream: the same shape and dtype)."""
    shape = (1, model.latent_channels, *latent_size)
    for g in generators:
        torch.randn(shape, generator=g, dtype=model.vae_encode_dtype)


def decoding_at(model: LoadedModel):
    """The context decoding runs in: the VAE at its decode precision."""
    return _vae_at(model, model.vae_decode_dtype)


def decode_stats(model: LoadedModel, device: torch.device) -> tuple[torch.Tensor, torch.Tensor] | None:
    """SDXL's latent mean and std at the decode precision (made once per model by the caller)."""
    like = torch.empty(0, device=device, dtype=model.vae_decode_dtype)
    return _latent_stats(model, like)


def pixels_uint8(model: LoadedModel, latents: torch.Tensor,
                 stats: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
    """(n, C, h, w) latents at the decode precision, inside ``decoding_at`` -> (n, H, W, 3) uint8
    pixels on their device, rounded as stock's ``output_type="pil"`` / ``"np"`` * 255."""
    vae = model.pipe.vae
    scaling = vae.config.scaling_factor
    if stats is not None:
        mean, std = stats
        latents = latents * std / scaling + mean
    else:
        latents = latents / scaling
    image = vae.decode(latents, return_dict=False)[0]
    image = (image * 0.5 + 0.5).clamp(0, 1)  # VaeImageProcessor.denormalize
    image = (image.float() * 255).round().to(torch.uint8)  # numpy_to_pil's rounding
    return image.permute(0, 2, 3, 1).contiguous()
