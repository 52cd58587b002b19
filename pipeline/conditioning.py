"""What the UNet is conditioned on besides the latents, built in one place per model family.

Every conditioner returns a ``Conditioning`` for the model-input rows
``[uncond of the guided rows..., cond of every row...]`` (``guidance.Guidance``), and encodes each
distinct text once per batch and encoder.

* SD 1.x / 2.x: the text encoder's last hidden state.
* SDXL, as stock ``StableDiffusionXL*Pipeline.encode_prompt`` and ``_get_add_time_ids`` build it:
  each text encoder's penultimate hidden states, concatenated (the first encoder reads ``prompt``,
  the second ``prompt_2``; a model with only the second encoder, like the refiner, reads
  ``prompt``); the second encoder's projected pooled output; and per-row time ids, (original size,
  crop top-left, target size) or, for refiner-style models, (original size, crop, aesthetic
  score), whose unconditional rows use the negative aesthetic score and crop (0, 0).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .batch import BatchSettings, RowInput
from .guidance import Guidance
from .loading import LoadedModel
from .text import PromptEncoder

DEFAULT_AESTHETIC_SCORE = 6.0
DEFAULT_NEGATIVE_AESTHETIC_SCORE = 2.5


@dataclass
class Conditioning:
    """The UNet's conditioning, one entry per model-input row."""

    hidden_states: torch.Tensor  # (G + N, seq, dim)
    added: dict[str, torch.Tensor] | None = None  # SDXL: "text_embeds" (pooled), "time_ids"

    def unet_kwargs(self) -> dict:
        kwargs: dict = {"encoder_hidden_states": self.hidden_states}
        if self.added is not None:
            kwargs["added_cond_kwargs"] = self.added
        return kwargs


Conditioner = Callable[[BatchSettings, list[RowInput], Guidance], Conditioning]


class SDConditioner:
    """SD 1.x and 2.x: one CLIP text encoder's last hidden state."""

    def __init__(self, model: LoadedModel):
        pipe = model.pipe
        self.device = model.device
        self.prompts = PromptEncoder(pipe.tokenizer, pipe.text_encoder, model.device, model.dtype)

    def __call__(self, settings: BatchSettings, rows: list[RowInput], guidance: Guidance) -> Conditioning:
        texts = [rows[i].negative_prompt for i in guidance.rows] + [r.prompt for r in rows]
        unique, index = self.prompts.encode_unique(texts)
        return Conditioning(unique[torch.tensor(index, device=self.device)])


class SDXLConditioner:
    """SDXL base, inpainting and refiner models."""

    def __init__(self, model: LoadedModel):
        pipe = model.pipe
        self.model = model
        pairs = [(pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2)]
        self.encoders = [PromptEncoder(tok, enc, model.device, model.dtype, penultimate=True)
                         for tok, enc in pairs if enc is not None]

    # -- text -------------------------------------------------------------------------------
    def _negative_texts(self, row: RowInput) -> tuple[str, str] | None:
        """The unconditional texts, or None for zeros: a row with no negative prompt on a model
        with ``force_zeros_for_empty_prompt`` (stock: ``negative_prompt`` not passed)."""
        if self.model.force_zeros_for_empty_prompt and not row.negative_prompt and not row.negative_prompt_2:
            return None
        return row.negative_prompt, row.negative_prompt_2 or row.negative_prompt

    def _text(self, texts: list[tuple[str, str] | None]) -> tuple[torch.Tensor, torch.Tensor]:
        """Concatenated hidden states and pooled embeddings per entry (zeros where None)."""
        given = [i for i, t in enumerate(texts) if t is not None]
        hidden_parts, pooled = [], None
        for k, encoder in enumerate(self.encoders):  # encoder k reads text k, as stock's zip does
            encoded = encoder.encode([texts[i][k] for i in given])
            where = torch.tensor(encoded.index, device=self.model.device)
            hidden_parts.append(encoded.hidden[where])
            if pooled is None and encoded.pooled is not None:
                pooled = encoded.pooled[where]
        if pooled is None:
            raise ValueError(f"model {self.model.name}: no text encoder gives a pooled (projected) output; "
                             "SDXL needs text_encoder_2 to be a CLIPTextModelWithProjection")
        hidden = torch.cat(hidden_parts, dim=-1)
        if len(given) == len(texts):
            return hidden, pooled
        where = torch.tensor(given, device=self.model.device)
        all_hidden = hidden.new_zeros((len(texts), *hidden.shape[1:])).index_copy(0, where, hidden)
        all_pooled = pooled.new_zeros((len(texts), *pooled.shape[1:])).index_copy(0, where, pooled)
        return all_hidden, all_pooled

    # -- micro-conditioning -------------------------------------------------------------------
    def _time_ids(self, settings: BatchSettings, row: RowInput) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """(cond, uncond) time ids of one row."""
        h, w = settings.height, settings.width
        original = (row.original_height or h, row.original_width or w)
        crop = (row.crop_top or 0, row.crop_left or 0)
        if self.model.requires_aesthetics_score:
            score = DEFAULT_AESTHETIC_SCORE if row.aesthetic_score is None else row.aesthetic_score
            negative = (DEFAULT_NEGATIVE_AESTHETIC_SCORE if row.negative_aesthetic_score is None
                        else row.negative_aesthetic_score)
            return original + crop + (score,), original + (0, 0) + (negative,)
        target = (row.target_height or h, row.target_width or w)
        ids = original + crop + target
        return ids, ids

    def _check_time_ids(self, count: int, pooled_dim: int) -> None:
        unet = self.model.pipe.unet
        passed = unet.config.addition_time_embed_dim * count + pooled_dim
        expected = unet.add_embedding.linear_1.in_features
        if passed != expected:
            flag = "requires_aesthetics_score"
            raise ValueError(
                f"model {self.model.name}: its UNet expects added conditioning of size {expected}, but "
                f"{count} time ids and a {pooled_dim}-wide pooled embedding make {passed}; check the "
                f"pipeline config's {flag} (now {self.model.requires_aesthetics_score})")

    def __call__(self, settings: BatchSettings, rows: list[RowInput], guidance: Guidance) -> Conditioning:
        texts = ([self._negative_texts(rows[i]) for i in guidance.rows]
                 + [(r.prompt, r.prompt_2 or r.prompt) for r in rows])
        hidden, pooled = self._text(texts)
        ids = [self._time_ids(settings, r) for r in rows]
        time_ids = [ids[i][1] for i in guidance.rows] + [cond for cond, _ in ids]
        self._check_time_ids(len(time_ids[0]), pooled.shape[-1])
        time_ids = torch.tensor(time_ids, dtype=hidden.dtype, device=self.model.device)
        return Conditioning(hidden, {"text_embeds": pooled, "time_ids": time_ids})


CONDITIONERS: dict[str, Callable[[LoadedModel], Conditioner]] = {"sd": SDConditioner, "sdxl": SDXLConditioner}


def conditioner_for(model: LoadedModel) -> Conditioner:
    return CONDITIONERS[model.family](model)
