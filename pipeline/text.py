"""Prompt encoding for a batch: each distinct text goes through each CLIP encoder once."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class EncodedTexts:
    """The distinct texts' embeddings, and for each input text its row in them."""

    hidden: torch.Tensor  # (U, seq, dim)
    pooled: torch.Tensor | None  # (U, proj): a projecting encoder's text embeds (SDXL's second)
    index: list[int]


class PromptEncoder:
    """Encodes prompts exactly as stock diffusers' ``encode_prompt`` does (max-length padding,
    truncation).

    ``penultimate=False`` (SD 1.x / 2.x): the last hidden state, with an attention mask only when
    the text encoder's config asks for one. ``penultimate=True`` (SDXL): the hidden states before
    the last layer, no mask, and the pooled output when the encoder projects one."""

    def __init__(self, tokenizer, text_encoder, device: torch.device, dtype: torch.dtype,
                 penultimate: bool = False):
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        self.device = device
        self.dtype = dtype
        self.penultimate = penultimate
        self.use_attention_mask = bool(getattr(text_encoder.config, "use_attention_mask", False))

    @torch.inference_mode()
    def encode(self, texts: list[str]) -> EncodedTexts:
        unique = list(dict.fromkeys(texts))
        where = {text: i for i, text in enumerate(unique)}
        tokens = self.tokenizer(
            unique,
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        )
        ids = tokens.input_ids.to(self.device)
        pooled = None
        if self.penultimate:
            out = self.text_encoder(ids, output_hidden_states=True)
            hidden = out.hidden_states[-2]
            if out[0].ndim == 2:  # CLIPTextModelWithProjection's text_embeds, as stock picks it
                pooled = out[0].to(dtype=self.dtype, device=self.device)
        else:
            mask = tokens.attention_mask.to(self.device) if self.use_attention_mask else None
            hidden = self.text_encoder(ids, attention_mask=mask)[0]
        return EncodedTexts(hidden.to(dtype=self.dtype, device=self.device), pooled, [where[t] for t in texts])

    def encode_unique(self, texts: list[str]) -> tuple[torch.Tensor, list[int]]:
        """Embeddings of the distinct texts and, for each input text, its row in them."""
        encoded = self.encode(texts)
        return encoded.hidden, encoded.index
