"""Prompt encoding for a batch: each distinct text goes through the CLIP encoder once."""

from __future__ import annotations

import torch


class PromptEncoder:
    """Encodes prompts exactly as stock diffusers' ``encode_prompt`` does (max-length padding,
    truncation, attention mask only when the text encoder's config asks for one)."""

    def __init__(self, tokenizer, text_encoder, device: torch.device, dtype: torch.dtype):
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        self.device = device
        self.dtype = dtype
        self.use_attention_mask = bool(getattr(text_encoder.config, "use_attention_mask", False))

    @torch.inference_mode()
    def encode_unique(self, texts: list[str]) -> tuple[torch.Tensor, list[int]]:
        """Embeddings of the distinct texts and, for each input text, its row in them."""
        unique = list(dict.fromkeys(texts))
        where = {text: i for i, text in enumerate(unique)}
        tokens = self.tokenizer(
            unique,
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        )
        mask = tokens.attention_mask.to(self.device) if self.use_attention_mask else None
        embeds = self.text_encoder(tokens.input_ids.to(self.device), attention_mask=mask)[0]
        return embeds.to(dtype=self.dtype, device=self.device), [where[t] for t in texts]
