"""What a batch is made of: the settings its rows share and what each row brings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    from .host_copy import PendingImages


@dataclass(frozen=True)
class LoraWeight:
    """One LoRA a batch runs with: its safetensors file on this machine, its weight (diffusers'
    ``set_adapters`` weight) and the file's SHA-256 (which names its adapter: same bytes, one
    adapter)."""

    path: str
    weight: float
    sha256: str
    name: str = ""  # as the row named it (for the record; the adapter is the file)


@dataclass(frozen=True)
class BatchSettings:
    """What every row of one batch shares. ``mode`` names one of ``modes.STARTS``; ``strength`` is
    read by the image modes only.

    ``refiner_start`` (SDXL base + refiner, diffusers' "ensemble of expert denoisers"): the
    fraction of the schedule after which a refiner model takes over, diffusers' ``denoising_end``
    for the base and ``denoising_start`` for the refiner; None runs the batch on one model.

    ``loras``: the LoRAs the model runs with for this batch (``adapters.py``), none by default. A
    refiner runs without them.
    """

    width: int
    height: int
    steps: int
    scheduler: str | None = None
    mode: str = "txt2img"
    strength: float = 1.0
    refiner_start: float | None = None
    loras: tuple[LoraWeight, ...] = ()


@dataclass(frozen=True, eq=False)  # holds images and arrays: compared by identity
class RowInput:
    """What may vary from row to row inside a batch.

    Images come decoded and already at the batch's size (the engine never reads files): an RGB
    ``init_image`` for img2img, inpaint and depth2img; an ``L`` ``mask_image`` for inpaint (white
    repaints, black keeps); for depth2img an optional ``depth_map`` (H, W) of any size, larger values
    nearer, which the model's depth estimator makes when it is None.

    ``prompt_syntax`` (``prompt_syntax.SYNTAXES``) says how the row's texts are read and
    ``clip_skip`` which text-encoder layer they come from (diffusers' ``clip_skip``; None = the
    family's usual one): see ``text.py``.

    ``guidance_rescale`` (every family): diffusers' rescale of the guided noise prediction
    (``rescale_noise_cfg``), 0 = off; it acts only on guided rows (guidance scale > 1), as stock.

    SDXL only (None = not given, diffusers' default; ``families.check_row_fields`` refuses them on
    a model that cannot use them):

    * ``prompt_2`` / ``negative_prompt_2``: the second text encoder's texts (default: ``prompt`` /
      ``negative_prompt``). A row whose negative prompts are both empty has "no negative prompt":
      on a model whose config says ``force_zeros_for_empty_prompt`` its unconditional embeddings
      are zeros, as stock diffusers does when ``negative_prompt`` is not passed.
    * ``original_width`` / ``original_height`` (default: the image size), ``crop_top`` /
      ``crop_left`` (default 0), ``target_width`` / ``target_height`` (default: the image size):
      the micro-conditioning time ids of SDXL. Refiner-style models (``requires_aesthetics_score``)
      take ``aesthetic_score`` (default 6.0) / ``negative_aesthetic_score`` (default 2.5) instead of
      the target size.
    """

    prompt: str
    seed: int
    guidance_scale: float = 7.5
    negative_prompt: str = ""
    init_image: Image.Image | None = None
    mask_image: Image.Image | None = None
    depth_map: np.ndarray | None = None
    guidance_rescale: float = 0.0
    prompt_2: str | None = None
    negative_prompt_2: str | None = None
    original_width: int | None = None
    original_height: int | None = None
    crop_top: int | None = None
    crop_left: int | None = None
    target_width: int | None = None
    target_height: int | None = None
    aesthetic_score: float | None = None
    negative_aesthetic_score: float | None = None
    prompt_syntax: str = "plain"
    clip_skip: int | None = None


@dataclass
class BatchResult:
    images: np.ndarray  # (N, H, W, 3) uint8
    scheduler: str  # the scheduler actually used, by sdbatch name


@dataclass
class PendingBatch:
    """A batch whose GPU work is queued and whose images may still be on their way to the host."""

    images: PendingImages
    scheduler: str

    def result(self) -> BatchResult:
        return BatchResult(images=self.images.result(), scheduler=self.scheduler)
