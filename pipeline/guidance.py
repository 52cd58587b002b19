"""Classifier-free guidance, per row.

The UNet sees the model-input rows ``[uncond of the guided rows..., cond of every row...]``: rows
with guidance scale <= 1 skip the unconditional sample, as stock diffusers does for such a scale,
and cost one UNet sample instead of two. Each guided row gets its own scale, and its own
``guidance_rescale`` (diffusers' ``rescale_noise_cfg``, applied only where it is > 0, as stock).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg

from .batch import RowInput


@dataclass
class Guidance:
    rows: list[int]  # the guided rows (scale > 1), by batch position
    index: torch.Tensor  # the same, as a tensor
    scale: torch.Tensor  # (G, 1, 1, 1)
    rescaled: torch.Tensor | None  # positions among the guided rows whose rescale is > 0
    rescale: torch.Tensor | None  # (R, 1, 1, 1)

    @classmethod
    def for_rows(cls, rows: list[RowInput], device: torch.device, dtype: torch.dtype) -> Guidance:
        guided = [i for i, r in enumerate(rows) if r.guidance_scale > 1.0]
        scale = torch.tensor([rows[i].guidance_scale for i in guided], dtype=dtype, device=device)
        rescaled = [k for k, i in enumerate(guided) if rows[i].guidance_rescale > 0.0]
        return cls(
            rows=guided,
            index=torch.tensor(guided, dtype=torch.long, device=device),
            scale=scale.view(-1, 1, 1, 1),
            rescaled=torch.tensor(rescaled, dtype=torch.long, device=device) if rescaled else None,
            rescale=torch.tensor([rows[guided[k]].guidance_rescale for k in rescaled], dtype=dtype,
                                 device=device).view(-1, 1, 1, 1) if rescaled else None,
        )

    def expand(self, per_row: torch.Tensor) -> torch.Tensor:
        """Per-row values (latents, extra UNet channels) -> the UNet's model-input rows."""
        return torch.cat([per_row[self.index], per_row]) if self.rows else per_row

    def combine(self, noise_pred: torch.Tensor) -> torch.Tensor:
        """The UNet's output for the model-input rows -> one guided prediction per row."""
        if not self.rows:
            return noise_pred
        uncond, cond = noise_pred[: len(self.rows)], noise_pred[len(self.rows):]
        text = cond[self.index]
        guided = uncond + self.scale * (text - uncond)
        if self.rescaled is not None:
            fixed = rescale_noise_cfg(guided[self.rescaled], text[self.rescaled], guidance_rescale=self.rescale)
            guided = guided.index_copy(0, self.rescaled, fixed)
        return cond.index_copy(0, self.index, guided)
