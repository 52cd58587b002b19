"""Tiny random-weight Stable Diffusion pipelines, written as real diffusers folders.

No weights can be downloaded where sdbatch is developed and tested, so the project makes its own
models: the same architecture classes as SD 1.x (UNet2DConditionModel, AutoencoderKL with an
8x VAE, CLIP text encoder and BPE tokenizer, the SD 1.5 scheduler config), with a few channels per
block. They are saved with ``save_pretrained`` as safetensors and load through exactly the code
path a user's real model takes, including stock diffusers' pipeline classes.
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


def _tokenizer_and_text_encoder(spec: TinySpec):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        vocab_size = write_tokenizer_files(Path(tmp))
        tokenizer = CLIPTokenizer(
            vocab=str(Path(tmp) / "vocab.json"),
            merges=str(Path(tmp) / "merges.txt"),
            model_max_length=77,
        )
    config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=spec.text_hidden,
        intermediate_size=spec.text_hidden * 2,
        num_hidden_layers=spec.text_layers,
        num_attention_heads=2,
        max_position_embeddings=77,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        projection_dim=spec.text_hidden,
    )
    return tokenizer, CLIPTextModel(config).eval()


def _unet(spec: TinySpec, in_channels: int):
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
        cross_attention_dim=spec.text_hidden,
        attention_head_dim=2,
    ).eval()


def _vae(spec: TinySpec):
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


def build_tiny_pipeline(variant: str = "base", seed: int = 0, spec: TinySpec | None = None):
    """Build the stock diffusers pipeline object for a tiny model; same seed, same weights."""
    from diffusers import (
        PNDMScheduler,
        StableDiffusionDepth2ImgPipeline,
        StableDiffusionInpaintPipeline,
        StableDiffusionPipeline,
    )

    if variant not in VARIANTS:
        raise ValueError(f"unknown tiny-model variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    spec = spec or TinySpec()
    in_channels = {"base": 4, "inpaint": 9, "depth": 5}[variant]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = _unet(spec, in_channels)
        vae = _vae(spec)
        tokenizer, text_encoder = _tokenizer_and_text_encoder(spec)
        image_size = spec.latent_sample_size * 2 ** (len(spec.vae_channels) - 1)
        depth = _depth_estimator(image_size) if variant == "depth" else None
    scheduler = PNDMScheduler.from_config(SD15_SCHEDULER_CONFIG)
    common = dict(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler)
    if variant == "depth":
        estimator, processor = depth
        return StableDiffusionDepth2ImgPipeline(**common, depth_estimator=estimator, feature_extractor=processor)
    cls = StableDiffusionInpaintPipeline if variant == "inpaint" else StableDiffusionPipeline
    return cls(**common, safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def write_tiny_model(folder: str | Path, variant: str = "base", seed: int = 0) -> Path:
    """Save a tiny pipeline as a diffusers folder with safetensors weights."""
    folder = Path(folder)
    pipe = build_tiny_pipeline(variant, seed)
    pipe.save_pretrained(folder, safe_serialization=True)
    log.debug("wrote tiny %s model to %s", variant, folder)
    return folder


def resolve_builtin_model(model: str) -> str:
    """``tiny`` / ``tiny:inpaint`` / ``tiny:depth``: the built-in tiny model, written once into the
    user's cache folder and then loaded from there like any diffusers folder. Anything else is
    returned unchanged (a hub id or a local folder)."""
    import os

    from .cache import cache_dir
    from .model_files import builtin_variant, is_builtin

    if not is_builtin(model):
        return model
    variant = builtin_variant(model)
    if variant not in VARIANTS:
        from .model_files import ModelLoadError

        raise ModelLoadError(f"{model}: no built-in model of that name; built-in: "
                             f"{', '.join('tiny' if v == 'base' else f'tiny:{v}' for v in VARIANTS)}")
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
