"""Tiny random-weight Stable Diffusion pipelines, written as real diffusers folders.

No weights can be downloaded where sdbatch is developed and tested, so the project makes its own
models: the same architecture classes as the real ones (UNet2DConditionModel, AutoencoderKL with an
8x VAE, CLIP text encoders and BPE tokenizers, the real models' scheduler configs), with a few
channels per block. They are saved with ``save_pretrained`` as safetensors and load through exactly
the code path a user's real model takes, including stock diffusers' pipeline classes.

=============  ==================================================================================
base           SD 1.5: one CLIP text encoder, 4-channel UNet, PNDM epsilon scheduler config
inpaint        SD 1.5 inpainting: 9-channel UNet
depth          SD 2 depth: 5-channel UNet and a DPT depth estimator
v              SD 2.1 (768-v): v-prediction DDIM config, linear-projection UNet, GELU text encoder
xl             SDXL base: two text encoders (the second with projection), ``text_time`` UNet,
               SDXL's Euler config and VAE scaling factor
xl-inpaint     SDXL inpainting: the same with a 9-channel UNet
xl-refiner     SDXL refiner: ``text_encoder_2`` only, aesthetic-score time ids; its VAE and
               ``text_encoder_2`` are the ``xl`` model's (same seed), as the real pair shares them
=============  ==================================================================================
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

log = logging.getLogger(__name__)

from .model_files import TINY_VARIANTS as VARIANTS  # noqa: E402 - named there, so choosing one needs no torch

XL_VARIANTS = ("xl", "xl-inpaint", "xl-refiner")

# The SD 1.5 scheduler config: what `from_pretrained` gives for the real model.
SD15_SCHEDULER_CONFIG = dict(
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    num_train_timesteps=1000,
    set_alpha_to_one=False,
    skip_prk_steps=True,
    steps_offset=1,
    clip_sample=False,
    prediction_type="epsilon",
)

# The SD 2.1 (768-v) scheduler config: DDIM, v-prediction, "leading" spacing (DDIM's default, which
# SD 2.1's config leaves implicit). The training schedule is SD 1.5's.
SD21_V_SCHEDULER_CONFIG = {**SD15_SCHEDULER_CONFIG, "prediction_type": "v_prediction", "timestep_spacing": "leading"}

# The SDXL base 1.0 scheduler config (the refiner's is the same): SD 1.5's schedule, Euler's settings.
SDXL_SCHEDULER_CONFIG = {**SD15_SCHEDULER_CONFIG, "sample_max_value": 1.0, "interpolation_type": "linear",
                         "timestep_spacing": "leading", "use_karras_sigmas": False}
SDXL_VAE_SCALING_FACTOR = 0.13025

# Letter pairs common in English prompts; merged so the tokenizer is a real BPE, not a char map.
_MERGES = [
    "t h", "h e", "i n", "e r", "a n", "r e", "o n", "a t", "e n", "n d", "o r", "e s", "s t",
    "a r", "t e", "a l", "i t", "o u", "l e", "n g", "in g", "th e", "th e</w>", "o n</w>",
    "e r</w>", "in g</w>", "a t</w>", "e s</w>",
]


@dataclass(frozen=True)
class TinySpec:
    """Sizes of the tiny model; defaults give 32x32 images from 4x4 latents."""

    unet_channels: tuple[int, ...] = (8, 16)
    vae_channels: tuple[int, ...] = (8, 8, 16, 16)
    text_hidden: int = 16
    text_layers: int = 2
    latent_sample_size: int = 4
    # SDXL: the second text encoder is wider than the first (1280 vs 768 in the real model), so
    # mixing the two up fails loudly instead of silently; time ids embed at this width (256 real).
    text_hidden_2: int = 24
    time_embed_dim: int = 8


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable unicode table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1)
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def write_tokenizer_files(folder: Path) -> int:
    """Write a CLIP BPE vocabulary covering every byte, plus a few merges; returns vocab size."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab: dict[str, int] = {}
    for ch in _bytes_to_unicode().values():
        vocab[ch] = len(vocab)
    for ch in _bytes_to_unicode().values():
        vocab[ch + "</w>"] = len(vocab)
    for merge in _MERGES:
        token = merge.replace(" ", "")
        if token not in vocab:
            vocab[token] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(_MERGES) + "\n")
    return len(vocab)


def build_tokenizer(pad_token: str | None = None):
    """A CLIP tokenizer over the generated BPE vocabulary (prompts pad to 77 tokens)."""
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        write_tokenizer_files(Path(tmp))
        extra = {"pad_token": pad_token} if pad_token else {}
        return CLIPTokenizer(vocab=str(Path(tmp) / "vocab.json"), merges=str(Path(tmp) / "merges.txt"),
                             model_max_length=77, **extra)


def _tokenizer_and_text_encoder(spec: TinySpec, hidden: int | None = None, projection: bool = False,
                                 hidden_act: str = "quick_gelu", pad_token: str | None = None):
    """A CLIP tokenizer and text encoder; ``projection`` gives ``CLIPTextModelWithProjection``
    (SDXL's second encoder, whose projected pooled output conditions the UNet). SDXL's second
    tokenizer pads with "!" where the first pads with its end token; ``pad_token`` does the same."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    hidden = hidden or spec.text_hidden
    tokenizer = build_tokenizer(pad_token)
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=spec.text_layers,
        num_attention_heads=2,
        max_position_embeddings=77,
        hidden_act=hidden_act,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        projection_dim=hidden,
    )
    cls = CLIPTextModelWithProjection if projection else CLIPTextModel
    return tokenizer, cls(config).eval()


def _unet(spec: TinySpec, in_channels: int, cross_attention_dim: int | None = None, **extra):
    """``extra``: SD 2.x's linear projections, SDXL's ``text_time`` added conditioning."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=spec.latent_sample_size,
        in_channels=in_channels,
        out_channels=4,
        block_out_channels=spec.unet_channels,
        layers_per_block=1,
        norm_num_groups=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=cross_attention_dim or spec.text_hidden,
        attention_head_dim=2,
        **extra,
    ).eval()


def _xl_unet(spec: TinySpec, in_channels: int, cross_attention_dim: int, time_ids: int):
    """SDXL's UNet: ``text_time`` added conditioning embeds ``time_ids`` numbers (6 for the base:
    original size, crop, target size; 5 for the refiner: original size, crop, aesthetic score)
    next to the second text encoder's projected pooled output."""
    return _unet(
        spec, in_channels, cross_attention_dim,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=spec.time_embed_dim,
        projection_class_embeddings_input_dim=spec.time_embed_dim * time_ids + spec.text_hidden_2,
    )


def _vae(spec: TinySpec, **extra):
    from diffusers import AutoencoderKL

    n = len(spec.vae_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=spec.vae_channels,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        layers_per_block=1,
        norm_num_groups=4,
        sample_size=spec.latent_sample_size * 2 ** (n - 1),
        **extra,
    ).eval()


def _depth_estimator(image_size: int):
    """A tiny DPT (ViT) depth estimator and its image processor, as SD 2 depth ships."""
    from transformers import DPTConfig, DPTForDepthEstimation, DPTImageProcessor

    config = DPTConfig(
        image_size=image_size,
        patch_size=8,
        num_channels=3,
        hidden_size=16,
        num_hidden_layers=4,
        backbone_out_indices=(0, 1, 2, 3),
        num_attention_heads=2,
        intermediate_size=32,
        neck_hidden_sizes=(8, 8, 16, 16),
        fusion_hidden_size=8,
        head_in_index=-1,
        is_hybrid=False,
    )
    processor = DPTImageProcessor(
        do_resize=True,
        size={"height": image_size, "width": image_size},
        keep_aspect_ratio=False,
        do_rescale=True,
        do_normalize=True,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    estimator = DPTForDepthEstimation(config).eval()
    # DPT's own init (normal, std 0.02, through a dozen layers) predicts depths near 1e-10, which
    # underflow to a constant map in fp16; torch's default conv init keeps them near 0.1.
    for module in (*estimator.neck.modules(), *estimator.head.modules()):
        if isinstance(module, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
            module.reset_parameters()
    return estimator, processor


def _build_sd(variant: str, seed: int, spec: TinySpec):
    """SD 1.x / 2.x: one text encoder."""
    from diffusers import (
        DDIMScheduler,
        PNDMScheduler,
        StableDiffusionDepth2ImgPipeline,
        StableDiffusionInpaintPipeline,
        StableDiffusionPipeline,
    )

    in_channels = {"base": 4, "inpaint": 9, "depth": 5, "v": 4}[variant]
    sd2 = variant == "v"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = _unet(spec, in_channels, **(dict(use_linear_projection=True, upcast_attention=True) if sd2 else {}))
        vae = _vae(spec)
        tokenizer, text_encoder = _tokenizer_and_text_encoder(spec, hidden_act="gelu" if sd2 else "quick_gelu")
        image_size = spec.latent_sample_size * 2 ** (len(spec.vae_channels) - 1)
        depth = _depth_estimator(image_size) if variant == "depth" else None
    scheduler = DDIMScheduler.from_config(SD21_V_SCHEDULER_CONFIG) if sd2 else PNDMScheduler.from_config(SD15_SCHEDULER_CONFIG)
    common = dict(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler)
    if variant == "depth":
        estimator, processor = depth
        return StableDiffusionDepth2ImgPipeline(**common, depth_estimator=estimator, feature_extractor=processor)
    cls = StableDiffusionInpaintPipeline if variant == "inpaint" else StableDiffusionPipeline
    return cls(**common, safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def _build_xl(variant: str, seed: int, spec: TinySpec):
    """SDXL base, inpainting and refiner. The VAE and both text encoders come first from the seed,
    so all three share them (the real refiner shares the base's VAE and second text encoder)."""
    from diffusers import (
        EulerDiscreteScheduler,
        StableDiffusionXLImg2ImgPipeline,
        StableDiffusionXLInpaintPipeline,
        StableDiffusionXLPipeline,
    )

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = _vae(spec, scaling_factor=SDXL_VAE_SCALING_FACTOR, force_upcast=True)
        tokenizer, text_encoder = _tokenizer_and_text_encoder(spec)
        tokenizer_2, text_encoder_2 = _tokenizer_and_text_encoder(
            spec, spec.text_hidden_2, projection=True, hidden_act="gelu", pad_token="!")
        if variant == "xl-refiner":
            unet = _xl_unet(spec, 4, spec.text_hidden_2, time_ids=5)
        else:
            unet = _xl_unet(spec, 9 if variant == "xl-inpaint" else 4, spec.text_hidden + spec.text_hidden_2,
                            time_ids=6)
    scheduler = EulerDiscreteScheduler.from_config(SDXL_SCHEDULER_CONFIG)
    common = dict(vae=vae, text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2, unet=unet,
                  scheduler=scheduler, add_watermarker=False)
    if variant == "xl-refiner":
        return StableDiffusionXLImg2ImgPipeline(
            **common, text_encoder=None, tokenizer=None,
            requires_aesthetics_score=True, force_zeros_for_empty_prompt=False)
    cls = StableDiffusionXLInpaintPipeline if variant == "xl-inpaint" else StableDiffusionXLPipeline
    return cls(**common, text_encoder=text_encoder, tokenizer=tokenizer)


def build_tiny_pipeline(variant: str = "base", seed: int = 0, spec: TinySpec | None = None):
    """Build the stock diffusers pipeline object for a tiny model; same seed, same weights."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown tiny-model variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    spec = spec or TinySpec()
    return (_build_xl if variant in XL_VARIANTS else _build_sd)(variant, seed, spec)


def write_tiny_model(folder: str | Path, variant: str = "base", seed: int = 0) -> Path:
    """Save a tiny pipeline as a diffusers folder with safetensors weights."""
    folder = Path(folder)
    pipe = build_tiny_pipeline(variant, seed)
    pipe.save_pretrained(folder, safe_serialization=True)
    log.debug("wrote tiny %s model to %s", variant, folder)
    return folder


def resolve_builtin_model(model: str) -> str:
    """``tiny`` or ``tiny:VARIANT`` (any of VARIANTS, e.g. ``tiny:xl``): the built-in tiny model,
    written once into the user's cache folder and then loaded from there like any diffusers folder.
    Anything else is returned unchanged (a hub id or a local folder)."""
    import os

    from .cache import cache_dir
    from .model_files import builtin_variant, is_builtin, locate_model

    if not is_builtin(model):
        return model
    locate_model(model)  # refuses an unknown built-in name
    variant = builtin_variant(model)
    cache = cache_dir()
    folder = cache / f"tiny-{variant}-seed0"
    if not (folder / "model_index.json").exists():
        log.info("writing the built-in tiny random-weight model (its images are noise) to %s", folder)
        tmp = cache / f".tiny-{variant}-{os.getpid()}"
        write_tiny_model(tmp, variant, seed=0)
        try:
            os.replace(tmp, folder)
        except OSError:  # another process won the race; its folder is identical
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    return str(folder)


# -- adapters for a model: a random LoRA and a random textual-inversion embedding ----------------
