"""Loading Stable Diffusion pipelines from hub ids or local diffusers folders, safetensors only.

Everything the engine needs (model family, latent channels, VAE scale factor, prediction type,
default size, VAE precision) is read from the loaded components' configs, never from names, so
SD 1.x, 2.x and SDXL models and their fine-tunes load with no code change.
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass
from typing import Any

import torch

log = logging.getLogger(__name__)

from .model_files import ModelLoadError, locate_model

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
FAMILIES = ("sd", "sdxl")


@dataclass
class LoadedModel:
    """A pipeline's components on one device, plus the facts the engine reads from their configs."""

    name: str
    revision: str | None
    pipe: Any  # the diffusers pipeline object; we use its components, never its __call__
    device: torch.device
    dtype: torch.dtype

    @property
    def unet_in_channels(self) -> int:
        return self.pipe.unet.config.in_channels

    @property
    def latent_channels(self) -> int:
        return self.pipe.vae.config.latent_channels

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.pipe.vae.config.block_out_channels) - 1)

    @property
    def default_size(self) -> int:
        return self.pipe.unet.config.sample_size * self.vae_scale_factor

    @property
    def min_size(self) -> int:
        """The smallest side, in pixels, that still leaves one latent cell at the UNet's deepest
        level: each down block but the last halves the latents (64 for SD 1.x and 2.x)."""
        return self.vae_scale_factor * 2 ** (len(self.pipe.unet.config.down_block_types) - 1)

    @property
    def has_depth_estimator(self) -> bool:
        return getattr(self.pipe, "depth_estimator", None) is not None

    @property
    def prediction_type(self) -> str:
        return self.pipe.scheduler.config.get("prediction_type", "epsilon")

    @property
    def family(self) -> str:
        """"sdxl" when the UNet takes SDXL's added conditioning (pooled text embeddings and
        size/crop time ids: ``addition_embed_type == "text_time"``), else "sd" (SD 1.x and 2.x)."""
        return "sdxl" if self.pipe.unet.config.get("addition_embed_type") == "text_time" else "sd"

    @property
    def requires_aesthetics_score(self) -> bool:
        """SDXL refiner-style models condition on an aesthetic score instead of the target size
        (the pipeline config flag stock diffusers reads)."""
        return self.family == "sdxl" and bool(self.pipe.config.get("requires_aesthetics_score", False))

    @property
    def force_zeros_for_empty_prompt(self) -> bool:
        """SDXL: a row with no negative prompt gets zero unconditional embeddings (pipeline config)."""
        return self.family == "sdxl" and bool(self.pipe.config.get("force_zeros_for_empty_prompt", False))

    @property
    def text_encoder_count(self) -> int:
        return sum(getattr(self.pipe, n, None) is not None for n in ("text_encoder", "text_encoder_2"))

    @property
    def vae_encode_dtype(self) -> torch.dtype:
        """SDXL pipelines encode in float32 whenever the VAE's config says ``force_upcast`` (SDXL's
        VAE overflows in fp16); SD pipelines encode in the model's dtype."""
        if self.family == "sdxl" and self.pipe.vae.config.get("force_upcast", False):
            return torch.float32
        return self.dtype

    @property
    def vae_decode_dtype(self) -> torch.dtype:
        """SDXL pipelines decode in float32 when the model is fp16 and ``force_upcast`` is set."""
        if self.family == "sdxl" and self.dtype == torch.float16 and self.pipe.vae.config.get("force_upcast", False):
            return torch.float32
        return self.dtype


def quiet_libraries() -> None:
    """diffusers and transformers print progress bars and advice on every model load; a batch
    tool's output is its own progress and summary, so theirs are turned down to errors."""
    import diffusers.utils.logging as dlog
    import transformers.utils.logging as tlog

    dlog.set_verbosity_error()
    dlog.disable_progress_bar()
    tlog.set_verbosity_error()
    tlog.disable_progress_bar()


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"--device {device} asked for, but torch sees no CUDA device")
    return torch.device(device)


def resolve_dtype(dtype: str | None, device: torch.device) -> torch.dtype:
    """fp32 on CPU; fp16 on CUDA unless told otherwise."""
    if dtype is None or dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    try:
        return DTYPES[dtype]
    except KeyError:
        raise ModelLoadError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}") from None


def load_model(name: str, device: str | torch.device = "auto", dtype: str | None = None,
               revision: str | None = None) -> LoadedModel:
    """Load ``name`` (a hub id or a local diffusers folder) onto ``device``."""
    from diffusers import DiffusionPipeline

    dev = device if isinstance(device, torch.device) else resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    location = locate_model(name, revision)
    if location.kind == "builtin":
        from .tiny import resolve_builtin_model

        location = locate_model(resolve_builtin_model(name))
    index = json.loads((location.folder / "model_index.json").read_text())
    # Components saved as null (e.g. a depth model saved without its depth estimator) load as None
    # rather than failing the whole pipeline; the engine says what a row needs that is missing.
    extra: dict[str, Any] = {
        key: None for key, value in index.items()
        if not key.startswith("_") and isinstance(value, (list, tuple)) and not any(value)
    }
    if "safety_checker" in index:
        # Bulk generation writes every image; a safety filter is a separate, explicit step.
        extra.update(safety_checker=None, requires_safety_checker=False)
    try:
        with warnings.catch_warnings():  # diffusers renames torch_dtype to dtype; both are accepted
            warnings.simplefilter("ignore", FutureWarning)
            source = dict(pretrained_model_name_or_path=name, revision=location.revision) if location.kind == "hub" \
                else dict(pretrained_model_name_or_path=str(location.folder))
            pipe = DiffusionPipeline.from_pretrained(**source, torch_dtype=torch_dtype, use_safetensors=True, **extra)
    except Exception as exc:  # noqa: BLE001 - a broken component fails the model in one line, never a traceback
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "safetensors" in msg.lower():
            raise ModelLoadError(f"{name}: no safetensors weights; sdbatch refuses pickle checkpoints ({msg})") from exc
        raise ModelLoadError(f"{name}: failed to load: {type(exc).__name__}: {msg}") from exc
    pipe.to(dev)
    pipe.set_progress_bar_config(disable=True)
    for part in ("unet", "vae", "text_encoder", "text_encoder_2", "depth_estimator"):
        module = getattr(pipe, part, None)
        if module is not None:
            module.eval().requires_grad_(False)
    loaded = LoadedModel(name=name, revision=location.revision, pipe=pipe, device=dev, dtype=torch_dtype)
    log.info("loaded %s (%s, family %s) on %s as %s", name, type(pipe).__name__, loaded.family, dev, torch_dtype)
    return loaded
