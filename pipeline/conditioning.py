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

Texts are read in the row's ``prompt_syntax`` with its ``clip_skip`` (``text.py``), for both families
alike. As stock diffusers does, ``clip_skip`` applies to the prompts, not the negative prompts. A
row's texts may run to several 77-token chunks (a1111, compel): its prompt and negative prompt (and
SDXL's two encoders' texts) are lengthened to the same chunk count with their syntax's empty chunk,
as A1111 and compel do. Rows of different lengths share a batch by padding the shorter ones with
zeros that a cross-attention mask hides from the UNet (``encoder_attention_mask``), so no row's
image depends on its neighbours' lengths.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .batch import BatchSettings, RowInput
from .guidance import Guidance
from .loading import LoadedModel
from .modes import ModeError
from .text import PromptEncoder, TextError, TextFacts, TextRequest

DEFAULT_AESTHETIC_SCORE = 6.0
DEFAULT_NEGATIVE_AESTHETIC_SCORE = 2.5


@dataclass
class Conditioning:
    """The UNet's conditioning, one entry per model-input row."""

    hidden_states: torch.Tensor  # (G + N, seq, dim)
    added: dict[str, torch.Tensor] | None = None  # SDXL: "text_embeds" (pooled), "time_ids"
    mask: torch.Tensor | None = None  # (G + N, seq): 0 on padding, when rows' lengths differ

    def unet_kwargs(self) -> dict:
        kwargs: dict = {"encoder_hidden_states": self.hidden_states}
        if self.added is not None:
            kwargs["added_cond_kwargs"] = self.added
        if self.mask is not None:
            kwargs["encoder_attention_mask"] = self.mask
        return kwargs


# One model-input row's texts, one request per text encoder (encoder k reads entry k); None: zeros.
Entry = tuple[TextRequest, ...] | None


def prompt_request(row: RowInput, text: str) -> TextRequest:
    return TextRequest(text, row.prompt_syntax, row.clip_skip)


def negative_request(row: RowInput, text: str) -> TextRequest:
    return TextRequest(text, row.prompt_syntax, None)  # stock applies clip_skip to prompts only


def _lengthen(hidden: torch.Tensor, length: int, chunk: torch.Tensor | None) -> torch.Tensor:
    if hidden.shape[0] == length:
        return hidden
    return torch.cat([hidden, chunk.repeat((length - hidden.shape[0]) // chunk.shape[0], 1)])


def encode_entries(encoders: list[PromptEncoder], entries: list[Entry], owners: list[int],
                   device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Hidden states (E, seq, sum of dims), pooled embeddings (E, proj) or None, and the
    cross-attention mask (E, seq) or None, for model-input rows ``entries``; ``owners[e]`` is the
    batch row entry e belongs to (whose entries share one length)."""
    encoded = [encoder.encode([e[k] for e in entries if e is not None]) for k, encoder in enumerate(encoders)]
    length: dict[int, int] = {}
    for entry, owner in zip(entries, owners):
        if entry is not None:
            longest = max(encoded[k][entry[k]].hidden.shape[0] for k in range(len(encoders)))
            length[owner] = max(length.get(owner, 0), longest)
    dims = [next(iter(e.values())).hidden.shape[-1] for e in encoded]
    hidden, pooled = [], []
    for entry, owner in zip(entries, owners):
        if entry is None:
            hidden.append(None)
            pooled.append(None)
            continue
        parts = []
        for k, encoder in enumerate(encoders):
            own = encoded[k][entry[k]].hidden
            chunk = encoder.padding(entry[k]) if own.shape[0] < length[owner] else None
            parts.append(_lengthen(own, length[owner], chunk))
        hidden.append(torch.cat(parts, dim=-1))
        pooled.append(next((encoded[k][entry[k]].pooled for k in range(len(encoders))
                            if encoded[k][entry[k]].pooled is not None), None))
    template = next(h for h in hidden if h is not None)
    hidden = [h if h is not None else template.new_zeros((length[o], sum(dims))) for h, o in zip(hidden, owners)]
    known = next((p for p in pooled if p is not None), None)
    pooled_all = None if known is None else torch.stack([p if p is not None else torch.zeros_like(known)
                                                         for p in pooled])
    longest = max(h.shape[0] for h in hidden)
    if all(h.shape[0] == longest for h in hidden):
        return torch.stack(hidden), pooled_all, None
    mask = torch.zeros((len(hidden), longest), dtype=torch.long, device=device)
    padded = template.new_zeros((len(hidden), longest, template.shape[-1]))
    for i, h in enumerate(hidden):
        padded[i, : h.shape[0]] = h
        mask[i, : h.shape[0]] = 1
    return padded, pooled_all, mask


Conditioner = Callable[[BatchSettings, list[RowInput], Guidance], Conditioning]


class SDConditioner:
    """SD 1.x and 2.x: one CLIP text encoder's last hidden state."""

    def __init__(self, model: LoadedModel):
        pipe = model.pipe
        self.device = model.device
        self.prompts = PromptEncoder(pipe, pipe.tokenizer, pipe.text_encoder, model.device, model.dtype)
        self.encoders = [self.prompts]

    def __call__(self, settings: BatchSettings, rows: list[RowInput], guidance: Guidance) -> Conditioning:
        entries = ([(negative_request(rows[i], rows[i].negative_prompt),) for i in guidance.rows]
                   + [(prompt_request(r, r.prompt),) for r in rows])
        hidden, _, mask = encode_entries(self.encoders, entries, guidance.rows + list(range(len(rows))), self.device)
        return Conditioning(hidden, mask=mask)

    def row_requests(self, row: RowInput) -> list[tuple[str, int, TextRequest]]:
        """(column, encoder, request) of each text ``row`` has encoded."""
        return [("prompt", 0, prompt_request(row, row.prompt)),
                ("negative_prompt", 0, negative_request(row, row.negative_prompt))]


class SDXLConditioner:
    """SDXL base, inpainting and refiner models."""

    def __init__(self, model: LoadedModel):
        pipe = model.pipe
        self.model = model
        pairs = [(pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2)]
        self.encoders = [PromptEncoder(pipe, tok, enc, model.device, model.dtype, penultimate=True)
                         for tok, enc in pairs if enc is not None]

    # -- text -------------------------------------------------------------------------------
    def _negative(self, row: RowInput) -> Entry:
        """The unconditional texts, or None for zeros: a row with no negative prompt on a model
        with ``force_zeros_for_empty_prompt`` (stock: ``negative_prompt`` not passed)."""
        if self.model.force_zeros_for_empty_prompt and not row.negative_prompt and not row.negative_prompt_2:
            return None
        return (negative_request(row, row.negative_prompt),
                negative_request(row, row.negative_prompt_2 or row.negative_prompt))

    @staticmethod
    def _positive(row: RowInput) -> Entry:
        return prompt_request(row, row.prompt), prompt_request(row, row.prompt_2 or row.prompt)

    def row_requests(self, row: RowInput) -> list[tuple[str, int, TextRequest]]:
        """(column, encoder, request) of each text ``row`` has encoded."""
        out = []
        for entry, columns in ((self._positive(row), ("prompt", "prompt_2" if row.prompt_2 else "prompt")),
                               (self._negative(row), ("negative_prompt", "negative_prompt_2" if row.negative_prompt_2
                                                      else "negative_prompt"))):
            if entry is not None:
                out += [(columns[k], k, entry[k]) for k in range(len(self.encoders))]
        return out

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
        entries = [self._negative(rows[i]) for i in guidance.rows] + [self._positive(r) for r in rows]
        owners = guidance.rows + list(range(len(rows)))
        hidden, pooled, mask = encode_entries(self.encoders, entries, owners, self.model.device)
        if pooled is None:
            raise ValueError(f"model {self.model.name}: no text encoder gives a pooled (projected) output; "
                             "SDXL needs text_encoder_2 to be a CLIPTextModelWithProjection")
        ids = [self._time_ids(settings, r) for r in rows]
        time_ids = [ids[i][1] for i in guidance.rows] + [cond for cond, _ in ids]
        self._check_time_ids(len(time_ids[0]), pooled.shape[-1])
        time_ids = torch.tensor(time_ids, dtype=hidden.dtype, device=self.model.device)
        return Conditioning(hidden, {"text_embeds": pooled, "time_ids": time_ids}, mask)


CONDITIONERS: dict[str, Callable[[LoadedModel], Conditioner]] = {"sd": SDConditioner, "sdxl": SDXLConditioner}


def conditioner_for(model: LoadedModel) -> Conditioner:
    return CONDITIONERS[model.family](model)


def check_text(row: RowInput, model: LoadedModel) -> None:
    """Raise ModeError (naming the column) when ``model`` cannot encode ``row``'s texts as asked."""
    conditioner = conditioner_for(model)
    for column, k, request in conditioner.row_requests(row):
        try:
            conditioner.encoders[k].check(request)
        except TextError as exc:
            raise ModeError(column if exc.field == "text" else exc.field, str(exc)) from None


def text_facts(row: RowInput, model: LoadedModel) -> TextFacts:
    """The row's prompt token count (first encoder) and whether plain truncation cut any of its texts."""
    conditioner = conditioner_for(model)
    requests = conditioner.row_requests(row)
    facts = [conditioner.encoders[k].facts(request) for _, k, request in requests]
    return TextFacts(facts[0].tokens, any(f.truncated for f in facts))
