"""What a batch is made of: the settings its rows share and what each row brings."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

@dataclass(frozen=True)
class BatchSettings:
    """What every row of one batch shares. ``mode`` names one of ``modes.STARTS``; ``strength`` is
    read by the image modes only."""

    width: int
    height: int
    steps: int
    scheduler: str | None = None
    mode: str = "txt2img"
    strength: float = 1.0


@dataclass(frozen=True, eq=False)  # holds images and arrays: compared by identity
class RowInput:
    """What may vary from row to row inside a batch.

    Images come decoded and already at the batch's size (the engine never reads files): an RGB
    ``init_image`` for img2img, inpaint and depth2img; an ``L`` ``mask_image`` for inpaint (white
    repaints, black keeps); for depth2img an optional ``depth_map`` (H, W) of any size, larger values
    nearer, which the model's depth estimator makes when it is None.
    """

    prompt: str
    seed: int
    guidance_scale: float = 7.5
    negative_prompt: str = ""
    init_image: Image.Image | None = None
    mask_image: Image.Image | None = None
    depth_map: np.ndarray | None = None
