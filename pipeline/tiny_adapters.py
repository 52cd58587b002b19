"""Tiny random adapters for a model: a LoRA as diffusers' training scripts save one, and a
textual-inversion embedding in its family's format (``sdbatch tiny-lora``, ``tiny-embedding``;
the tests' adapters). Apart from ``tiny.py``: these load a model to learn its shapes."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from .loading import load_model
from .tiny import resolve_builtin_model

LORA_UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
LORA_TEXT_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")


def write_tiny_lora(folder: str | Path, model: str = "tiny", name: str = "tiny-lora", seed: int = 0,
                    rank: int = 4, scale: float = 0.5, text_encoders: bool = True) -> Path:
    """A random LoRA for ``model`` (a built-in name, folder or hub id), as diffusers' training
    scripts save one: peft adapters on the UNet's attention projections (and the text encoders'
    unless ``text_encoders`` is false), ``lora_alpha`` = rank, written by the pipeline class's
    ``save_lora_weights`` to ``folder/name.safetensors``. Random ``lora_B`` (peft starts it at zero,
    which would change nothing) of standard deviation ``scale``; same seed, same file."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig, inject_adapter_in_model
    from peft.utils import get_peft_model_state_dict

    pipe = load_model(resolve_builtin_model(model), "cpu", "fp32").pipe
    layers: dict[str, dict] = {}
    generator = torch.Generator("cpu").manual_seed(seed)
    parts = [("unet", pipe.unet, LORA_UNET_TARGETS)]
    if text_encoders:
        parts += [(part, getattr(pipe, part, None), LORA_TEXT_TARGETS) for part in ("text_encoder", "text_encoder_2")]
    for part, module, targets in parts:
        if module is None:
            continue
        config = LoraConfig(r=rank, lora_alpha=rank, target_modules=list(targets), init_lora_weights="gaussian")
        with warnings.catch_warnings():  # peft notes the pipeline's modules share one config object
            warnings.simplefilter("ignore", UserWarning)
            inject_adapter_in_model(config, module)
        with torch.no_grad():
            for param_name, param in module.named_parameters():
                if "lora_A" in param_name or "lora_B" in param_name:
                    param.copy_(torch.randn(param.shape, generator=generator) * (scale if "lora_B" in param_name else 1 / rank))
        layers[f"{part}_lora_layers"] = convert_state_dict_to_diffusers(get_peft_model_state_dict(module))
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    type(pipe).save_lora_weights(folder, **layers, weight_name=f"{name}.safetensors", safe_serialization=True)
    return folder / f"{name}.safetensors"


def write_tiny_embedding(path: str | Path, model: str = "tiny", token: str = "<tiny-style>", vectors: int = 2,
                         seed: int = 0) -> Path:
    """A random textual-inversion embedding of ``vectors`` vectors for ``model``, as a safetensors
    file in the format its family uses: diffusers' ``{token: tensor}`` for one text encoder,
    ``{"clip_l": ..., "clip_g": ...}`` for SDXL's two. Vectors are drawn at the scale of the
    model's own token embeddings."""
    from safetensors.torch import save_file

    pipe = load_model(resolve_builtin_model(model), "cpu", "fp32").pipe
    generator = torch.Generator("cpu").manual_seed(seed)

    def draw(encoder) -> torch.Tensor:
        table = encoder.get_input_embeddings().weight
        return (torch.randn((vectors, table.shape[-1]), generator=generator) * table.std() * 4).contiguous()

    if getattr(pipe, "text_encoder_2", None) is not None and getattr(pipe, "text_encoder", None) is not None:
        tensors = {"clip_l": draw(pipe.text_encoder), "clip_g": draw(pipe.text_encoder_2)}
    else:
        tensors = {token: draw(pipe.text_encoder if getattr(pipe, "text_encoder", None) is not None
                               else pipe.text_encoder_2)}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path))
    return path
