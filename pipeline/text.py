"""Prompt text -> one CLIP text encoder's embeddings, in each prompt syntax (``prompt_syntax.py``).

A ``PromptEncoder`` wraps one tokenizer and text encoder of a model; the conditioners
(``conditioning.py``) run every distinct text of a batch through each encoder once. Every syntax
gives hidden states of 77 tokens a chunk and, from a projecting encoder (SDXL's second), the
pooled embedding stock diffusers uses:

* ``plain``: exactly stock diffusers' ``encode_prompt``: one chunk, max-length padding,
  truncation; multi-vector textual-inversion tokens expanded with the pipeline's
  ``maybe_convert_prompt``.
* ``a1111``: AUTOMATIC1111's long prompts: the text in chunks of 75 tokens (a chunk also ends at
  ``BREAK``, and one that fills up moves the words after a comma within its last 20 tokens into the
  next, A1111's default ``comma_padding_backtrack``), each chunk ``[BOS] + tokens + [EOS]`` padded
  to 77 and encoded alone; its tokens' hidden states multiplied by their weights, then the chunk
  scaled so its mean is the unweighted mean again (A1111's "Original" emphasis, per prompt); chunks
  concatenated. The pooled embedding is the first chunk's, as A1111's SDXL uses it.
* ``compel``: the compel library's own embeddings (``Compel.build_conditioning_tensor``), set up as
  compel's ``CompelForSD`` / ``CompelForSDXL`` do (no truncation, so also in 77-token chunks).

``clip_skip`` is diffusers' (``encode_prompt``'s ``clip_skip=``): the hidden states that many layers
before the ones the family uses, through the final layer norm for SD 1.x/2.x (whose CLIPTextModel has
its layers at ``.text_model`` in transformers 4 and on the model itself in transformers 5).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .prompt_syntax import BREAK, SYNTAXES, a1111_problem, parse_a1111

# A1111's default ``comma_padding_backtrack``: a full chunk moves the words after its last comma
# into the next chunk when that comma is at most this many tokens back.
COMMA_BACKTRACK = 20


@dataclass(frozen=True)
class TextRequest:
    """One text as a row asks for it: the same text in another syntax or with another clip skip is
    another embedding."""

    text: str
    syntax: str = "plain"
    clip_skip: int | None = None


@dataclass
class Encoded:
    hidden: torch.Tensor  # (tokens, dim): 77 a chunk
    pooled: torch.Tensor | None  # (proj,) from a projecting encoder


@dataclass(frozen=True)
class TextFacts:
    """What a row's metadata says about its prompt: its token count (plain and a1111; the count
    compel reads is compel's) and whether plain truncation dropped tokens from any of its texts."""

    tokens: int | None
    truncated: bool


class TextError(ValueError):
    """A text request that cannot be encoded; ``field`` is "prompt_syntax", "clip_skip" or "text"
    (the text itself: the caller knows which column it came from)."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


def check_request(request: TextRequest) -> None:
    """Raise ``TextError`` for what no encoder can do: an unknown syntax, clip skip with compel
    (compel has no such setting), an a1111 prompt with unbalanced brackets."""
    if request.syntax not in SYNTAXES:
        raise TextError("prompt_syntax", f"unknown prompt syntax {request.syntax!r}; choose one of {', '.join(SYNTAXES)}")
    if request.clip_skip is not None and request.syntax == "compel":
        raise TextError("clip_skip", "not available with prompt syntax compel")
    if request.syntax == "a1111":
        problem = a1111_problem(request.text)
        if problem:
            raise TextError("text", f"a1111 prompt: {problem}")


class PromptEncoder:
    """One tokenizer and text encoder of ``pipe``. ``penultimate=False`` (SD 1.x / 2.x): the last
    hidden state, with an attention mask only when the text encoder's config asks for one;
    ``penultimate=True`` (SDXL): the hidden states before the last layer, no mask, and the pooled
    output when the encoder projects one."""

    def __init__(self, pipe, tokenizer, text_encoder, device: torch.device, dtype: torch.dtype,
                 penultimate: bool = False):
        self.pipe = pipe
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        self.device = device
        self.dtype = dtype
        self.penultimate = penultimate
        self.use_attention_mask = bool(getattr(text_encoder.config, "use_attention_mask", False))
        self.length = tokenizer.model_max_length  # 77: one chunk
        self.layers = text_encoder.config.num_hidden_layers
        self._compel = None  # compel's encoder for the current batch (see ``encode``)

    # -- what a row may ask ---------------------------------------------------------------------
    def max_clip_skip(self) -> int:
        """The largest ``clip_skip`` this encoder has layers for."""
        return self.layers if not self.penultimate else self.layers - 1

    def check(self, request: TextRequest) -> None:
        """Raise ``TextError`` for a request this encoder cannot encode."""
        check_request(request)
        if request.clip_skip is not None and not 0 <= request.clip_skip <= self.max_clip_skip():
            raise TextError("clip_skip", f"{request.clip_skip}: this model's text encoder has {self.layers} "
                                         f"layers, so clip_skip is at most {self.max_clip_skip()}")

    def facts(self, request: TextRequest) -> TextFacts:
        if request.syntax == "plain":
            count = len(self._token_ids(self._convert(request.text)))
            return TextFacts(count, count > self.length - 2)
        if request.syntax == "a1111":
            _, count = self._a1111_chunks(request.text)
            return TextFacts(count, False)
        return TextFacts(None, False)

    # -- encoding -------------------------------------------------------------------------------
    def encode(self, requests) -> dict[TextRequest, Encoded]:
        """Each distinct request's embeddings: a batch's texts (``padding`` may follow for them)."""
        self._compel = None  # built afresh per batch: adapters may have changed the encoder since
        return self._encode(requests)

    @torch.inference_mode()
    def _encode(self, requests) -> dict[TextRequest, Encoded]:
        unique = list(dict.fromkeys(requests))
        for request in unique:
            self.check(request)
        out: dict[TextRequest, Encoded] = {}
        by_kind: dict[tuple[str, int | None], list[TextRequest]] = {}
        for request in unique:
            by_kind.setdefault((request.syntax, request.clip_skip), []).append(request)
        for (syntax, clip_skip), group in by_kind.items():
            encode = {"plain": self._plain, "a1111": self._a1111, "compel": self._compel_encode}[syntax]
            out.update(zip(group, encode(group, clip_skip)))
        return out

    @torch.inference_mode()
    def padding(self, request: TextRequest) -> torch.Tensor:
        """One chunk (77, dim) that lengthens ``request``'s embeddings to another text's chunk
        count, as its syntax does: the empty prompt's chunk (A1111's ``empty_chunk``; compel's
        ``empty_z``)."""
        if request.syntax == "compel":
            return self._compel_for().conditioning_provider.empty_z[0].to(device=self.device, dtype=self.dtype)
        empty = TextRequest("", request.syntax, request.clip_skip)
        return self._encode([empty])[empty].hidden

    # -- plain ----------------------------------------------------------------------------------
    def _convert(self, text: str) -> str:
        """Multi-vector textual-inversion tokens expanded, as stock pipelines do before tokenising."""
        convert = getattr(self.pipe, "maybe_convert_prompt", None)
        return convert(text, self.tokenizer) if convert is not None else text

    def _token_ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False, truncation=False).input_ids

    def _plain(self, requests: list[TextRequest], clip_skip: int | None) -> list[Encoded]:
        tokens = self.tokenizer(
            [self._convert(r.text) for r in requests],
            padding="max_length",
            max_length=self.length,
            truncation=True,
            return_tensors="pt",
        )
        mask = tokens.attention_mask if self.use_attention_mask else None
        hidden, pooled = self._run(tokens.input_ids, mask, clip_skip)
        return [Encoded(hidden[i], None if pooled is None else pooled[i]) for i in range(len(requests))]

    def _run(self, ids: torch.Tensor, mask: torch.Tensor | None, clip_skip: int | None):
        """Token ids (B, 77) -> hidden states (B, 77, dim) and pooled (B, proj) or None."""
        encoder = self.text_encoder
        ids = ids.to(self.device)
        mask = mask.to(self.device) if mask is not None else None
        pooled = None
        if self.penultimate:
            out = encoder(ids, output_hidden_states=True)
            hidden = out.hidden_states[-2 if clip_skip is None else -(clip_skip + 2)]
            if out[0].ndim == 2:  # CLIPTextModelWithProjection's text_embeds, as stock picks it
                pooled = out[0].to(dtype=self.dtype, device=self.device)
        elif clip_skip is None:
            hidden = encoder(ids, attention_mask=mask)[0]
        else:
            out = encoder(ids, attention_mask=mask, output_hidden_states=True)
            # transformers 4 keeps CLIP's layers in .text_model; transformers 5 on the model itself
            final_norm = getattr(encoder, "text_model", encoder).final_layer_norm
            hidden = final_norm(out.hidden_states[-(clip_skip + 1)])
        return hidden.to(dtype=self.dtype, device=self.device), pooled

    # -- a1111 ----------------------------------------------------------------------------------
    def _a1111_chunks(self, text: str) -> tuple[list[tuple[list[int], list[float]]], int]:
        """A1111's ``tokenize_line``: (chunks of up to 75 tokens and their weights, the prompt's
        token count)."""
        size = self.length - 2
        parsed = parse_a1111(text)
        tokenized = [self._token_ids(self._convert(fragment)) for fragment, _ in parsed]
        comma = self.tokenizer.get_vocab().get(",</w>")
        chunks: list[tuple[list[int], list[float]]] = []
        tokens: list[int] = []
        weights: list[float] = []
        count = 0
        last_comma = -1

        def next_chunk() -> None:
            nonlocal tokens, weights, last_comma
            chunks.append((tokens, weights))
            tokens, weights, last_comma = [], [], -1

        for ids, (fragment, weight) in zip(tokenized, parsed):
            if fragment == BREAK and weight == -1:
                next_chunk()
                continue
            count += len(ids)
            for token in ids:
                if token == comma:
                    last_comma = len(tokens)
                elif len(tokens) == size and last_comma != -1 and len(tokens) - last_comma <= COMMA_BACKTRACK:
                    cut = last_comma + 1
                    moved, moved_weights = tokens[cut:], weights[cut:]
                    tokens, weights = tokens[:cut], weights[:cut]
                    next_chunk()
                    tokens, weights = moved, moved_weights
                if len(tokens) == size:
                    next_chunk()
                tokens.append(token)
                weights.append(weight)
        if tokens or not chunks:
            next_chunk()
        return chunks, count

    def _chunk_ids(self, tokens: list[int]) -> tuple[list[int], list[int]]:
        """``[BOS] + tokens + [EOS]``, padded to 77 with the tokenizer's pad token after the first
        EOS (EOS itself for SD 1.x's tokenizer, "!" for SD 2.x's and SDXL's second), as stock pads;
        and the attention mask a tokenizer would give."""
        tok = self.tokenizer
        ids = [tok.bos_token_id] + tokens + [tok.eos_token_id]
        used = len(ids)
        ids += [tok.pad_token_id] * (self.length - used)
        return ids, [1] * used + [0] * (self.length - used)

    def _a1111(self, requests: list[TextRequest], clip_skip: int | None) -> list[Encoded]:
        per_text = [self._a1111_chunks(r.text)[0] for r in requests]
        flat = [chunk for chunks in per_text for chunk in chunks]
        ids, masks = zip(*(self._chunk_ids(tokens) for tokens, _ in flat))
        mask = torch.tensor(masks) if self.use_attention_mask else None
        hidden, pooled = self._run(torch.tensor(ids), mask, clip_skip)
        out, at = [], 0
        for chunks in per_text:
            parts = []
            for k, (_, weights) in enumerate(chunks):
                z = hidden[at + k]
                if any(w != 1.0 for w in weights):
                    z = self._emphasis(z, [1.0] + weights + [1.0] * (self.length - 1 - len(weights)))
                parts.append(z)
            out.append(Encoded(torch.cat(parts), None if pooled is None else pooled[at]))
            at += len(chunks)
        return out

    def _emphasis(self, z: torch.Tensor, multipliers: list[float]) -> torch.Tensor:
        """A1111's "Original" emphasis on one chunk: weighted, then its mean restored."""
        z32 = z.float()
        original = z32.mean()
        weighted = z32 * torch.tensor(multipliers, dtype=torch.float32, device=z.device).unsqueeze(-1)
        return (weighted * (original / weighted.mean())).to(z.dtype)

    # -- compel ---------------------------------------------------------------------------------
    def _compel_for(self):
        """compel's ``Compel`` for this encoder, configured as ``CompelForSD`` / ``CompelForSDXL``."""
        if self._compel is None:
            from compel import Compel, DiffusersTextualInversionManager, ReturnedEmbeddingsType

            kind = (ReturnedEmbeddingsType.PENULTIMATE_HIDDEN_STATES_NON_NORMALIZED if self.penultimate
                    else ReturnedEmbeddingsType.LAST_HIDDEN_STATES_NORMALIZED)
            manager = DiffusersTextualInversionManager(self.pipe) if getattr(self.pipe, "tokenizer", None) else None
            projects = type(self.text_encoder).__name__.endswith("WithProjection")
            self._compel = Compel(tokenizer=self.tokenizer, text_encoder=self.text_encoder,
                                  returned_embeddings_type=kind, textual_inversion_manager=manager,
                                  truncate_long_prompts=False, requires_pooled=self.penultimate and projects,
                                  device=self.device)
        return self._compel

    def _compel_encode(self, requests: list[TextRequest], clip_skip: int | None) -> list[Encoded]:
        compel = self._compel_for()
        out = []
        for request in requests:
            built = compel.build_conditioning_tensor(request.text)
            hidden, pooled = built if isinstance(built, tuple) else (built, None)
            out.append(Encoded(hidden[0].to(device=self.device, dtype=self.dtype),
                               None if pooled is None else pooled[0].to(device=self.device, dtype=self.dtype)))
        return out
