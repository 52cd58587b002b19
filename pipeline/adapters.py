"""What a loaded model carries besides its own weights: textual-inversion embeddings (loaded once)
and LoRA adapters (switched per batch), both through diffusers' own loaders.

* ``load_embedding``: diffusers' ``load_textual_inversion`` into every text encoder the embedding
  fits. SDXL embeddings (a ``clip_l`` and a ``clip_g`` tensor) go into the first and second encoder,
  as diffusers documents; a single-tensor embedding (diffusers' ``{token: tensor}``, A1111's
  ``emb_params``) into each encoder of its width.
* ``LoraAdapters``: the base model stays loaded; a batch's LoRAs are loaded once with
  ``load_lora_weights`` (kept, up to ``capacity``, least recently used dropped with
  ``delete_adapters``) and chosen with ``set_adapters`` and their weights; a batch with no LoRA
  runs with every adapter disabled (``disable_lora``: peft then runs the base layers alone). An
  adapter is named by its file's SHA-256, so the same bytes under two names load once.
"""

from __future__ import annotations

import logging
from collections import OrderedDict

from .batch import LoraWeight
from .loading import LoadedModel

log = logging.getLogger(__name__)

DEFAULT_CAPACITY = 8
SDXL_EMBEDDING_KEYS = ("clip_l", "clip_g")  # the first and the second text encoder's vectors


def _encoders(model: LoadedModel) -> list[tuple[str, object, object]]:
    pipe = model.pipe
    pairs = [("text_encoder", getattr(pipe, "tokenizer", None), getattr(pipe, "text_encoder", None)),
             ("text_encoder_2", getattr(pipe, "tokenizer_2", None), getattr(pipe, "text_encoder_2", None))]
    return [(name, tok, enc) for name, tok, enc in pairs if enc is not None and tok is not None]


def load_embedding(model: LoadedModel, path: str, token: str) -> list[str]:
    """Load the safetensors embedding at ``path`` as ``token``; returns the text encoders it went
    into. Raises ValueError when it fits none of them."""
    from safetensors.torch import load_file

    state = load_file(path)
    encoders = _encoders(model)
    if set(SDXL_EMBEDDING_KEYS) <= set(state):
        vectors = {"text_encoder": state["clip_l"], "text_encoder_2": state["clip_g"]}
        targets = [(name, tok, enc, vectors[name]) for name, tok, enc in encoders]
    elif len(state) == 1:
        vector = next(iter(state.values()))
        targets = [(name, tok, enc, vector) for name, tok, enc in encoders
                   if enc.get_input_embeddings().weight.shape[-1] == vector.shape[-1]]
    else:
        raise ValueError(f"embedding {path}: expected one tensor or SDXL's clip_l and clip_g, found "
                         f"{', '.join(sorted(state)[:5])}")
    widths = {name: enc.get_input_embeddings().weight.shape[-1] for name, _, enc in encoders}
    if not targets or any(widths[name] != vector.shape[-1] for name, _, _, vector in targets):
        shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in state.items())
        raise ValueError(f"embedding {path} ({shapes}) fits none of model {model.name}'s text encoders "
                         f"(widths: {', '.join(f'{n} {w}' for n, w in widths.items())})")
    for name, tok, enc, vector in targets:
        model.pipe.load_textual_inversion(vector.to(model.dtype), token=token, tokenizer=tok, text_encoder=enc)
    log.info("loaded embedding %s as %s into %s of %s", path, token, ", ".join(t[0] for t in targets), model.name)
    return [t[0] for t in targets]


def adapter_name(lora: LoraWeight) -> str:
    return f"lora_{lora.sha256[:16]}"


class LoraAdapters:
    """The LoRA adapters loaded on one model, and which are active with what weights."""

    def __init__(self, model: LoadedModel, capacity: int = DEFAULT_CAPACITY):
        self.model = model
        self.capacity = max(1, capacity)
        self.loaded: OrderedDict[str, None] = OrderedDict()  # least recently used first
        self.active: tuple[tuple[str, float], ...] | None = ()  # None: unknown (a load failed)
        self.switches = 0  # times the active set changed (a cost worth keeping low)

    def activate(self, loras: tuple[LoraWeight, ...]) -> bool:
        """Make ``loras`` (possibly none) the model's active adapters, with their weights, in the
        order given (peft sums adapters in ``set_adapters``' order; callers pass a row's LoRAs in
        their normal form's order, by name). Returns whether adapter layers were loaded or
        dropped (the UNet's modules changed)."""
        weights: dict[str, float] = {}
        for lora in loras:
            name = adapter_name(lora)
            weights[name] = weights.get(name, 0.0) + lora.weight
        wanted = tuple(weights.items())
        if wanted == self.active:
            return False
        pipe = self.model.pipe
        changed = False
        for lora in loras:
            name = adapter_name(lora)
            if name in self.loaded:
                self.loaded.move_to_end(name)
                continue
            self._evict(keep=set(weights), limit=self.capacity - 1)
            changed = True
            self._load(lora, name)
            log.info("loaded LoRA %s as adapter %s on %s", lora.path, name, self.model.name)
        changed |= self._evict(keep=set(weights), limit=self.capacity)
        if wanted:
            pipe.enable_lora()
            pipe.set_adapters([n for n, _ in wanted], adapter_weights=[w for _, w in wanted])
        elif self.loaded or self.active is None:
            pipe.disable_lora()
        self.active = wanted
        self.switches += 1
        return changed

    def _load(self, lora: LoraWeight, name: str) -> None:
        """Load one LoRA file as adapter ``name``. A file that does not fit the model (another
        family's LoRA) is removed again, whatever part of it got in, and the next ``activate``
        sets every adapter afresh: no half-loaded adapter lingers into later batches."""
        from safetensors.torch import load_file

        pipe = self.model.pipe
        try:
            pipe.load_lora_weights(load_file(lora.path), adapter_name=name)
        except Exception as exc:  # noqa: BLE001 - any failure must leave the model as it was
            self.active = None  # unknown: set afresh next time
            try:
                pipe.delete_adapters([name])
            except Exception:  # noqa: BLE001 - it may never have got in
                pass
            raise ValueError(f"LoRA {lora.name or lora.path} does not fit model {self.model.name}: "
                             f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}") from exc
        self.loaded[name] = None

    def _evict(self, keep: set[str], limit: int) -> bool:
        """Drop least recently used adapters not in ``keep`` until at most ``limit`` are loaded;
        returns whether any was dropped."""
        dropped = False
        while len(self.loaded) > limit:
            victim = next((n for n in self.loaded if n not in keep), None)
            if victim is None:
                break
            self.model.pipe.delete_adapters([victim])
            del self.loaded[victim]
            dropped = True
            log.info("dropped LoRA adapter %s from %s (cache of %d)", victim, self.model.name, self.capacity)
        return dropped
